"""Settings: typed parsing of the ORCHARD_* variables, and errors that name the variable."""

from __future__ import annotations

import json

import pydantic
import pytest

from orchard.config import PROJECT_ROOT, Settings

EMR = {"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://b/l"}


TRUE = ["1", "true", "yes", " TRUE "]
FALSE = ["0", "false", "no"]


@pytest.mark.parametrize(("value", "expected"), [(v, True) for v in TRUE] + [(v, False) for v in FALSE])
def test_booleans_parse(value, expected):
    assert Settings.from_env({"ORCHARD_EMR_CORE_SPOT": value}).emr_core_spot is expected


def test_integers_parse():
    settings = Settings.from_env({"ORCHARD_EMR_CORE_INSTANCES": "5", "ORCHARD_EMR_POLL_SECONDS": " 30"})
    assert (settings.emr_core_instances, settings.emr_poll_seconds) == (5, 30)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ORCHARD_EMR_CORE_INSTANCES", "abc", "valid integer"),
        ("ORCHARD_EMR_IDLE_TIMEOUT", "1.5", "valid integer"),
        ("ORCHARD_EMR_CORE_SPOT", "maybe", "valid boolean"),
        ("ORCHARD_TARGET", "gpu", "'local' or 'emr'"),
        ("ORCHARD_EMR_PRICE_PER_HOUR", "-0.2", "greater than or equal to 0"),
        ("ORCHARD_EMR_PRICES", "m5.xlarge=0.24", "not a JSON object of prices"),
        ("ORCHARD_EMR_PRICES", '{"m5.xlarge": -1}', "negative prices for m5.xlarge"),
    ],
)
def test_a_bad_value_names_its_variable(name, value, message):
    with pytest.raises(ValueError, match=rf"^{name}='{value}': .*{message}") as raised:
        Settings.from_env({name: value})
    assert not isinstance(raised.value, pydantic.ValidationError)  # our message, not pydantic's


def test_emr_prices_default_to_none_and_parse_from_json():
    assert (Settings.from_env({}).emr_price_per_hour, Settings.from_env({}).emr_prices) == (None, {})
    settings = Settings.from_env(
        {"ORCHARD_EMR_PRICE_PER_HOUR": "0.3", "ORCHARD_EMR_PRICES": '{"r5.xlarge": 0.5}'}
    )
    assert (settings.emr_price_per_hour, settings.emr_prices) == (0.3, {"r5.xlarge": 0.5})
    blank = Settings.from_env({"ORCHARD_EMR_PRICE_PER_HOUR": "", "ORCHARD_EMR_PRICES": " "})
    assert (blank.emr_price_per_hour, blank.emr_prices) == (None, {})


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(ValueError, match="ORCHARD_EMR_CORE_INSTANCES='x'") as raised:
        Settings.from_env({"ORCHARD_EMR_CORE_INSTANCES": "x", "ORCHARD_EMR_ROOT_VOLUME_GB": "big"})
    assert "ORCHARD_EMR_ROOT_VOLUME_GB='big'" in str(raised.value)


def test_empty_optional_ids_mean_none_and_empty_paths_the_default():
    settings = Settings.from_env(
        {
            **EMR,
            "ORCHARD_KMS_KEY_ID": "",
            "ORCHARD_EMR_SUBNET_ID": "",
            "ORCHARD_EMR_SECURITY_CONFIGURATION": "",
            "ORCHARD_S3_ENDPOINT": "",
            "ORCHARD_EMR_LOG_URI": "",
            "ORCHARD_SOURCE": "",
            "ORCHARD_SPARK_JOBS": "",
        }
    )
    assert (settings.kms_key_id, settings.emr_subnet_id, settings.s3_endpoint) == (None, None, None)
    assert settings.emr_security_configuration is None
    assert settings.emr_log_uri == "s3://b/l/emr-logs/"
    assert settings.default_source == str(PROJECT_ROOT / "data" / "sample")
    assert settings.spark_jobs_dir == str(PROJECT_ROOT / "spark_jobs")
    assert Settings.from_env({"ORCHARD_LAKE": ""}).lake == f"file://{PROJECT_ROOT}/lake"
    # An empty schedule is a schedule of its own (manual runs only), not the default.
    assert not Settings.from_env({"ORCHARD_SCHEDULE": ""}).schedule


def test_every_variable_is_read():
    values = {
        "target": "emr",
        "lake": "s3://bucket/prefix",
        "emr_core_spot": True,
        "emr_core_instances": 7,
        "emr_sizing": "auto",
        "emr_target_minutes": 7.5,
        "emr_max_core_instances": 7,
        "emr_idle_timeout": 7,
        "emr_root_volume_gb": 7,
        "emr_poll_seconds": 7,
        "emr_price_per_hour": 0.25,
        "emr_prices": {"m5.xlarge": 0.24},
        "s3_encryption": "sse-s3",
        "pca_mode": "reuse",
        "retain_attempts": 7,
        "retain_days": 7,
        "notify_email": ["team@example.org"],
    }
    variables = Settings.variables()
    assert len(set(variables.values())) == len(variables)
    assert all(name.startswith("ORCHARD_") for name in variables.values())
    expected = {field: values.get(field, f"value-of-{field}") for field in variables}
    env = {
        variables[field]: json.dumps(value)
        if isinstance(value, dict)
        else ",".join(value)
        if isinstance(value, list)
        else str(value).lower()
        for field, value in expected.items()
    }
    settings = Settings.from_env(env)
    assert {field: getattr(settings, field) for field in variables} == expected
    assert {"ORCHARD_AWS_REGION", "ORCHARD_SOURCE", "ORCHARD_SPARK_JOBS"} <= set(variables.values())


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("ORCHARD_EMR_CORE_INSTANCES", "4")
    monkeypatch.setenv("ORCHARD_AWS_REGION", "us-east-1")
    settings = Settings.from_env()
    assert (settings.emr_core_instances, settings.region) == (4, "us-east-1")
    assert Settings.from_env({}).emr_core_instances == 2  # a given mapping replaces the environment


def test_settings_are_immutable():
    settings = Settings.from_env({})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.weights = "random"
