"""Every kind of bad or odd input in one featurize run: each file ends in exactly one output,
bad ones in quarantine with a precise reason, and the rest of the run is unaffected."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.imagefactory import encode, gradient, jpeg, truncated_jpeg
from tests.spark_jobs.test_incremental import featurize_step, step_argv

pytestmark = pytest.mark.spark


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored sideways with EXIF Orientation=6 (display rotated 90° clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(gradient(120, 80, seed=4), "JPEG", exif=exif.tobytes())


def bomb_png() -> bytes:
    """A 9000x9000 PNG (81 Mpixels) of a few KB: refused from its header, never decoded."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


FILES = {
    # name: (bytes, expected quarantine reason prefix or None when it must be featurized)
    "Kiwi/corrupt.jpg": (b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(3000), "corrupt JPEG"),
    "Kiwi/truncated.jpg": (truncated_jpeg(), "truncated JPEG"),
    "Kiwi/zero bytes.jpg": (b"", "empty file (0 bytes)"),
    "Kiwi/a text file.jpg": (b"I am text, named like a JPEG\n", "not an image (unrecognised format)"),
    "Kiwi/notes.txt": (b"not an image", "not an image (unrecognised format)"),
    "Plum/alpha.png": (encode(gradient(60, 60).convert("RGBA"), "PNG"), None),
    "Plum/sixteen bit.png": (encode(Image.new("I;16", (40, 40), 40000), "PNG"), None),
    "Plum/palette.png": (encode(gradient(50, 50).convert("P"), "PNG"), None),
    "Apple/gray.jpg": (encode(gradient(64, 64).convert("L"), "JPEG"), None),
    "Apple/cmyk.jpg": (encode(gradient(64, 64).convert("CMYK"), "JPEG"), None),
    "Apple/exif rotated.jpg": (exif_rotated_jpeg(), None),
    "Apple/one pixel.png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
    "Apple/bomb.png": (bomb_png(), "image too large: 9000x9000 pixels"),
    "Odd names/with space.jpg": (jpeg(1), None),
    'Odd names/quote\'s "double".jpg': (jpeg(2), None),
    "Odd names/comma, separated.jpg": (jpeg(3), None),
    "Odd names/ünïcödé 果物 🍎.jpg": (jpeg(5), None),
    "in the root.jpg": (jpeg(6), None),
}


@pytest.fixture(scope="module")
def outcome(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    images = root / "images"
    for name, (data, _) in FILES.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(data)
    (images / "Empty class").mkdir()
    step = featurize_step()
    summary = step.run(spark, step.parse_args(step_argv(images, root, "random:1")))
    return summary, pd.read_parquet(root / "features"), pd.read_parquet(root / "quarantine")


@pytest.mark.backs("empty class folder")
def test_every_input_is_accounted_for(outcome):
    summary, good, bad = outcome
    counts = summary["counts"]
    assert counts["inputs"] == len(FILES) == counts["featurized"] + counts["quarantined"]
    assert sorted([*good.path, *bad.path]) == sorted(FILES)
    assert not set(good.path) & set(bad.path)


@pytest.mark.parametrize("name", [n for n, (_, reason) in FILES.items() if reason])
@pytest.mark.backs(
    "corrupt JPEG (JPEG header, random bytes)",
    "truncated JPEG",
    "zero-byte JPEG",
    "text file named `.jpg`",
    "a text file named `notes.txt`",
    "decompression bomb (9000x9000 PNG of a few KB)",
)
def test_bad_input_is_quarantined_with_a_precise_reason(outcome, name):
    _, _, bad = outcome
    reason = bad.set_index("path").reason[name]
    assert reason.startswith(FILES[name][1]), reason


@pytest.mark.parametrize("name", [n for n, (_, reason) in FILES.items() if not reason])
@pytest.mark.backs(
    "PNG with alpha",
    "16-bit PNG",
    "palette PNG",
    "grayscale JPEG",
    "CMYK JPEG",
    "EXIF-rotated photo",
    "1x1 image",
    "names with spaces, quotes, commas, non-ASCII, emoji",
)
def test_odd_but_valid_input_is_featurized(outcome, name):
    _, good, _ = outcome
    row = good.set_index("path").loc[name]
    assert len(row.features) == 1280 and np.isfinite(row.features).all()


@pytest.mark.backs("images directly in the source root")
def test_labels_come_from_folders_and_root_files_are_labelled_explicitly(outcome):
    _, good, bad = outcome
    labels = dict(zip([*good.path, *bad.path], [*good.label, *bad.label], strict=True))
    assert labels["Odd names/ünïcödé 果物 🍎.jpg"] == "Odd names"
    assert labels["in the root.jpg"] == "_unlabelled"
    assert labels["Kiwi/zero bytes.jpg"] == "Kiwi"


@pytest.mark.backs("a lake file outside the run's listing, or changed since the upload listed it")
def test_the_upload_listing_is_read_exactly_whatever_else_the_lake_holds(spark, tmp_path):
    """Upload (listing) then featurize: every listed entry of an odd folder ends in one output."""
    from orchard.storage.sync import listing_parquet, sync_folder
    from tests.sources import EXPECTED, odd_source

    images, out = tmp_path / "lake" / "images", tmp_path / "run"
    report = sync_folder(odd_source(tmp_path), images)
    (out / "inputs").mkdir(parents=True)
    (out / "inputs" / "part-00000.parquet").write_bytes(listing_parquet(report.inputs))
    # What the lake holds beyond the listing is not an input: a stray file, and a listed file whose
    # bytes changed after the upload listed them.
    (images / "Apple" / "stray.jpg").write_bytes(jpeg(9))
    (images / "Apple" / "ok.jpg").write_bytes(jpeg(10))
    step = featurize_step()
    argv = [*step_argv(images, out, "random:1"), "--inputs", f"file://{out}/inputs"]
    summary = step.run(spark, step.parse_args(argv))
    good, bad = pd.read_parquet(out / "features"), pd.read_parquet(out / "quarantine")
    assert sorted([*good.path, *bad.path]) == sorted(EXPECTED)
    assert summary["counts"]["inputs"] == len(EXPECTED) == len(good) + len(bad)
    reasons = bad.set_index("path").reason.to_dict()
    expected = {path: reason for path, reason in EXPECTED.items() if reason}
    expected["Apple/ok.jpg"] = "changed in the lake after this run's upload listed it: run again"
    assert reasons == expected
    assert set(good.path) == {p for p, reason in EXPECTED.items() if reason is None} - {"Apple/ok.jpg"}


PHONE = {
    "HEIC": encode(gradient(80, 60, seed=31), "HEIF", quality=90),
    "WEBP": encode(gradient(80, 60, seed=32), "WEBP"),
    "TIFF": encode(gradient(80, 60, seed=33), "TIFF"),
    "BMP": encode(gradient(80, 60, seed=34), "BMP"),
    "GIF": encode(gradient(80, 60, seed=35).convert("P"), "GIF"),
}


@pytest.mark.backs(
    "a JPEG named `.png`, a BMP named `.JPG`",
    "PNG, WebP, TIFF, BMP, GIF (first frame), HEIC/HEIF (`pillow-heif`)",
    "a corrupt file of each of those formats",
    "the same content fresh and from the features cache",
)
def test_phone_formats_and_names_decided_by_content(spark, tmp_path):
    """Every format users have featurizes, whatever its extension; a corrupt one of each is quarantined.
    A cache that knows a content gives it the same outcome as a fresh run."""
    images = tmp_path / "images"
    files = {f"Phone/photo.{fmt.lower()}": data for fmt, data in PHONE.items()}
    files |= {f"Phone/broken.{fmt.lower()}": data[: len(data) // 3] for fmt, data in PHONE.items()}
    files["Phone/jpeg named.png"] = jpeg(40)
    files["Phone/bitmap named.JPG"] = PHONE["BMP"]
    for rel, data in files.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
    step = featurize_step()
    outcomes = []
    for attempt in ("fresh", "cached"):
        out = tmp_path / attempt
        step.run(spark, step.parse_args(step_argv(images, out, "random:1", cache=tmp_path / "cache")))
        good, bad = pd.read_parquet(out / "features"), pd.read_parquet(out / "quarantine")
        outcomes.append((sorted(good.path), bad.set_index("path").reason.to_dict()))
    assert outcomes[0] == outcomes[1]
    good, reasons = outcomes[0]
    assert good == sorted(
        [*(f"Phone/photo.{f.lower()}" for f in PHONE), "Phone/jpeg named.png", "Phone/bitmap named.JPG"]
    )
    assert sorted(reasons) == sorted(f"Phone/broken.{f.lower()}" for f in PHONE)
    assert all(("corrupt" in r or "truncated" in r) and "0x" not in r for r in reasons.values()), reasons


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda rows: rows.limit(2), id="an-input-without-an-outcome"),
        pytest.param(lambda rows: rows.unionByName(rows.limit(1)), id="an-input-counted-twice"),
    ],
)
def test_outcomes_that_do_not_add_up_fail_the_step_before_the_cache(spark, tmp_path, monkeypatch, broken):
    """The featurize step's accounting guard, against a deliberately broken `features.outcomes`."""
    from orchard_jobs import features

    images = tmp_path / "images"
    for seed in range(3):
        (images / "Kiwi").mkdir(parents=True, exist_ok=True)
        (images / "Kiwi" / f"{seed}.jpg").write_bytes(jpeg(seed))
    real = features.outcomes
    monkeypatch.setattr(features, "outcomes", lambda *args, **kwargs: broken(real(*args, **kwargs)))
    step = featurize_step()
    cache = tmp_path / "cache"
    argv = step_argv(images, tmp_path / "out", "random:1", cache=cache)

    with pytest.raises(RuntimeError, match=r"accounting failed: 3 listed inputs"):
        step.run(spark, step.parse_args(argv))
    # Nothing reached the features cache, which later runs share.
    assert not any(path.suffix == ".parquet" for path in cache.rglob("*"))
