"""Weights resolution and the Featurizer, checked against plain Keras."""

from __future__ import annotations

import numpy as np
import pytest

from orchard_jobs import model as model_mod
from orchard_jobs.images import decode_image
from orchard_jobs.model import FEATURE_DIM, Featurizer, parse_weights, random_weights, resolve_weights
from tests.imagefactory import jpeg


@pytest.fixture(scope="module")
def weights_7():
    return random_weights(7)


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("imagenet", ("imagenet", None)),
        ("random", ("random", 42)),
        ("random:123", ("random", 123)),
        ("s3://bucket/w/mobilenet.weights.h5", ("file", "s3://bucket/w/mobilenet.weights.h5")),
        ("/tmp/m.keras", ("file", "/tmp/m.keras")),
    ],
)
def test_parse_weights(spec, parsed):
    assert parse_weights(spec) == parsed


@pytest.mark.parametrize("spec", ["random:abc", "weights.bin", "", "resnet"])
def test_parse_weights_refuses_unknown_specs(spec):
    with pytest.raises(ValueError, match="weights"):
        parse_weights(spec)


def test_random_weights_are_reproducible_per_seed(weights_7):
    again = random_weights(7)
    other = random_weights(8)
    assert all(np.array_equal(a, b) for a, b in zip(weights_7, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(weights_7, other, strict=True))


def test_random_weights_keep_a_trained_networks_scale_in_every_layer(weights_7):
    """Keras's fresh BatchNorm statistics shrink MobileNetV2's activations layer after layer (its
    features end near 1e-11); the calibrated statistics of random_weights keep every block's output
    at unit order on images they were not calibrated on, and the features differ between images."""
    import keras

    model = model_mod.build_model(None)
    model.set_weights(weights_7)
    layers = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.ReLU) or layer.name.endswith("project_BN")
    ]
    probe = keras.Model(model.input, [layer.output for layer in layers])
    images = np.stack([decode_image(jpeg(seed)) for seed in range(8)])
    outputs = probe(images.astype(np.float32) / 127.5 - 1.0)
    rms = {
        layer.name: float(np.sqrt(np.mean(np.square(out))))
        for layer, out in zip(layers, outputs, strict=True)
    }

    assert len(rms) == 52  # 35 ReLU6 activations and 17 linear bottlenecks
    assert all(0.1 < value < 10 for value in rms.values()), rms
    features = Featurizer(weights_7)(images)
    assert 0.1 < np.abs(features).max() < 6  # ReLU6 bounds the pooled features
    assert np.abs(features - features.mean(axis=0)).max() > 0.05  # images are told apart


def test_featurizer_matches_plain_keras_predict(weights_7):
    import keras

    images = np.stack([decode_image(jpeg(seed)) for seed in range(5)])
    reference_model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=None
    )
    reference_model.set_weights(weights_7)
    preprocessed = keras.applications.mobilenet_v2.preprocess_input(images.astype("float32"))
    expected = reference_model.predict(preprocessed, verbose=0)

    got = Featurizer(weights_7)(images)

    assert got.shape == (5, FEATURE_DIM)
    assert got.dtype == np.float32
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-4 * scale
    # Different images give different features (the model is not ignoring its input).
    assert np.abs(got[0] - got[1]).max() > 1e-3 * scale


def test_featurizer_on_an_empty_batch(weights_7):
    out = Featurizer(weights_7)(np.zeros((0, 224, 224, 3), dtype=np.uint8))
    assert out.shape == (0, FEATURE_DIM)


def test_weights_file_round_trip(tmp_path, weights_7):
    built = model_mod.build_model(None)
    built.set_weights(weights_7)
    path = tmp_path / "mobilenet_v2.weights.h5"
    built.save_weights(path)

    resolved = resolve_weights(str(path))

    assert resolved.used == str(path)
    assert resolved.meaningful
    assert all(np.array_equal(a, b) for a, b in zip(resolved.arrays, weights_7, strict=True))


@pytest.fixture
def offline(monkeypatch):
    original = model_mod.build_model

    def build(weights=None):
        if weights == "imagenet":
            raise OSError("URL fetch failure: no network")
        return original(weights)

    monkeypatch.setattr(model_mod, "build_model", build)


@pytest.mark.usefixtures("offline")
def test_imagenet_unavailable_falls_back_loudly(caplog):
    resolved = resolve_weights("imagenet", fallback="random")

    assert resolved.requested == "imagenet"
    assert resolved.used == "random:42"
    assert not resolved.meaningful
    assert resolved.warnings and "no visual meaning" in resolved.warnings[0]
    assert "IMAGENET WEIGHTS UNAVAILABLE" in caplog.text
    assert resolved.describe()["warnings"] == resolved.warnings


@pytest.mark.usefixtures("offline")
def test_imagenet_unavailable_fails_without_fallback():
    with pytest.raises(RuntimeError, match="ImageNet weights could not be loaded"):
        resolve_weights("imagenet", fallback="fail")
