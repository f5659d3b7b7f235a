"""The featurization engine of the Spark workers: MobileNetV2 as an ONNX model run by ONNX Runtime.

Workers never import TensorFlow: the Keras model is converted to ONNX once per weights, on the
Airflow side (`orchard.model_cache`), and shipped to the workers as bytes. ONNX Runtime is faster
than TensorFlow on the same cores, opens a session without TensorFlow's import and trace, and
agrees with Keras to ~5e-7 of the features' scale (docs/performance.md, "Inference engine").
"""

from __future__ import annotations

import hashlib
from importlib import metadata

import numpy as np

ENGINE = "onnxruntime"
FEATURE_DIM = 1280
# Names of the converted graph's input (uint8 RGB, any batch length) and output (1280 floats).
INPUT_NAME = "images"
OUTPUT_NAME = "features"
# Images per engine call: one. A single image's activations stay in the core's caches: faster than
# batches of 16 or 64 (same outputs bit for bit), and a worker's activations stay at a few MB
# (docs/performance.md, "Inference engine").
INFER_BATCH = 1


def model_digest(model: bytes) -> str:
    """SHA-256 of a serialized model: the key of worker sessions and of the features cache."""
    return hashlib.sha256(model).hexdigest()


def engine_version() -> str:
    """The installed ONNX Runtime version (without importing it)."""
    return metadata.version(ENGINE)


class OnnxFeaturizer:
    """One ONNX Runtime session over a MobileNetV2 model; build once per process."""

    def __init__(self, model: bytes, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One Python worker per task slot: `threads` intra-op threads each (0: all cores), and
        # the graph run op by op, so workers never oversubscribe the cores.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(n, 224, 224, 3) uint8 RGB -> (n, 1280) float32 features (the model scales the pixels)."""
        if len(images) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        return np.concatenate(
            [
                self.session.run([OUTPUT_NAME], {INPUT_NAME: batch[i : i + INFER_BATCH]})[0]
                for i in range(0, len(batch), INFER_BATCH)
            ]
        )


def describe() -> dict[str, str]:
    """The engine's name and version, for summaries and manifests."""
    return {"name": ENGINE, "version": engine_version()}
