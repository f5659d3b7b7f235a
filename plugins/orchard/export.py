"""The last step of a run: one pcaFeatures.csv, the run manifest, and the lake's `latest.json`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from orchard import s3
from orchard.layout import local_path
from orchard.storage import merge_csv, replaced_atomically

log = logging.getLogger(__name__)


class LocalLake:
    """A lake in a local folder (file:// URIs)."""

    def read_json(self, uri: str) -> dict[str, Any]:
        """A small JSON document."""
        return json.loads(local_path(uri).read_text(encoding="utf-8"))

    def write_json(self, uri: str, payload: Mapping[str, Any]) -> None:
        """A small JSON document, replaced atomically."""
        with replaced_atomically(local_path(uri)) as out:
            out.write((json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def merge_csv(self, header: Iterable[str], parts_uri: str, dest_uri: str) -> dict[str, Any]:
        """Concatenate the CSV parts behind a header into one file."""
        merge_csv(header, local_path(parts_uri), local_path(dest_uri))
        return {}


class S3Lake:
    """A lake under an s3:// prefix; every write encrypted."""

    def __init__(self, client: Any, encryption: Mapping[str, str]):
        self.client = client
        self.encryption = encryption

    def read_json(self, uri: str) -> dict[str, Any]:
        """A small JSON object."""
        return s3.read_json(self.client, uri)

    def write_json(self, uri: str, payload: Mapping[str, Any]) -> None:
        """A small JSON object (S3 writes are atomic per object)."""
        s3.write_json(self.client, uri, payload, self.encryption)

    def merge_csv(self, header: Iterable[str], parts_uri: str, dest_uri: str) -> dict[str, Any]:
        """Assemble the CSV inside S3 (multipart copy) from the parts behind a header."""
        return s3.merge_csv(self.client, header, parts_uri, dest_uri, self.encryption)


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


def export_run(
    lake: LocalLake | S3Lake, lake_uri: str, run_id: str, run: Mapping[str, str], sync: Mapping[str, Any]
) -> dict[str, Any]:
    """Assemble pcaFeatures.csv from the PCA step's parts, write the manifest, point latest.json at it."""
    featurized = lake.read_json(run["featurize_summary"])
    pca = lake.read_json(run["pca_summary"])
    merge_stats = lake.merge_csv(pca["columns"], run["csv_parts"], run["csv"])
    manifest = build_manifest(run_id, run, sync, featurized, pca)
    if merge_stats:
        manifest["csv_merge"] = merge_stats
    lake.write_json(run["manifest"], manifest)
    lake.write_json(
        f"{lake_uri}/latest.json", {"run_id": run_id, "csv": run["csv"], "manifest": run["manifest"]}
    )
    for warning in manifest["warnings"]:
        log.warning("%s", warning)
    log.info("pcaFeatures.csv: %s (%d rows, k=%d)", run["csv"], pca["n_images"], pca["k"])
    return manifest
