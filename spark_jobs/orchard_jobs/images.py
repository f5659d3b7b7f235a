"""Image decoding and labelling: plain functions, no Spark, no TensorFlow."""

from __future__ import annotations

import io
import posixpath
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

# HEIC/HEIF (phone photos) through Pillow's own API.
register_heif_opener()

IMAGE_SIZE = 224
# What an input may be, decided from its bytes (Pillow's format detection), never from its name:
# a JPEG named .png is a JPEG, a text file named .jpg is not an image. MPO is the multi-picture
# JPEG some phones write; GIF and multi-page TIFF use their first frame.
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF"})
UNLABELLED = "_unlabelled"
# Fruits-360 photos are 100x100; a phone photo is ~12 MP. Anything far beyond is refused before
# decoding, so a decompression bomb costs a header read, not gigabytes of RAM.
MAX_PIXELS = 64_000_000
# DOTALL: a file name may hold a newline, and the path after the scheme is taken whole.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.DOTALL)


class UndecodableImage(ValueError):
    """An input that cannot become a model input; the message is the quarantine reason."""


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode image bytes to a (size, size, 3) uint8 RGB array; raise UndecodableImage.

    The reason of an UndecodableImage is for people: stable across runs (no object reprs or
    addresses) and saying what is wrong with the file.
    """
    if not data:
        raise UndecodableImage("empty file (0 bytes)")
    fmt = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                if fmt not in IMAGE_FORMATS:
                    raise UndecodableImage(
                        f"unsupported image format ({fmt}); supported: {', '.join(sorted(IMAGE_FORMATS))}"
                    )
                if img.width * img.height > MAX_PIXELS:
                    raise UndecodableImage(
                        f"image too large: {img.width}x{img.height} pixels exceeds {MAX_PIXELS} "
                        "(possible decompression bomb)"
                    )
                # JPEG only: let libjpeg scale by 1/2..1/8 while decoding when the image is large.
                img.draft("RGB", (size, size))
                rgb = _to_rgb(ImageOps.exif_transpose(img))
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except UndecodableImage:
        raise
    except UnidentifiedImageError as exc:
        if _sniff(data):  # starts like an image of ours, but Pillow cannot even read its header
            raise UndecodableImage(_decode_failure(None, data, exc)) from exc
        raise UndecodableImage("not an image (unrecognised format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UndecodableImage(f"decompression bomb refused ({fmt or 'image'} of too many pixels)") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        raise UndecodableImage(_decode_failure(fmt, data, exc)) from exc


# File signatures, only to name the format of a file Pillow gave up on before saying what it was.
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF8", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WEBP"),
    (4, b"ftyp", "HEIF"),
)


def _sniff(data: bytes) -> str | None:
    """The format a file's first bytes announce, if one of ours."""
    return next((name for at, magic, name in _SIGNATURES if data[at : at + len(magic)] == magic), None)


def _decode_failure(fmt: str | None, data: bytes, exc: Exception) -> str:
    """A stable, human reason for a file that announces an image but cannot be decoded."""
    kind = fmt or _sniff(data) or "image"
    # Pillow's own words when the data stops early (ImageFile.load); anything else is corrupt data.
    if str(exc).startswith("image file is truncated"):
        return f"truncated {kind} (the file ends before the image does: an interrupted copy or download?)"
    return f"corrupt {kind} (the image data cannot be decoded)"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels become white, the Fruits-360 background."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
        # 16-bit greyscale: scale to 8 bits rather than letting convert() clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size else 0
        scaled = (arr * (255.0 / peak) if peak > 255 else arr).clip(0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return img.convert("RGB")


def _uri_path(uri: str) -> tuple[str, str]:
    """(bucket, absolute path) of a file:, s3:, s3a: URI or a plain path, taken literally.

    Spark's binaryFile source reports paths unescaped (`file:/a b/x%20y.jpg`), so no URL
    parsing or unquoting here: a '#', '?' or '%' in a file name is part of the name.
    """
    match = _SCHEME.match(uri)
    if not match or match.group(1).lower() == "file":
        path = match.group(2) if match else uri
        return "", posixpath.normpath("/" + path.lstrip("/"))
    bucket, _, key = match.group(2).lstrip("/").partition("/")
    return bucket, posixpath.normpath("/" + key)


def relative_path(uri: str, root: str) -> str:
    """Path of `uri` relative to the input `root` (both URIs or paths, any scheme spelling)."""
    host, path = _uri_path(uri)
    root_host, root_path = _uri_path(root)
    prefix = root_path.rstrip("/") + "/"
    if host != root_host or not path.startswith(prefix):
        raise ValueError(f"{uri!r} is not under {root!r}")
    return path[len(prefix) :]


def label_for(rel_path: str) -> str:
    """Label of an image: its parent folder's name; files directly in the root are unlabelled."""
    parent = posixpath.dirname(rel_path)
    return posixpath.basename(parent) if parent else UNLABELLED
