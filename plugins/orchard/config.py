"""Orchard's settings: `ORCHARD_*` environment variables with defaults for the local target.

Each setting is declared once, with its type and default; the variable is `ORCHARD_` + the field's
name unless the field names another one (`validation_alias`). Read at DAG parse time, so this module
does no I/O beyond reading the environment.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from orchard.layout import LakeLayout
from orchard.uris import as_s3a, normalise_uri, on_s3

if TYPE_CHECKING:
    from orchard.clients import Encryption

PROJECT_ROOT = Path(__file__).resolve().parents[2]
Target = Literal["local", "emr"]
TARGETS: tuple[str, ...] = get_args(Target)
PREFIX = "ORCHARD_"


class Settings(BaseSettings):
    """Everything that differs between a laptop and a cluster; never edited in code."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, validate_default=True)

    target: Target = "local"
    lake: str = str(PROJECT_ROOT / "lake")
    default_source: str = Field(str(PROJECT_ROOT / "data" / "sample"), validation_alias="ORCHARD_SOURCE")
    spark_conn_id: str = "orchard_spark"
    spark_jobs_dir: str = Field(str(PROJECT_ROOT / "spark_jobs"), validation_alias="ORCHARD_SPARK_JOBS")
    pyspark_python: str = sys.executable
    spark_driver_memory: str = "2g"
    # The local steps' JVM class archive (`python -m orchard.dev.jvm_archive`, built by make demo and
    # make bench), beside the pyspark whose jars it holds; used when present. Empty: never.
    spark_class_archive: str = str(Path(sys.prefix) / "orchard-spark-classes.jsa")
    # The local steps' SPARK_HOME (`python -m orchard.spark.home`, built with the venv): pyspark's
    # scripts and jars without its zipped Python; used when present. Empty: never.
    spark_home: str = str(Path(sys.prefix) / "orchard-spark-home")
    weights: str = "imagenet"
    weights_fallback: str = "random"
    aws_conn_id: str = "aws_default"
    region: str = Field("eu-west-1", validation_alias="ORCHARD_AWS_REGION")
    # "@daily" (default), any cron expression or preset, "none" (manual runs only), or "asset":
    # a run whenever orchard_source_watch sees new or changed images in the source folder.
    schedule: str = "@daily"
    watch_schedule: str = "*/10 * * * *"
    # The header every S3 write sends (uploads, JSON, CSV, Spark's s3a, EMRFS): "bucket-default"
    # sends none, so the bucket's default encryption applies (SSE-S3 or SSE-KMS, whichever it is);
    # "sse-s3" sends AES256 (the stack's store, which has no bucket default). A KMS key id sends
    # SSE-KMS with that key whatever this says.
    s3_encryption: Literal["bucket-default", "sse-s3"] = "bucket-default"
    kms_key_id: str | None = None
    emr_release: str = "emr-7.14.0"
    emr_instance_type: str = "m5.xlarge"
    emr_core_instances: int = 2
    emr_core_spot: bool = False
    # Core nodes: "fixed" uses ORCHARD_EMR_CORE_INSTANCES (or the run's core_instances); "auto" the
    # count the run's plan predicts to finish within EMR_TARGET_MINUTES at the lowest predicted cost,
    # at most EMR_MAX_CORE_INSTANCES and within the vCPU quota left (orchard.planning).
    emr_sizing: Literal["fixed", "auto"] = "fixed"
    emr_target_minutes: float = Field(60.0, gt=0)
    emr_max_core_instances: int = Field(10, ge=1, le=50)
    emr_service_role: str = "EMR_DefaultRole"
    emr_instance_profile: str = "EMR_EC2_DefaultRole"
    emr_subnet_id: str | None = None
    emr_security_configuration: str | None = None
    # Empty: `{lake}/emr-logs/`.
    emr_log_uri: str = ""
    emr_idle_timeout: int = 1800
    emr_root_volume_gb: int = 32
    emr_poll_seconds: int = 60
    # What one instance-hour of a node costs (EC2 + the EMR charge), for the report's cost estimate;
    # ORCHARD_EMR_PRICES ({"m5.xlarge": 0.262, ...}, JSON; an example: the EC2 + EMR list prices of your
    # region are on their pricing pages) gives prices by instance type, which win.
    emr_price_per_hour: float | None = Field(None, ge=0)
    # Decoded here, not by pydantic-settings, so a malformed table gets an error naming the variable.
    emr_prices: Annotated[dict[str, float], NoDecode] = {}
    s3_endpoint: str | None = None
    # The engine's per-core rate and its CPU model, as `make bench` measured them: a plan's featurize
    # rate until the lake's history has a run on the same machine or instance type. Empty: none.
    engine_profile: str = str(PROJECT_ROOT / "bench" / "engine-profile.json")
    # The PCA basis of a run: "refit" fits it on the run's features (its component signs aligned
    # to the published basis), "reuse" projects them on the published basis (latest's pca_model).
    pca_mode: Literal["refit", "reuse"] = "refit"
    # Retention of the runs' outputs (the retention task, after each run's report): an attempt is
    # removed once it is neither among the newest RETAIN_ATTEMPTS nor younger than RETAIN_DAYS;
    # 0 turns a limit off, both 0 keep everything. latest's attempt and erasure records always stay.
    retain_attempts: int = Field(30, ge=0)
    retain_days: int = Field(90, ge=0)
    # Failure notifications, off unless one is set: e-mail to these comma-separated addresses
    # through an Airflow SMTP connection, and/or a POST of {"text": ...} to the URL of an Airflow
    # HTTP connection (a Slack or Teams incoming webhook: the URL, a secret, stays in the connection).
    notify_email: Annotated[list[str], NoDecode] = []
    notify_from: str | None = None
    notify_smtp_conn_id: str = "smtp_default"
    notify_webhook_conn_id: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `ORCHARD_*` variables (the process environment by default).

        Raises ValueError naming each variable that does not parse, e.g. `ORCHARD_EMR_CORE_INSTANCES='abc'`.
        """
        values = _MappingEnvSource(cls, os.environ if environ is None else environ)()
        try:
            return cls(**values)
        except ValidationError as error:
            raise ValueError(cls._describe(error)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `from_env` passes: its mapping replaces the process environment, never merges."""
        return (init_settings,)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """The environment variable of every field, by field name."""
        names = {}
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            names[name] = alias if isinstance(alias, str) else PREFIX + name.upper()
        return names

    @classmethod
    def _describe(cls, error: ValidationError) -> str:
        """One line per problem, each naming the variable and the value it had."""
        by_key = {**{v: v for v in cls.variables().values()}, **cls.variables()}
        lines = []
        for problem in error.errors(include_url=False):
            ctx_error = problem.get("ctx", {}).get("error")
            message = str(ctx_error) if problem["type"] == "value_error" and ctx_error else problem["msg"]
            loc = problem["loc"]
            if loc and str(loc[0]) in by_key:
                lines.append(f"{by_key[str(loc[0])]}={problem['input']!r}: {message}")
            else:
                lines.append(message)
        return "\n".join(lines)

    @field_validator("target", "schedule", "watch_schedule", "emr_core_spot", mode="before")
    @classmethod
    def _strip(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().lower() if info.field_name == "target" else value.strip()

    @field_validator(
        "lake",
        "default_source",
        "spark_jobs_dir",
        "pyspark_python",
        "kms_key_id",
        "emr_subnet_id",
        "emr_security_configuration",
        "s3_endpoint",
        "emr_price_per_hour",
        "notify_from",
        "notify_webhook_conn_id",
        mode="before",
    )
    @classmethod
    def _empty_means_default(cls, value: object, info: ValidationInfo) -> object:
        """A variable set to the empty string counts as unset."""
        if isinstance(value, str) and not value and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value

    @field_validator("lake")
    @classmethod
    def _normalise_lake(cls, value: str) -> str:
        return normalise_uri(value)

    @field_validator("notify_email", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        addresses = [part.strip() for part in value.split(",") if part.strip()]
        bad = [a for a in addresses if "@" not in a[1:-1]]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(bad)}")
        return addresses

    @field_validator("emr_prices", mode="before")
    @classmethod
    def _prices_from_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f'not a JSON object of prices such as {{"m5.xlarge": 0.262}} ({error})'
            ) from None

    @field_validator("emr_prices")
    @classmethod
    def _prices_are_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = sorted(name for name, price in value.items() if price < 0)
        if negative:
            raise ValueError(f"negative prices for {', '.join(negative)}")
        return value

    @field_validator("emr_log_uri")
    @classmethod
    def _log_uri_under_the_lake(cls, value: str, info: ValidationInfo) -> str:
        if value or "lake" not in info.data:
            return value
        return LakeLayout(info.data["lake"]).emr_logs

    @model_validator(mode="after")
    def _emr_needs_an_s3_lake(self) -> Settings:
        if self.target == "emr" and not self.lake_on_s3:
            raise ValueError(f"ORCHARD_TARGET=emr needs an s3:// ORCHARD_LAKE, got {self.lake!r}")
        return self

    @property
    def lake_on_s3(self) -> bool:
        """Whether the lake is an S3 (or S3-compatible: the stack's SeaweedFS) prefix, not a folder."""
        return on_s3(self.lake)

    @property
    def spark_lake(self) -> str:
        """The lake as the Spark steps address it: EMR reads s3:// (EMRFS), local Spark needs s3a://."""
        if self.lake_on_s3 and self.target == "local":
            return as_s3a(self.lake)
        return self.lake

    @property
    def encryption(self) -> Encryption:
        """ExtraArgs of every S3 write: SSE-KMS with the configured key, SSE-S3 when asked for, else
        none (the bucket's default encryption applies)."""
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        if self.s3_encryption == "sse-s3":
            return {"ServerSideEncryption": "AES256"}
        return {}


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )
