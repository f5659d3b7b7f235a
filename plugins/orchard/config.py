"""Orchard's settings: `ORCHARD_*` environment variables with defaults for the local target.

Read at DAG parse time, so this module does no I/O beyond reading the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("local",)


@dataclass(frozen=True)
class Settings:
    """Everything that differs between a laptop and a cluster; never edited in code."""

    target: str
    lake: str
    default_source: str
    spark_conn_id: str
    spark_jobs_dir: str
    pyspark_python: str
    spark_driver_memory: str
    weights: str
    weights_fallback: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `ORCHARD_*` variables (the process environment by default)."""
        env = os.environ if environ is None else environ
        target = env.get("ORCHARD_TARGET", "local").strip().lower()
        if target not in TARGETS:
            raise ValueError(f"ORCHARD_TARGET={target!r}: expected one of {', '.join(TARGETS)}")
        lake = env.get("ORCHARD_LAKE") or str(PROJECT_ROOT / "lake")
        return cls(
            target=target,
            lake=normalise_uri(lake),
            default_source=env.get("ORCHARD_SOURCE") or str(PROJECT_ROOT / "data" / "sample"),
            spark_conn_id=env.get("ORCHARD_SPARK_CONN_ID", "orchard_spark"),
            spark_jobs_dir=env.get("ORCHARD_SPARK_JOBS") or str(PROJECT_ROOT / "spark_jobs"),
            pyspark_python=env.get("ORCHARD_PYSPARK_PYTHON") or sys.executable,
            spark_driver_memory=env.get("ORCHARD_SPARK_DRIVER_MEMORY", "2g"),
            weights=env.get("ORCHARD_WEIGHTS", "imagenet"),
            weights_fallback=env.get("ORCHARD_WEIGHTS_FALLBACK", "random"),
        )


def normalise_uri(uri: str) -> str:
    """A lake location as a URI without a trailing slash; bare paths become file:// URIs.

    Taken literally, not percent-encoded: Hadoop paths and Spark's file listings use raw names.
    """
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if "://" not in uri:
        return "file://" + str(Path(uri).expanduser().resolve())
    return uri.rstrip("/")
