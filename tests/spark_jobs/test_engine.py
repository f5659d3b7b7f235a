"""ONNX Runtime featurizer against plain Keras on the same images and weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from orchard_jobs import engine
from orchard_jobs.images import decode_image
from orchard_jobs.model import Featurizer, random_weights
from tests.imagefactory import jpeg
from tests.models import onnx_model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.stack([decode_image(jpeg(seed)) for seed in range(12)])


def test_onnx_features_equal_keras_at_a_trained_models_scale(images):
    expected = Featurizer(random_weights(3))(images)
    got = engine.OnnxFeaturizer(onnx_model(3), threads=1)(images)

    assert got.shape == (12, engine.FEATURE_DIM)
    assert got.dtype == np.float32
    scale = np.abs(expected).max()
    assert scale > 0.1  # random_weights gives a trained network's scale (test_model.py)
    assert np.abs(got - expected).max() <= 1e-4 * scale
    assert np.abs(got[0] - got[1]).max() > 1e-2 * scale


def test_any_batch_length_and_thread_count_give_the_same_features(images):
    one = engine.OnnxFeaturizer(onnx_model(3), threads=1)
    two = engine.OnnxFeaturizer(onnx_model(3), threads=2)
    whole = one(images)
    parts = np.concatenate([two(images[:5]), two(images[5:6]), two(images[6:])])
    scale = np.abs(whole).max()
    assert np.abs(whole - parts).max() <= 1e-6 * scale
    assert one(images[:0]).shape == (0, engine.FEATURE_DIM)


def test_the_model_digest_is_its_content():
    a = onnx_model(3)
    assert engine.model_digest(a) == hashlib.sha256(a).hexdigest()  # the bytes' SHA-256, computed apart
    assert engine.model_digest(a) != engine.model_digest(onnx_model(4))
