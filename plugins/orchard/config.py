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
TARGETS = ("local", "emr")


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
    aws_conn_id: str = "aws_default"
    region: str = "eu-west-1"
    # "@daily" (default), any cron expression or preset, "none" (manual runs only), or "asset":
    # a run whenever orchard_source_watch sees new or changed images in the source folder.
    schedule: str = "@daily"
    watch_schedule: str = "*/10 * * * *"
    kms_key_id: str | None = None
    emr_release: str = "emr-7.14.0"
    emr_instance_type: str = "m5.xlarge"
    emr_core_instances: int = 2
    emr_core_spot: bool = False
    emr_service_role: str = "EMR_DefaultRole"
    emr_instance_profile: str = "EMR_EC2_DefaultRole"
    emr_subnet_id: str | None = None
    emr_security_configuration: str | None = None
    emr_log_uri: str = ""
    emr_idle_timeout: int = 1800
    emr_root_volume_gb: int = 32
    emr_poll_seconds: int = 60
    s3_endpoint: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `ORCHARD_*` variables (the process environment by default)."""
        env = os.environ if environ is None else environ
        target = env.get("ORCHARD_TARGET", "local").strip().lower()
        if target not in TARGETS:
            raise ValueError(f"ORCHARD_TARGET={target!r}: expected one of {', '.join(TARGETS)}")
        lake = normalise_uri(env.get("ORCHARD_LAKE") or str(PROJECT_ROOT / "lake"))
        if target == "emr" and not lake.startswith("s3://"):
            raise ValueError(f"ORCHARD_TARGET=emr needs an s3:// ORCHARD_LAKE, got {lake!r}")
        return cls(
            target=target,
            lake=lake,
            default_source=env.get("ORCHARD_SOURCE") or str(PROJECT_ROOT / "data" / "sample"),
            spark_conn_id=env.get("ORCHARD_SPARK_CONN_ID", "orchard_spark"),
            spark_jobs_dir=env.get("ORCHARD_SPARK_JOBS") or str(PROJECT_ROOT / "spark_jobs"),
            pyspark_python=env.get("ORCHARD_PYSPARK_PYTHON") or sys.executable,
            spark_driver_memory=env.get("ORCHARD_SPARK_DRIVER_MEMORY", "2g"),
            weights=env.get("ORCHARD_WEIGHTS", "imagenet"),
            weights_fallback=env.get("ORCHARD_WEIGHTS_FALLBACK", "random"),
            schedule=env.get("ORCHARD_SCHEDULE", "@daily").strip(),
            watch_schedule=env.get("ORCHARD_WATCH_SCHEDULE", "*/10 * * * *").strip(),
            aws_conn_id=env.get("ORCHARD_AWS_CONN_ID", "aws_default"),
            region=env.get("ORCHARD_AWS_REGION", "eu-west-1"),
            kms_key_id=env.get("ORCHARD_KMS_KEY_ID") or None,
            emr_release=env.get("ORCHARD_EMR_RELEASE", "emr-7.14.0"),
            emr_instance_type=env.get("ORCHARD_EMR_INSTANCE_TYPE", "m5.xlarge"),
            emr_core_instances=int(env.get("ORCHARD_EMR_CORE_INSTANCES", "2")),
            emr_core_spot=env.get("ORCHARD_EMR_CORE_SPOT", "false").strip().lower() in {"1", "true", "yes"},
            emr_service_role=env.get("ORCHARD_EMR_SERVICE_ROLE", "EMR_DefaultRole"),
            emr_instance_profile=env.get("ORCHARD_EMR_INSTANCE_PROFILE", "EMR_EC2_DefaultRole"),
            emr_subnet_id=env.get("ORCHARD_EMR_SUBNET_ID") or None,
            emr_security_configuration=env.get("ORCHARD_EMR_SECURITY_CONFIGURATION") or None,
            emr_log_uri=env.get("ORCHARD_EMR_LOG_URI") or f"{lake}/emr-logs/",
            emr_idle_timeout=int(env.get("ORCHARD_EMR_IDLE_TIMEOUT", "1800")),
            emr_root_volume_gb=int(env.get("ORCHARD_EMR_ROOT_VOLUME_GB", "32")),
            emr_poll_seconds=int(env.get("ORCHARD_EMR_POLL_SECONDS", "60")),
            s3_endpoint=env.get("ORCHARD_S3_ENDPOINT") or None,
        )

    @property
    def lake_on_s3(self) -> bool:
        """Whether the lake is an S3 (or S3-compatible, e.g. MinIO) prefix rather than a folder."""
        return self.lake.startswith("s3://")

    @property
    def spark_lake(self) -> str:
        """The lake as the Spark steps address it: EMR reads s3:// (EMRFS), local Spark needs s3a://."""
        if self.lake_on_s3 and self.target == "local":
            return "s3a://" + self.lake[len("s3://") :]
        return self.lake

    @property
    def encryption(self) -> dict[str, str]:
        """ExtraArgs of every S3 write: SSE-KMS with the configured key, else SSE-S3."""
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}


def normalise_uri(uri: str) -> str:
    """A lake location as a URI without a trailing slash; bare paths become file:// URIs.

    Taken literally, not percent-encoded: Hadoop paths and Spark's file listings use raw names.
    """
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if "://" not in uri:
        return "file://" + str(Path(uri).expanduser().resolve())
    return uri.rstrip("/")
