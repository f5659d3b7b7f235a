"""Image decoding and labelling: plain functions, no Spark, no TensorFlow."""

from __future__ import annotations

import io
import posixpath
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
UNLABELLED = "_unlabelled"
# Fruits-360 photos are 100x100; a phone photo is ~12 MP. Anything far beyond is refused before
# decoding, so a decompression bomb costs a header read, not gigabytes of RAM.
MAX_PIXELS = 64_000_000
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$")


class UndecodableImage(ValueError):
    """An input that cannot become a model input; the message is the quarantine reason."""


def unsupported_reason(path: str) -> str | None:
    """Why a file is not an image input by its name, or None when its extension is supported."""
    ext = posixpath.splitext(path)[1]
    if ext.lower() in IMAGE_EXTENSIONS:
        return None
    return f"unsupported file type {ext!r}" if ext else "unsupported file type (no extension)"


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode JPEG/PNG bytes to a (size, size, 3) uint8 RGB array; raise UndecodableImage."""
    if not data:
        raise UndecodableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UndecodableImage(f"decompression bomb refused: {exc}") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        raise UndecodableImage(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


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
