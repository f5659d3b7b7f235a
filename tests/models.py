"""Seeded MobileNetV2 weights for tests, and their ONNX conversions (converted once per session)."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

import numpy as np


@cache
def batchnorm_weights(seed: int) -> tuple[np.ndarray, ...]:
    """Seeded random weights whose BatchNorm statistics are not the identity.

    A fresh MobileNetV2 (moving variance 1) shrinks its activations at every layer, so its
    features are ~1e-11; with these statistics they reach ~6 (ReLU6's range) and differ between
    images, so engines are compared at a trained model's scale. Smaller variances make this random
    network amplify float32 rounding chaotically (Keras itself then drifts ~1e-5 from float64).
    """
    from orchard_jobs.model import build_model, random_weights

    model = build_model(None)
    model.set_weights(random_weights(seed))
    rng = np.random.default_rng(seed)
    arrays = []
    for variable in model.weights:
        value = variable.numpy()
        if variable.path.endswith("moving_variance"):
            value = rng.uniform(0.05, 0.1, value.shape).astype(value.dtype)
        elif variable.path.endswith("moving_mean"):
            value = rng.normal(0.0, 0.01, value.shape).astype(value.dtype)
        arrays.append(value)
    return tuple(arrays)


@cache
def onnx_model(seed: int, batchnorm: bool = True) -> bytes:
    """The ONNX conversion of seeded weights (with non-trivial BatchNorm statistics by default)."""
    from orchard_jobs.model import random_weights, to_onnx

    return to_onnx(list(batchnorm_weights(seed)) if batchnorm else random_weights(seed))


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
