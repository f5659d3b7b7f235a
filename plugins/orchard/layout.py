"""Where a run's inputs and outputs live in the lake: one function of (lake, dataset, run id)."""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    """A name safe in any URI and Hadoop path (no ':' or '+', which Hadoop paths reject)."""
    cleaned = _UNSAFE.sub("_", text).strip("._-")
    if not cleaned:
        raise ValueError(f"{text!r} has no characters usable in a path")
    return cleaned


def run_layout(lake: str, dataset: str, run_id: str) -> dict[str, str]:
    """URIs of a run: the synced images (shared by runs of a dataset) and the run's own outputs."""
    root = f"{lake}/runs/{slug(run_id)}"
    return {
        "images": f"{lake}/images/{slug(dataset)}",
        # Features by image content (SHA-256) and weights, shared by all runs: never computed twice.
        "cache": f"{lake}/cache/features",
        # The featurization model converted to ONNX, per weights, shared by all runs.
        "models": f"{lake}/cache/models",
        "root": root,
        # Which ONNX model this run featurizes with, and the account of its weights.
        "inference_model": f"{root}/inference_model.json",
        # What this run's source held when it was uploaded: the paths the featurize step reads.
        "inputs": f"{root}/inputs",
        "features": f"{root}/features",
        "quarantine": f"{root}/quarantine",
        "featurize_summary": f"{root}/featurize.json",
        "pca": f"{root}/pca",
        "model": f"{root}/pca_model",
        "pca_summary": f"{root}/pca.json",
        "csv_parts": f"{root}/csv_parts",
        "csv": f"{root}/pcaFeatures.csv",
        "manifest": f"{root}/manifest.json",
        "report": f"{root}/report/report.html",
    }


def local_path(uri: str) -> Path:
    """The filesystem path of a file:// URI (taken literally, as the lake URIs are)."""
    if not uri.startswith("file:"):
        raise ValueError(f"{uri!r} is not a local file:// URI")
    return Path("/" + uri[len("file:") :].lstrip("/"))
