"""A run featurizes exactly its source, as users keep it: phone formats, a file that goes, a name
that cannot be represented. The whole DAG twice with dag.test(), real spark-submits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from orchard.samples import generate
from orchard.uris import local_path
from tests.conftest import ROOT
from tests.features_table import read_features
from tests.imagefactory import encode, gradient

pytestmark = pytest.mark.e2e


def phone_photos(folder: Path) -> dict[str, bytes]:
    """What a phone gives: HEIC, WebP, a JPEG stored sideways with EXIF rotation, a JPEG named .png."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "Phone/IMG_0001.HEIC": encode(gradient(160, 120, seed=21), "HEIF", quality=90),
        "Phone/IMG_0002.webp": encode(gradient(160, 120, seed=22), "WEBP", quality=90),
        "Phone/IMG_0003.jpg": encode(gradient(160, 120, seed=23), "JPEG", exif=exif.tobytes()),
        "Phone/IMG_0004.png": encode(gradient(160, 120, seed=24), "JPEG"),
    }


def latest(lake: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, list[list[str]]]:
    pointer = json.loads((lake / "latest.json").read_text())
    manifest = json.loads(local_path(pointer["manifest"]).read_text())
    outputs = {key: local_path(uri) for key, uri in manifest["outputs"].items()}
    with outputs["csv"].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    features = read_features(outputs["features"], lake / "cache" / "features")
    return manifest, features, pd.read_parquet(outputs["quarantine"]), rows


@pytest.mark.backs(
    "PNG, WebP, TIFF, BMP, GIF (first frame), HEIC/HEIF (`pillow-heif`)",
    "a name with a newline, tab or other control character",
    "a name that is not valid UTF-8",
    "a dangling symbolic link",
    "a symbolic link loop (to itself, or a folder link to an ancestor)",
    "a link to a file",
    "a pipe, socket or device",
    "a file deleted from the source between two runs",
)
def test_a_source_that_lost_a_file_and_gained_an_odd_name(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    lake, source = tmp_path / "lake", tmp_path / "phone photos"
    generate(source, per_class=2, seed=8)  # 12 images, 6 classes
    for rel, data in phone_photos(source).items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    monkeypatch.setenv("ORCHARD_LAKE", str(lake))
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["fruits_pipeline"]
    conf = {"source": str(source), "weights": "random:4", "pca_k": 3}

    assert dag.test(run_conf=conf).state == "success"
    manifest, features, quarantine, rows = latest(lake)
    assert manifest["counts"]["featurized"] == 16 and manifest["counts"]["quarantined"] == 0
    assert set(phone_photos(source)) <= set(features.path)  # every phone photo featurized
    gone = sorted(p for p in features.path if p.startswith("Apple"))[0]
    odd = gone.rsplit("/", 1)[0] + "/new\nline.jpg"

    (source / gone).unlink()
    (source / odd).write_bytes((source / "Phone" / "IMG_0003.jpg").read_bytes())
    assert dag.test(run_conf=conf).state == "success"
    manifest, features, quarantine, rows = latest(lake)
    assert gone not in {row[0] for row in rows}
    assert gone not in set(features.path) | set(quarantine.path)
    assert not (lake / "images" / "phone_photos" / gone).exists()  # the lake mirrors the source
    assert quarantine.set_index("path").reason.to_dict() == {
        odd: "file name contains a control character (newline): rename the file"
    }
    counts = manifest["counts"]
    assert counts["source_files"] == counts["inputs"] == 16 == counts["featurized"] + counts["quarantined"]
    assert (counts["featurized"], counts["quarantined"], counts["deleted_from_lake"]) == (15, 1, 1)
    assert counts["accounted"]
