"""Images of every kind the pipeline must handle, made in memory (no downloaded fixtures)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pillow_heif import register_heif_opener

register_heif_opener()  # HEIC/HEIF files, as phones write them (saved too)


def gradient(width: int = 100, height: int = 100, seed: int = 0) -> Image.Image:
    """An RGB image with structure (gradients plus noise), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    noisy = base + rng.normal(0, 20, size=base.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    """Image -> file bytes in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (100, 100)) -> bytes:
    """A JPEG of a seeded gradient."""
    return encode(gradient(*size, seed=seed), "JPEG", quality=90)


def truncated_jpeg(seed: int = 0) -> bytes:
    """The first third of a valid JPEG."""
    data = jpeg(seed)
    return data[: len(data) // 3]
