"""When fruits_pipeline runs: a time schedule, manual runs only, or when new images land.

ORCHARD_SCHEDULE=@daily (default) | any cron expression or preset | none | asset

With `asset`, the small DAG `orchard_source_watch` looks at the source (a folder or an s3:// prefix) every
ORCHARD_WATCH_SCHEDULE (default every 10 minutes) and updates the source asset only when the
folder changed since the last look; fruits_pipeline is scheduled on that asset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from orchard.config import Settings
from orchard.layout import LakeLayout
from orchard.storage.lake import Lake, airflow_lake
from orchard.uris import on_s3, source_location

ASSET_NAME = "orchard_source_images"
NO_SCHEDULE = {"", "none", "null", "manual"}


def source_asset(settings: Settings) -> Asset:
    """The asset standing for the images of the default source: a folder, or an s3:// prefix."""
    source = source_location(settings.default_source)
    return Asset(name=ASSET_NAME, uri=source if on_s3(source) else Path(source).as_uri())


def dag_schedule(settings: Settings) -> Any:
    """fruits_pipeline's `schedule` argument for the configured ORCHARD_SCHEDULE."""
    value = settings.schedule
    if value.lower() in NO_SCHEDULE:
        return None
    if value.lower() == "asset":
        return source_asset(settings)
    return value


def source_fingerprint(source: str | Path, lake: Lake | None = None) -> dict[str, Any]:
    """What changes when images land, change or go: count, bytes, and a digest of the listing.

    A folder's files by size and modification time; an s3:// prefix's objects (through `lake`,
    which must be on S3) by size and ETag. Hidden names never count: they are never inputs.
    """
    digest = hashlib.sha256()
    files = size = 0
    for rel, length, version in (lake or Lake.local()).source_listing(str(source)):
        files += 1
        size += length
        digest.update(f"{rel}\0{length}\0{version}\n".encode())
    return {"files": files, "bytes": size, "listing_sha256": digest.hexdigest()}


def detect_change(lake: Lake, state_uri: str, source: str | Path) -> dict[str, Any] | None:
    """The source's fingerprint if it differs from the one stored at `state_uri` (then stored), else None."""
    current = source_fingerprint(source, lake)
    try:
        previous = lake.read_json(state_uri)
    except FileNotFoundError:  # the lake raises it on every backend
        previous = None
    if previous == current:
        return None
    lake.write_json(state_uri, current)
    return current


def detect_new_images(settings: Settings) -> dict[str, Any] | None:
    """orchard_source_watch's task: the source folder's new fingerprint when it changed, else None."""
    lake = airflow_lake(settings)
    return detect_change(lake, LakeLayout(settings.lake).watch_state, settings.default_source)
