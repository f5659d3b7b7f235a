"""The body of the forget_images DAG's task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard import erasure
from orchard.config import Settings
from orchard.storage.lake import airflow_lake


def forget(settings: Settings, params: Mapping[str, Any]) -> dict[str, Any]:
    """Erase the images the params name and their derived rows; returns the erasure record."""
    paths = erasure.collect_paths(params["paths"], params["paths_file"])
    lake = airflow_lake(settings)
    lake.check_format(settings.lake)
    return erasure.forget_images(lake, settings.lake, params["dataset"], paths, params["reason"])
