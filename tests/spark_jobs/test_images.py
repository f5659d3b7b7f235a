"""decode_image, relative paths and labels: plain functions, no Spark."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from orchard_jobs import images
from orchard_jobs.images import (
    UNLABELLED,
    UndecodableImage,
    decode_image,
    label_for,
    relative_path,
)
from tests.imagefactory import encode, gradient, jpeg, truncated_jpeg


def reference(image: Image.Image) -> np.ndarray:
    """What decode_image must return for an RGB image: a bilinear resize to 224x224."""
    return np.asarray(image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=np.uint8)


def test_jpeg_is_resized_to_224_rgb():
    out = decode_image(jpeg(seed=1))
    assert out.shape == (224, 224, 3)
    assert out.dtype == np.uint8
    # Not a blank or constant image: the gradient survives.
    assert out[..., 0].std() > 30


@pytest.mark.parametrize("size", [(100, 100), (640, 480), (37, 13), (1, 1), (3000, 2000)])
def test_any_size_png_matches_a_plain_resize(size):
    image = gradient(*size, seed=2)
    np.testing.assert_array_equal(decode_image(encode(image, "PNG")), reference(image))


def test_large_jpeg_decodes_close_to_full_resolution_resize():
    # draft() lets libjpeg downscale while decoding; the result must stay close to the full decode.
    image = gradient(2400, 1800, seed=3)
    data = encode(image, "JPEG", quality=95)
    full = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB").resize((224, 224)), float)
    assert np.abs(decode_image(data).astype(float) - full).mean() < 6


@pytest.mark.backs("grayscale JPEG")
def test_grayscale_becomes_three_equal_channels():
    grey = gradient(50, 80, seed=4).convert("L")
    out = decode_image(encode(grey, "PNG"))
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


@pytest.mark.backs("PNG with alpha")
def test_rgba_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (60, 60), (10, 200, 30, 0))
    rgba.paste((200, 10, 10, 255), (20, 20, 40, 40))
    out = decode_image(encode(rgba, "PNG"))
    assert tuple(out[5, 5]) == (255, 255, 255)
    assert tuple(out[112, 112]) == (200, 10, 10)


@pytest.mark.backs("palette PNG")
def test_palette_png_with_transparency():
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    palette.paste(1, (10, 10, 30, 30))
    out = decode_image(encode(palette, "PNG", transparency=0))
    assert tuple(out[2, 2]) == (255, 255, 255)
    assert tuple(out[112, 112]) == (250, 0, 0)


@pytest.mark.backs("CMYK JPEG")
def test_cmyk_jpeg_is_converted():
    cmyk = gradient(80, 80, seed=5).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    expected = reference(Image.open(__import__("io").BytesIO(encode(cmyk, "JPEG", quality=95))))
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.backs("16-bit PNG")
def test_16_bit_png_keeps_its_dynamic_range():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(ramp), "PNG"))
    # Scaled to 8 bits, not clipped at 255: the ramp still spans dark to white.
    assert out.min() < 10
    assert out.max() > 245


@pytest.mark.backs("EXIF-rotated photo")
def test_exif_orientation_is_applied():
    upright = gradient(120, 60, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    out = decode_image(encode(stored, "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(out, reference(stored.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n", r"not an image \(unrecognised format\)"),
        (truncated_jpeg(), "truncated JPEG"),
        (jpeg()[:20], "corrupt JPEG"),
        (np.random.default_rng(0).bytes(5000), r"not an image \(unrecognised format\)"),
    ],
    ids=["empty", "text", "truncated", "header-only", "random-bytes"],
)
@pytest.mark.backs("truncated JPEG")
def test_broken_inputs_raise_with_a_reason(data, reason):
    with pytest.raises(UndecodableImage, match=reason):
        decode_image(data)


@pytest.mark.backs("decompression bomb (9000x9000 PNG of a few KB)")
def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    with pytest.raises(UndecodableImage, match="too large: 200x200"):
        decode_image(encode(gradient(200, 200), "PNG"))


def test_pillow_bomb_guard_is_reported(monkeypatch):
    # Pillow's own guard fires first when its limit is lower than ours.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UndecodableImage, match="decompression bomb"):
        decode_image(encode(gradient(100, 100), "PNG"))


def phone_formats() -> dict[str, bytes]:
    """One picture in every format users have, HEIC included (pillow-heif encodes it)."""
    picture = gradient(90, 70, seed=8)
    return {
        "JPEG": encode(picture, "JPEG", quality=95),
        "PNG": encode(picture, "PNG"),
        "WEBP": encode(picture, "WEBP", lossless=True),
        "TIFF": encode(picture, "TIFF"),
        "BMP": encode(picture, "BMP"),
        "GIF": encode(picture.convert("P"), "GIF"),
        "HEIF": encode(picture, "HEIF", quality=-1),
    }


@pytest.mark.parametrize("fmt", sorted(phone_formats()))
@pytest.mark.backs("PNG, WebP, TIFF, BMP, GIF (first frame), HEIC/HEIF (`pillow-heif`)")
def test_every_format_users_have_decodes(fmt):
    data = phone_formats()[fmt]
    assert Image.open(io.BytesIO(data)).format == fmt
    out = decode_image(data)
    assert out.shape == (224, 224, 3)
    # Lossless formats equal the reference; the lossy ones (JPEG, HEIF, GIF's palette) are close.
    picture = gradient(90, 70, seed=8)
    expected = reference(picture.convert("P") if fmt == "GIF" else picture)
    tolerance = {"JPEG": 12, "HEIF": 16}.get(fmt, 0)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() <= tolerance


@pytest.mark.parametrize("fmt", sorted(phone_formats()))
@pytest.mark.backs("a corrupt file of each of those formats")
def test_a_corrupt_file_of_every_format_gets_a_reason(fmt):
    data = phone_formats()[fmt]
    broken = data[: len(data) // 2] if fmt != "GIF" else data[:20] + b"\x00" * 40
    with pytest.raises(UndecodableImage) as caught:
        decode_image(broken)
    assert "0x" not in str(caught.value)


@pytest.mark.backs("an image format outside that list (e.g. ICO)")
def test_the_format_comes_from_the_bytes_not_the_name():
    # decode_image never sees a name: a JPEG named .png decodes as the JPEG it is; an ICO does not.
    with pytest.raises(UndecodableImage, match=r"unsupported image format \(ICO\)"):
        decode_image(encode(gradient(32, 32), "ICO"))


@pytest.mark.backs("corrupt JPEG (JPEG header, random bytes)")
def test_bad_files_get_distinct_human_reasons_without_addresses():
    corrupt = b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(3000)
    cases = {"corrupt": corrupt, "truncated": truncated_jpeg(), "empty": b"", "text": b"just text\n"}
    reasons = {}
    for name, data in cases.items():
        with pytest.raises(UndecodableImage) as caught:
            decode_image(data)
        reasons[name] = str(caught.value)
        with pytest.raises(UndecodableImage) as again:
            decode_image(data)
        assert str(again.value) == reasons[name]  # stable from run to run
    assert len(set(reasons.values())) == 4, reasons
    assert not any("0x" in r or "object at" in r or "<" in r for r in reasons.values()), reasons
    assert reasons == {
        "corrupt": "corrupt JPEG (the image data cannot be decoded)",
        "truncated": reasons["truncated"],
        "empty": "empty file (0 bytes)",
        "text": "not an image (unrecognised format)",
    }
    assert reasons["truncated"].startswith("truncated JPEG")


@pytest.mark.parametrize(
    ("uri", "root", "rel"),
    [
        ("file:/data/in/Apple Golden 1/r_1.jpg", "file:///data/in", "Apple Golden 1/r_1.jpg"),
        ("file:/data/in/Apple Golden 1/r_1.jpg", "/data/in/", "Apple Golden 1/r_1.jpg"),
        ('file:/data/in/a,b/q"x%20y#1?.jpg', "file:/data/in", 'a,b/q"x%20y#1?.jpg'),
        ("s3://bucket/images/sample/Kiwi/k.png", "s3://bucket/images/sample", "Kiwi/k.png"),
        ("s3a://bucket/images/Kiwi/k.png", "s3a://bucket/images/", "Kiwi/k.png"),
        ("file:/data/in/top.jpg", "file:///data/in", "top.jpg"),
    ],
)
def test_relative_path_takes_names_literally(uri, root, rel):
    assert relative_path(uri, root) == rel


@pytest.mark.parametrize(
    ("uri", "root"),
    [("s3://other/images/a.jpg", "s3://bucket/images"), ("file:/data/inx/a.jpg", "/data/in")],
)
def test_relative_path_refuses_paths_outside_the_root(uri, root):
    with pytest.raises(ValueError, match="is not under"):
        relative_path(uri, root)


def test_label_is_the_parent_folder_name():
    assert label_for("Apple Golden 1/r_1.jpg") == "Apple Golden 1"
    assert label_for("batch 2/Kiwi/k.jpg") == "Kiwi"
    assert label_for("top.jpg") == UNLABELLED


@pytest.mark.parametrize("rel", ["Kiwi/a.jpg", "top.jpg", "a/b/c.png", "Odd/new\nline.jpg", "x/"])
def test_the_sql_label_equals_label_for(spark, rel):
    from orchard_jobs.features import label_column

    got = spark.createDataFrame([(rel,)], "path string").select(label_column("path")).first()[0]
    assert got == label_for(rel)
