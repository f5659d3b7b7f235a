"""Versions of what computed a result, for run manifests."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

PACKAGES = ("pyspark", "onnxruntime", "numpy", "pandas", "pyarrow", "pillow")


def versions(spark: Any = None) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers (and Spark's own, if running)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if spark is not None:
        found["spark"] = spark.version
    return found
