"""The conversion cache: MobileNetV2 converted to ONNX once per weights, kept in the lake for the workers.

Runs on the Airflow side, which has TensorFlow: the cluster's nodes only need ONNX Runtime. A
converted model is stored under `cache/models/<key>/` (next to the features cache) and reused by
every later run with the same weights, so a re-run imports no TensorFlow at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from orchard.storage.files import file_sha256, replaced_atomically
from orchard.storage.lake import Lake
from orchard.uris import local_path, on_s3

log = logging.getLogger(__name__)

# Where Keras caches the ImageNet weights of MobileNetV2 without its classifier.
KERAS_NO_TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# Where Keras downloads them from (keras.applications.mobilenet_v2's BASE_WEIGHT_PATH).
KERAS_WEIGHTS_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{KERAS_NO_TOP}"
)
DOWNLOAD_TIMEOUT = 60
MODEL_FILE = "mobilenet_v2.onnx"
INFO_FILE = "model.json"
# Bumped when the conversion itself changes (graph inputs, preprocessing), so old files are not reused.
CONVERSION = "uint8-rgb-in/1280-avg-pool-out/v1"


def keras_imagenet_file() -> Path:
    """Where Keras keeps the downloaded ImageNet weights of MobileNetV2 without its classifier."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return home / "models" / KERAS_NO_TOP


def weights_identity(kind: str, arg: Any) -> str | None:
    """What fixes the weight values, without building a model; None when only resolving can tell.

    A seed with a given Keras release always gives the same arrays (tests/spark_jobs/test_model.py);
    a weights file is its bytes; ImageNet weights are Keras's cached file, once downloaded.
    """
    if kind == "random":
        # orchard_jobs brings Pillow and pillow-heif, which parsing the DAG does not need.
        from orchard_jobs.model import RANDOM_RECIPE  # ruff: ignore[import-outside-top-level]

        return f"random:{arg}|{RANDOM_RECIPE}|keras={metadata.version('keras')}"
    if kind == "file":
        return f"file:{file_sha256(Path(arg))}"
    cached = keras_imagenet_file()
    return f"file:{file_sha256(cached)}" if cached.is_file() else None


def fetch_imagenet() -> Exception | None:
    """Download the ImageNet weights file into Keras's cache, as Keras would; the error if that failed.

    Done here, without TensorFlow, so that an offline machine learns it needs the fallback in
    ~0.1 s instead of a TensorFlow import, and reuses the fallback's converted model. Kept by hand
    (urllib) because Keras's own get_file needs TensorFlow imported.
    """
    target = keras_imagenet_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(KERAS_WEIGHTS_URL, timeout=DOWNLOAD_TIMEOUT) as response:
            with replaced_atomically(target) as out:
                shutil.copyfileobj(response, out)
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, a cut-off body
        log.warning("ImageNet weights could not be downloaded from %s: %s", KERAS_WEIGHTS_URL, exc)
        return exc
    return None


def model_key(identity: str) -> str:
    """Folder name of a converted model: the weights' identity and how they were converted."""
    recipe = f"{identity}|{CONVERSION}|tf2onnx={metadata.version('tf2onnx')}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _fetch_weights(lake: Lake, spec: str, workdir: Path) -> str:
    """A local path for a weights spec that names a file in the lake's storage (s3://...)."""
    if not on_s3(spec):
        return str(local_path(spec)) if spec.startswith("file:") else spec
    target = workdir / spec.rsplit("/", 1)[-1]
    target.write_bytes(lake.read_bytes(spec))
    return str(target)


def convert(spec: str, fallback: str, workdir: Path) -> tuple[bytes, dict[str, Any]]:
    """Resolve and convert in a child Python: (ONNX model, account of the weights used).

    TensorFlow is imported there, not in the Airflow task's process: its ~1 GB, its threads and
    its global logging set-up end with the conversion.
    """
    command = [sys.executable, "-m", "orchard_jobs.model", spec, fallback, str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if "Error" in ln or "error" in ln]
        raise RuntimeError(
            f"converting weights {spec!r} to ONNX failed: {lines[-1] if lines else done.stderr[-2000:]}"
        )
    account = json.loads((workdir / "weights.json").read_text(encoding="utf-8"))
    return (workdir / "model.onnx").read_bytes(), account


def prepare_model(lake: Lake, models_root: str, spec: str, fallback: str) -> dict[str, Any]:
    """The ONNX model for a weights spec: taken from the lake when converted before, else converted now.

    Returns the model's URI and SHA-256, the weights account (requested, used, meaningful,
    warnings) for the run manifest, and whether this call converted it.
    """
    # orchard_jobs brings Pillow and pillow-heif, which parsing the DAG does not need.
    from orchard_jobs.engine import model_digest  # ruff: ignore[import-outside-top-level]
    from orchard_jobs.model import (  # ruff: ignore[import-outside-top-level]
        DEFAULT_SEED,
        imagenet_failure_message,
        imagenet_fallback_message,
        parse_weights,
    )

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        local_spec = _fetch_weights(lake, spec, workdir)
        kind, arg = parse_weights(local_spec)
        warnings: list[str] = []
        if kind == "imagenet" and weights_identity(kind, arg) is None:
            # Not downloaded yet: download it now, or learn now that the fallback applies, so a
            # fallback converted before is reused without TensorFlow and the network is tried once.
            failure = fetch_imagenet()
            if failure is not None:
                if fallback != "random":
                    raise RuntimeError(imagenet_failure_message(failure)) from failure
                warnings.append(imagenet_fallback_message(failure))  # logged with the result below
                kind, arg = "random", DEFAULT_SEED
        identity = weights_identity(kind, arg)
        if identity is None:  # the download above put the file where Keras looks
            raise RuntimeError(f"weights {spec!r}: Keras's ImageNet file vanished after its download")
        folder = f"{models_root}/{model_key(identity)}"
        info_uri = f"{folder}/{INFO_FILE}"
        converted = not lake.exists(info_uri)
        account: dict[str, Any] | None = None
        if converted:
            data, account = convert(f"random:{arg}" if kind == "random" else local_spec, fallback, workdir)
            info = {
                "model": f"{folder}/{MODEL_FILE}",
                "sha256": model_digest(data),
                "bytes": len(data),
                "identity": identity,
                "converted_with": account["converted_with"],
                "conversion": CONVERSION,
            }
            lake.write_bytes(info["model"], data, "application/octet-stream")
            lake.write_json(info_uri, info)  # last: a present info file means a complete model
        else:
            info = lake.read_json(info_uri)
    used = account["used"] if account else spec if kind != "random" else f"random:{arg}"
    used = spec if used == local_spec else used
    warnings += account["warnings"] if account else []
    result = {
        **{key: info[key] for key in ("model", "sha256", "bytes", "converted_with")},
        "converted": converted,
        "weights": {
            "requested": spec,
            "used": used,
            "meaningful": not used.startswith("random"),
            "warnings": warnings,
        },
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "ONNX model %s (weights %s): %s in %.1f s",
        result["model"], used, "converted now" if converted else "converted before", result["seconds"],
    )  # fmt: skip
    for warning in result["weights"]["warnings"]:
        log.warning("%s", warning)
    return result
