"""Seeded MobileNetV2 weights for tests, and their ONNX conversions (converted once per session)."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path


@cache
def onnx_model(seed: int) -> bytes:
    """The ONNX conversion of random:SEED weights (converted once per test session)."""
    from orchard_jobs.model import random_weights, to_onnx

    return to_onnx(random_weights(seed))


_MODELS = tempfile.mkdtemp(prefix="orchard-test-models-")


def model_document(out: Path, weights: str) -> str:
    """A run's model document for `weights` in `out` (as convert_model writes it); its URI.

    The ONNX models live in one folder for the whole test session, so each spec is converted once.
    """
    from orchard.model_cache import prepare_model
    from orchard.storage.lake import Lake

    doc = prepare_model(Lake.local(), f"file://{_MODELS}", weights, "fail")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "inference_model.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return f"file://{path}"
