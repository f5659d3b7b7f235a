"""The docker-compose stack, checked statically, and run without containers.

No Docker engine runs here: the compose file is validated against the Compose specification and
read as data; its configuration then drives the DAG with moto's threaded server as MinIO.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests
import yaml
from moto.server import ThreadedMotoServer

from orchard.config import Settings
from orchard.samples import generate
from orchard.schedule import dag_schedule
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "airflow" / "Dockerfile"
# The only credentials the stack may carry: documented local-only defaults (README, .env.example).
LOCAL_DEFAULTS = {
    "airflow", "admin", "orchard", "orchard-local-only", "orchard-local-only-jwt-secret", "",
    "orchard-local-only:Okfl5Q52OKnViRMZTbPixHYxD+7ZfTCiE63K+T2cnEA=",  # MinIO's SSE-S3 key
}  # fmt: skip
DEFAULT = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


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


def test_docker_compose_config_when_available():
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode
    ):
        pytest.skip(
            "the docker compose plugin is not installed here; the file is validated against the spec instead"
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_image_is_pinned(compose):
    images = {name: svc.get("image") for name, svc in compose["services"].items()}
    images["x-airflow-common"] = compose["x-airflow-common"]["image"]
    for name, image in images.items():
        assert image, name
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
    base = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert base == "apache/airflow:3.3.2-python3.11"


def test_the_services_the_pipeline_needs_exist_with_healthchecks(compose):
    services = compose["services"]
    assert {
        "postgres", "minio", "minio-init", "airflow-init", "airflow-apiserver",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    } <= set(services)  # fmt: skip
    for name in ("postgres", "minio", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert services[name]["healthcheck"]["test"], name
    assert services["airflow-scheduler"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["airflow-scheduler"]["depends_on"]["airflow-init"] == {
        "condition": "service_completed_successfully"
    }
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    mounts = {v.split(":")[1] for v in compose["x-airflow-common"]["volumes"]}
    assert {
        "/opt/airflow/dags",
        "/opt/airflow/plugins",
        "/opt/airflow/spark_jobs",
        "/opt/airflow/bootstrap",
    } <= mounts


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


def test_the_stack_runs_the_pipeline_only_when_triggered(compose):
    # DAGs start unpaused, so the default @daily would start a run as soon as the stack is up.
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
    assert env["ORCHARD_SCHEDULE"] == "${ORCHARD_SCHEDULE:-none}"
    settings = Settings.from_env(common_env(compose))
    assert settings.schedule == "none"
    assert dag_schedule(settings) is None
    assert Settings.from_env({}).schedule == "@daily"  # the choice is the stack's, not the default


def test_no_secret_other_than_the_local_defaults(compose):
    text = COMPOSE.read_text()
    for name, default in DEFAULT.findall(text):
        if re.search(r"PASSWORD|SECRET|KEY|USER", name):
            assert default in LOCAL_DEFAULTS, f"{name} defaults to {default!r}"
    for match in re.finditer(r"(?im)^\s*([A-Z_]*(PASSWORD|SECRET)[A-Z_]*):\s*(\S.*)$", text):
        assert match.group(3).startswith("${"), f"{match.group(1)} is set literally"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


def test_dockerfile_jars_match_the_hadoop_inside_pyspark():
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (client,) = jars.glob("hadoop-client-api-*.jar")
    hadoop = client.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG HADOOP_VERSION=(\S+)$", text, re.M).group(1) == hadoop
    assert re.search(r"^ARG AWS_SDK_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert "sha1sum -c" in text  # downloads are checked
    assert "hadoop-aws-${HADOOP_VERSION}.jar" in text


def test_the_image_builds_the_local_spark_home_it_names(tmp_path):
    import pyspark

    text = DOCKERFILE.read_text()
    home = re.search(r"^ENV ORCHARD_SPARK_HOME=(\S+)$", text, re.M).group(1)
    assert home.startswith("/home/airflow/")  # written at build time by the image's user
    assert text.index("ENV ORCHARD_SPARK_HOME=") < text.index("RUN python -m orchard.spark_home")
    assert text.index('fetch "org/apache/hadoop/hadoop-aws') < text.index("RUN python -m orchard.spark_home")
    # The command the image runs, here with the home in a temporary folder.
    built = tmp_path / "orchard-spark-home"
    done = subprocess.run(
        [sys.executable, "-m", "orchard.spark_home"],
        env={"PATH": "/usr/bin:/bin", "ORCHARD_SPARK_HOME": str(built)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (built / "jars").resolve() == (Path(pyspark.__file__).parent / "jars").resolve()


@pytest.fixture
def minio_stand_in(monkeypatch, compose):
    """moto's threaded server in MinIO's place, and the compose stack's settings pointed at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(f"{url}/moto-api/reset", timeout=10)  # moto's backends are process-wide
    for key, value in common_env(compose).items():
        if key.startswith(("ORCHARD_", "AIRFLOW_CONN_", "AWS_")):
            monkeypatch.setenv(key, value.replace("http://minio:9000", url))
    monkeypatch.setenv("ORCHARD_SPARK_JOBS", str(ROOT / "spark_jobs"))
    monkeypatch.setenv("AIRFLOW_CONN_ORCHARD_SPARK", '{"conn_type": "spark", "host": "local[2]"}')
    from orchard import s3

    s3.main(["create-bucket"])
    yield boto3.client("s3", endpoint_url=url, region_name=Settings.from_env().region)
    server.stop()


def s3a_connector_installed() -> bool:
    import pyspark

    return any((Path(pyspark.__file__).parent / "jars").glob("hadoop-aws-*.jar"))


def test_the_dag_runs_with_the_stack_configuration_without_containers(airflow_db, minio_stand_in, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    source = tmp_path / "sample"
    generate(source, per_class=2, seed=4)
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["fruits_pipeline"]
    spark_works = s3a_connector_installed()
    run = dag.test(
        run_conf={"source": str(source), "weights": "random"},
        # Without the s3a jars Spark cannot read the lake: the Spark steps, export and report are not run.
        mark_success_pattern=None if spark_works else "^(featurize|pca|export_csv|report)$",
    )
    assert run.state == "success"
    bucket = Settings.from_env().lake.removeprefix("s3://").split("/")[0]
    keys = [
        o["Key"] for o in minio_stand_in.list_objects_v2(Bucket=bucket, Prefix="lake/images/")["Contents"]
    ]
    assert len(keys) == 12
    assert minio_stand_in.head_object(Bucket=bucket, Key=keys[0])["ServerSideEncryption"] == "AES256"
    if not spark_works:
        pytest.skip(
            "upload to the S3 stand-in verified; the Spark steps, the CSV export and the report were not "
            "run: pyspark "
            "ships no hadoop-aws/AWS SDK jars and Maven Central is unreachable here, so Spark cannot read "
            "s3a:// (the Docker image adds them)"
        )
    latest = json.loads(minio_stand_in.get_object(Bucket=bucket, Key="lake/latest.json")["Body"].read())
    assert latest["csv"].endswith("pcaFeatures.csv")
