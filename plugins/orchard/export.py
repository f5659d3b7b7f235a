"""The last step of a run: one pcaFeatures.csv, the run manifest, and the lake's `latest.json`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
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

    def read_parquet(self, uri: str) -> Any:
        """A Parquet folder as a pandas DataFrame."""
        import pandas as pd

        return pd.read_parquet(local_path(uri))

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> None:
        """A small file, replaced atomically."""
        with replaced_atomically(local_path(uri)) as out:
            out.write(data)

    def read_bytes(self, uri: str) -> bytes:
        """A whole file."""
        return local_path(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        """Whether a file or folder is there."""
        return local_path(uri).exists()

    def delete(self, uri: str) -> None:
        """Remove one file."""
        local_path(uri).unlink()

    def list_files(self, prefix_uri: str) -> list[str]:
        """URIs of all files below a folder (none when it does not exist)."""
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        return sorted(f"file://{p}" for p in root.rglob("*") if p.is_file())


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

    def read_parquet(self, uri: str) -> Any:
        """A Parquet folder (Spark's output) as a pandas DataFrame, through a temporary copy."""
        import tempfile

        import pandas as pd

        with tempfile.TemporaryDirectory() as workdir:
            files = s3.download_prefix(self.client, uri, Path(workdir), suffix=".parquet")
            if not files:
                raise FileNotFoundError(f"no Parquet files under {uri}")
            return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> None:
        """A small object, encrypted."""
        s3.put_bytes(self.client, uri, data, self.encryption, content_type)

    def read_bytes(self, uri: str) -> bytes:
        """A whole object (FileNotFoundError when there is none)."""
        bucket, key = s3.split_uri(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(uri) from exc

    def exists(self, uri: str) -> bool:
        """Whether an object, or objects below this prefix, are there."""
        bucket, key = s3.split_uri(uri)
        listing = self.client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return listing.get("KeyCount", 0) > 0

    def delete(self, uri: str) -> None:
        """Remove one object."""
        bucket, key = s3.split_uri(uri)
        self.client.delete_object(Bucket=bucket, Key=key)

    def list_files(self, prefix_uri: str) -> list[str]:
        """URIs of all objects below a prefix."""
        bucket, prefix = s3.split_uri(prefix_uri)
        return [
            f"s3://{bucket}/{prefix}/{key}" for key in sorted(s3.existing_sizes(self.client, bucket, prefix))
        ]


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
            "upload_quarantined": len(sync.get("quarantined", {})),
            "deleted_from_lake": sync.get("deleted", 0),
            "hidden_names_ignored": len(sync["ignored"]),
            # The source's listing against what came out: every listed file is a row of one output.
            "accounted": sync["files"] == counts["inputs"] == counts["featurized"] + counts["quarantined"],
            "featurized_now": counts["featurized"] - counts.get("from_cache", 0),
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
        # The engine that computed the features (its name and version), beside the package versions.
        "engine": featurized.get("engine"),
        "versions": featurized.get("versions", {}),
        "images": run["images"],
        "outputs": {key: run[key] for key in ("features", "quarantine", "pca", "model", "csv", "report")},
    }


def export_run(
    lake: LocalLake | S3Lake, lake_uri: str, run_id: str, run: Mapping[str, str], sync: Mapping[str, Any]
) -> dict[str, Any]:
    """Assemble pcaFeatures.csv from the PCA step's parts, write the manifest, point latest.json at it."""
    featurized = lake.read_json(run["featurize_summary"])
    pca = lake.read_json(run["pca_summary"])
    merge_stats = lake.merge_csv(pca["columns"], run["csv_parts"], run["csv"])
    manifest = build_manifest(run_id, run, sync, featurized, pca)
    if not manifest["counts"]["accounted"]:
        counts = manifest["counts"]
        raise RuntimeError(
            f"accounting failed: the source listed {counts['source_files']} files, the featurize step read "
            f"{counts['inputs']}: {counts['featurized']} featurized + {counts['quarantined']} quarantined"
        )
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


def lake_for(settings: Any, client: Any = None) -> LocalLake | S3Lake:
    """The lake of these settings; on S3 with `client`, or one from the standard AWS chain."""
    if not settings.lake_on_s3:
        return LocalLake()
    if client is None:
        client = s3.client_for(settings)
    return S3Lake(client, settings.encryption)


def airflow_lake(settings: Any) -> LocalLake | S3Lake:
    """The lake as an Airflow task reaches it: on S3 through the Airflow connection."""
    from orchard.s3 import airflow_client

    return lake_for(settings, airflow_client(settings) if settings.lake_on_s3 else None)


REPORT_TYPES = {".png": "image/png", ".html": "text/html; charset=utf-8"}


def write_report(lake: LocalLake | S3Lake, run: Mapping[str, str]) -> str:
    """The run report (plots + one HTML page) under the run's `report/`; returns the page's URI."""
    from orchard.report import build_report

    manifest = lake.read_json(run["manifest"])
    pca_summary = lake.read_json(run["pca_summary"])
    scores = lake.read_parquet(run["pca"])
    quarantine = lake.read_parquet(run["quarantine"])
    files = build_report(manifest, pca_summary, scores, quarantine)
    page = run["report"]
    folder = page.rsplit("/", 1)[0]
    for name, data in files.items():
        lake.write_bytes(f"{folder}/{name}", data, REPORT_TYPES[name[name.rindex(".") :]])
    log.info("run report: %s", page)
    log.info("report plots: %s/scree.png, %s/pc_scatter.png", folder, folder)
    return page
