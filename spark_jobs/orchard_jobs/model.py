"""MobileNetV2 in Keras: weights resolution, the reference featurizer, and conversion to ONNX.

The Airflow side resolves the weights once (ImageNet download or cache, a weights file, or a seeded
random initialisation) and converts the model to ONNX (`to_onnx`); Spark workers run that file with
ONNX Runtime (`orchard_jobs.engine`) and never import TensorFlow. The Keras `Featurizer` stays as
the reference the tests and the bench compare the engine with.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchard_jobs.engine import FEATURE_DIM, INPUT_NAME, OUTPUT_NAME
from orchard_jobs.images import IMAGE_SIZE

log = logging.getLogger(__name__)

__all__ = ["FEATURE_DIM", "Featurizer", "ResolvedWeights", "resolve_weights", "to_onnx"]
# ONNX opset of the converted model: supported by every ONNX Runtime release since 1.12.
ONNX_OPSET = 17
DEFAULT_SEED = 42
# How random:SEED weights are made (`random_weights`); part of the converted model's cache key.
RANDOM_RECIPE = "keras-init+bn-calibrated/v1"
CALIBRATION_IMAGES = 16
WEIGHT_FALLBACKS = ("random", "fail")


@dataclass
class ResolvedWeights:
    """Weights as arrays plus an honest account of where they came from."""

    arrays: list[np.ndarray]
    requested: str
    used: str
    meaningful: bool
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """Manifest entry: what was asked for, what was used, and any fallback warning."""
        return {
            "requested": self.requested,
            "used": self.used,
            "meaningful": self.meaningful,
            "warnings": self.warnings,
        }


def build_model(weights: str | None = None) -> Any:
    """MobileNetV2 at 224x224 without its classifier, global-average-pooled to 1280 floats."""
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        include_top=False,
        pooling="avg",
        weights=weights,
    )


def calibration_images(seed: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Seeded image-like inputs, uint8 RGB: 8x8 blocks of colour (spatially correlated, as photos
    are) plus pixel noise. Inputs for calibrating BatchNorm statistics, not test data."""
    rng = np.random.default_rng(seed)
    block = IMAGE_SIZE // 8
    coarse = rng.uniform(0, 255, (count, 8, 8, 3))
    images = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)
    images += rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).round().astype(np.uint8)


def random_weights(seed: int) -> list[np.ndarray]:
    """Seeded random weights with activations at a trained network's scale in every layer.

    Keras's initialisation leaves BatchNorm's moving statistics at mean 0 / variance 1, which no
    layer's output has: each layer then shrinks its input and the features end near 1e-11. Here
    each BatchNorm takes the mean and variance of its own input on seeded calibration images
    (`calibration_images`), layer after layer in one forward pass, as training would leave them, so
    every layer's output has unit scale and the features are O(0.1-1) and differ between images.
    The statistics are rounded to float16 precision, so that another CPU's last-bit differences in
    the calibration pass seldom reach the arrays (the recipe is `RANDOM_RECIPE`; the converted
    model's SHA-256 keys the features cache either way). Same seed, same arrays, in any process.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(None)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # momentum 0: one training-mode pass sets each moving statistic to its batch statistic.
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    scaled = calibration_images(seed).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    model(scaled, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
        for stat in (layer.moving_mean, layer.moving_variance):
            stat.assign(stat.numpy().astype(np.float16).astype(np.float32))
    return model.get_weights()


def parse_weights(spec: str) -> tuple[str, int | str | None]:
    """Split a weights spec: 'imagenet', 'random', 'random:SEED', or a file path/URI."""
    if spec == "imagenet":
        return "imagenet", None
    if spec == "random" or spec.startswith("random:"):
        seed_text = spec.partition(":")[2] or str(DEFAULT_SEED)
        if not seed_text.isdigit():
            raise ValueError(f"weights {spec!r}: the seed after 'random:' must be a whole number")
        return "random", int(seed_text)
    if not spec.endswith((".h5", ".keras", ".weights.h5")):
        raise ValueError(
            f"weights {spec!r}: expected 'imagenet', 'random[:SEED]' or a .h5/.keras weights file"
        )
    return "file", spec


def _local_copy(uri: str, workdir: str) -> str:
    """A local path for a weights file given as a path or any fsspec URI (s3://, file://...)."""
    if "://" not in uri:
        return uri
    import fsspec

    target = os.path.join(workdir, os.path.basename(uri))
    with fsspec.open(uri, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def imagenet_failure_message(exc: BaseException) -> str:
    """The error of a run whose ImageNet weights could not be loaded and that allows no fallback."""
    return (
        f"ImageNet weights could not be loaded ({type(exc).__name__}: {exc}); stage a weights "
        "file and pass its path/URI, or allow the random fallback for a trial run"
    )


def imagenet_fallback_message(exc: BaseException) -> str:
    """The warning a run carries when ImageNet weights could not be loaded and random ones are used."""
    return (
        f"IMAGENET WEIGHTS UNAVAILABLE ({type(exc).__name__}: {exc}). FALLING BACK TO SEEDED RANDOM "
        f"WEIGHTS (seed {DEFAULT_SEED}): the features and PCA of this run carry no visual meaning."
    )


def resolve_weights(spec: str, fallback: str = "fail") -> ResolvedWeights:
    """Resolve a weights spec to arrays; on a failed ImageNet download, fall back if allowed."""
    if fallback not in WEIGHT_FALLBACKS:
        raise ValueError(f"weights fallback {fallback!r}: expected one of {WEIGHT_FALLBACKS}")
    kind, arg = parse_weights(spec)
    if kind == "random" and isinstance(arg, int):
        return ResolvedWeights(random_weights(arg), spec, f"random:{arg}", meaningful=False)
    if kind == "file":
        with tempfile.TemporaryDirectory() as workdir:
            model = build_model(None)
            model.load_weights(_local_copy(str(arg), workdir))
        return ResolvedWeights(model.get_weights(), spec, str(arg), meaningful=True)
    try:
        return ResolvedWeights(build_model("imagenet").get_weights(), spec, "imagenet", meaningful=True)
    except Exception as exc:  # no network, proxy, corrupt cache: Keras raises many kinds
        if fallback != "random":
            raise RuntimeError(imagenet_failure_message(exc)) from exc
        message = imagenet_fallback_message(exc)
        log.warning("!" * 20 + " %s " + "!" * 20, message)
        return ResolvedWeights(
            random_weights(DEFAULT_SEED),
            spec,
            f"random:{DEFAULT_SEED}",
            meaningful=False,
            warnings=[message],
        )


def set_tf_threads(threads: int) -> None:
    """Limit TensorFlow to `threads` threads per op (and one op at a time) in this process.

    Only possible before TensorFlow's runtime starts; afterwards the setting is kept as it is.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime is already initialised in this process
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            log.warning("TensorFlow already started with %s threads; cannot set %s", current, threads)


class Featurizer:
    """A model with fixed weights and a traced inference function; build once per process."""

    def __init__(self, weights: list[np.ndarray], threads: int = 0):
        import tensorflow as tf

        if threads:
            set_tf_threads(threads)
        self.model = build_model(None)
        self.model.set_weights(weights)
        # One trace for any batch length; eager calls are ~2x slower and hold far more memory.
        self._infer = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)],
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(n, 224, 224, 3) uint8 RGB -> (n, 1280) float32 features."""
        if len(images) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        # MobileNetV2's own preprocessing: scale [0, 255] to [-1, 1].
        x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return self._infer(x).numpy()


def to_onnx(weights: list[np.ndarray]) -> bytes:
    """MobileNetV2 with these weights as a serialized ONNX model: uint8 RGB in, 1280 floats out.

    The pixel scaling of `Featurizer` ([0, 255] -> [-1, 1]) is part of the graph, so the engine
    is fed the decoded bytes as they are.
    """
    import tensorflow as tf
    import tf2onnx

    model = build_model(None)
    model.set_weights(weights)

    @tf.function(
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=INPUT_NAME)]
    )
    def infer(images: Any) -> dict[str, Any]:
        scaled = tf.cast(images, tf.float32) / 127.5 - 1.0
        return {OUTPUT_NAME: model(scaled, training=False)}

    proto, _ = tf2onnx.convert.from_function(infer, input_signature=infer.input_signature, opset=ONNX_OPSET)
    return proto.SerializeToString()


def convert(spec: str, fallback: str, out_dir: str) -> dict[str, Any]:
    """Resolve `spec` and write its ONNX model and the account of its weights into `out_dir`."""
    import json

    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    resolved = resolve_weights(spec, fallback)
    with open(os.path.join(out_dir, "model.onnx"), "wb") as out:
        out.write(to_onnx(resolved.arrays))
    account = {
        **resolved.describe(),
        "converted_with": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
        },
    }
    with open(os.path.join(out_dir, "weights.json"), "w", encoding="utf-8") as out:
        json.dump(account, out)
    return account


if __name__ == "__main__":  # python -m orchard_jobs.model SPEC FALLBACK OUT_DIR
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    convert(*sys.argv[1:4])
    # Both files are written and closed: leave without the interpreter's teardown, where
    # TensorFlow's thread pools and finalizers take about a second (docs/performance.md).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
