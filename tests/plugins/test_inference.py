"""The ONNX model is converted once per weights and kept in the lake; later runs reuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchard import model_cache as inference
from orchard.storage.lake import Lake
from orchard_jobs import engine
from orchard_jobs.images import decode_image
from orchard_jobs.model import Featurizer, build_model, random_weights
from tests.imagefactory import jpeg


@pytest.fixture
def lake_root(tmp_path) -> str:
    return f"file://{tmp_path}/lake/cache/models"


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No Keras cache and a proxy that refuses every connection: a download fails at once.

    Returns the (empty) Keras home.
    """
    keras_home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    for proxy in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return keras_home


def test_a_spec_is_converted_once_then_reused(lake_root, monkeypatch):
    first = inference.prepare_model(Lake.local(), lake_root, "random:11", "fail")
    assert first["converted"]
    assert first["model"].startswith(f"{lake_root}/") and first["model"].endswith(".onnx")
    assert first["weights"] == {
        "requested": "random:11",
        "used": "random:11",
        "meaningful": False,
        "warnings": [],
    }

    # A re-run converts nothing and imports no TensorFlow: resolving or converting would fail here.
    def refuse(*_args, **_kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(inference, "convert", refuse)
    again = inference.prepare_model(Lake.local(), lake_root, "random:11", "fail")
    assert not again["converted"]
    assert (again["model"], again["sha256"]) == (first["model"], first["sha256"])


def test_the_stored_model_computes_the_weights_features(lake_root):
    doc = inference.prepare_model(Lake.local(), lake_root, "random:12", "fail")
    data = Lake.local().read_bytes(doc["model"])
    assert engine.model_digest(data) == doc["sha256"]
    images = np.stack([decode_image(jpeg(seed)) for seed in range(3)])
    expected = Featurizer(random_weights(12))(images)
    got = engine.OnnxFeaturizer(data)(images)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_other_weights_get_another_model(lake_root, tmp_path):
    a = inference.prepare_model(Lake.local(), lake_root, "random:11", "fail")
    b = inference.prepare_model(Lake.local(), lake_root, "random:13", "fail")
    assert a["model"] != b["model"] and a["sha256"] != b["sha256"]

    # A weights file is known by its bytes: the same file under another name is the same model.
    model = build_model(None)
    model.set_weights(random_weights(11))
    first, second = tmp_path / "w1.weights.h5", tmp_path / "copy" / "w2.weights.h5"
    model.save_weights(first)
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    from_file = inference.prepare_model(Lake.local(), lake_root, str(first), "fail")
    same = inference.prepare_model(Lake.local(), lake_root, str(second), "fail")
    assert from_file["converted"] and not same["converted"]
    assert from_file["model"] == same["model"]
    assert same["weights"]["used"] == str(second) and same["weights"]["meaningful"]


def test_imagenet_unavailable_falls_back_to_random_and_says_so(lake_root, offline):

    doc = inference.prepare_model(Lake.local(), lake_root, "imagenet", "random")
    assert doc["weights"]["requested"] == "imagenet"
    assert doc["weights"]["used"] == "random:42"
    assert not doc["weights"]["meaningful"]
    assert "no visual meaning" in doc["weights"]["warnings"][0]
    # The same fallback model as asking for random:42 directly.
    assert doc["model"] == inference.prepare_model(Lake.local(), lake_root, "random:42", "fail")["model"]
    with pytest.raises(RuntimeError, match="ImageNet weights could not be loaded"):
        inference.prepare_model(Lake.local(), lake_root, "imagenet", "fail")


def test_imagenet_unavailable_reuses_the_fallback_model_without_tensorflow(lake_root, offline, monkeypatch):
    # Offline, once the fallback's model is in the lake, a later run learns that the download fails
    # without importing TensorFlow (no conversion child at all) and reuses that model.
    fallback = inference.prepare_model(Lake.local(), lake_root, "random:42", "fail")

    def no_conversion(*args: object) -> None:
        raise AssertionError(f"converted {args}")

    monkeypatch.setattr(inference, "convert", no_conversion)
    doc = inference.prepare_model(Lake.local(), lake_root, "imagenet", "random")
    assert (doc["model"], doc["sha256"], doc["converted"]) == (fallback["model"], fallback["sha256"], False)
    assert doc["weights"]["used"] == "random:42"
    assert not doc["weights"]["meaningful"]
    assert "IMAGENET WEIGHTS UNAVAILABLE" in doc["weights"]["warnings"][0]
    assert not (offline / "models" / inference.KERAS_NO_TOP).exists()  # nothing half-written
    with pytest.raises(RuntimeError, match="ImageNet weights could not be loaded"):
        inference.prepare_model(Lake.local(), lake_root, "imagenet", "fail")
