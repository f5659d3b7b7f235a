"""The last step of a run: one pcaFeatures.csv, the run manifest, and the lake's `latest.json`."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchard.layout import local_path
from orchard.storage import merge_csv

log = logging.getLogger(__name__)


def _read_json(uri: str) -> dict[str, Any]:
    return json.loads(local_path(uri).read_text(encoding="utf-8"))


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".orchard-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(payload, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)


def build_manifest(
    run_id: str,
    run: Mapping[str, str],
    sync: Mapping[str, Any],
    featurized: Mapping[str, Any],
    pca: Mapping[str, Any],
) -> dict[str, Any]:
    """What a run read, produced and used, with every input accounted for."""
    counts = dict(featurized["counts"])
    weights = featurized["weights"]
    return {
        "run_id": run_id,
        "source": sync.get("source"),
        "counts": {
            **counts,
            "source_files": sync["files"],
            "uploaded": sync["uploaded"],
            "upload_skipped_unchanged": sync["skipped"],
            "upload_failed": len(sync["failed"]),
            "hidden_names_ignored": len(sync["ignored"]),
            "accounted": counts["inputs"] == counts["featurized"] + counts["quarantined"],
        },
        "upload_failures": sync["failed"],
        "hidden_names_ignored": sync["ignored"],
        "weights": weights,
        "warnings": list(weights.get("warnings", [])),
        "pca": {
            "k": pca["k"],
            "target_variance": pca["target_variance"],
            "variance_kept": pca["variance_kept"],
        },
        "timings_seconds": {
            "upload_images": sync.get("seconds"),
            "featurize": featurized.get("seconds"),
            "pca": pca.get("seconds"),
        },
        "versions": featurized.get("versions", {}),
        "outputs": {key: run[key] for key in ("features", "quarantine", "pca", "model", "csv")},
    }


def export_run(run_id: str, run: Mapping[str, str], sync: Mapping[str, Any], lake: str) -> dict[str, Any]:
    """Assemble pcaFeatures.csv from the PCA step's parts, write the manifest, point latest.json at it."""
    featurized = _read_json(run["featurize_summary"])
    pca = _read_json(run["pca_summary"])
    merge_csv(pca["columns"], local_path(run["csv_parts"]), local_path(run["csv"]))
    manifest = build_manifest(run_id, run, sync, featurized, pca)
    _write_json(local_path(run["manifest"]), manifest)
    _write_json(
        local_path(f"{lake}/latest.json"), {"run_id": run_id, "csv": run["csv"], "manifest": run["manifest"]}
    )
    for warning in manifest["warnings"]:
        log.warning("%s", warning)
    log.info("pcaFeatures.csv: %s (%d rows, k=%d)", run["csv"], pca["n_images"], pca["k"])
    return manifest
