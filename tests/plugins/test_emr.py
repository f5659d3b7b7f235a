"""The EMR job-flow spec and steps as data, accepted by botocore (moto); the bootstrap script."""

from __future__ import annotations

import datetime
import gzip
import re
import shutil
import subprocess
import tomllib

import boto3
import pytest
from moto import mock_aws

from orchard.aws import emr
from orchard.config import Settings
from tests.conftest import ROOT

SETTINGS = Settings.from_env({"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://orchard-lake/prod"})


def spec(settings: Settings = SETTINGS, **overrides) -> dict:
    args = {
        "run_id": "manual__2026-11-21T10:00:00+00:00",
        "dag_id": "fruits_pipeline",
        "bootstrap_uri": "s3://orchard-lake/prod/artifacts/abc/install-python-deps.sh",
        "requirements_uri": "s3://orchard-lake/prod/artifacts/abc/requirements.txt",
        "wheelhouse_uri": "s3://orchard-lake/prod/artifacts/wheelhouse/123/wheelhouse.tar",
        "instance_type": "m5.xlarge",
        "core_instances": 2,
    }
    return emr.job_flow_spec(settings, **{**args, **overrides})


@pytest.mark.backs("an Airflow task killed mid-run", "every S3 write encrypted", "EMR without SSH")
def test_spec_defaults():
    flow = spec()
    assert flow["ReleaseLabel"] == "emr-7.14.0"
    assert flow["Applications"] == [{"Name": "Spark"}, {"Name": "Hadoop"}]
    assert flow["LogUri"] == "s3://orchard-lake/prod/emr-logs/"
    assert flow["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert flow["StepConcurrencyLevel"] == 1
    assert flow["VisibleToAllUsers"] is True
    assert flow["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert "Ec2KeyName" not in flow["Instances"]
    assert flow["BootstrapActions"] == [
        {
            "Name": "install-python-deps",
            "ScriptBootstrapAction": {
                "Path": "s3://orchard-lake/prod/artifacts/abc/install-python-deps.sh",
                "Args": [
                    "s3://orchard-lake/prod/artifacts/abc/requirements.txt",
                    "s3://orchard-lake/prod/artifacts/wheelhouse/123/wheelhouse.tar",
                ],
            },
        }
    ]
    groups = {g["InstanceRole"]: g for g in flow["Instances"]["InstanceGroups"]}
    assert groups["MASTER"]["InstanceCount"] == 1
    assert (groups["CORE"]["InstanceCount"], groups["CORE"]["Market"]) == (2, "ON_DEMAND")
    spark_env = flow["Configurations"][0]["Configurations"][0]["Properties"]
    assert spark_env["PYSPARK_PYTHON"] == "/usr/bin/python3.11"
    tags = {t["Key"]: t["Value"] for t in flow["Tags"]}
    assert tags == {
        "project": "orchard",
        "dag_id": "fruits_pipeline",
        "dag_run_id": "manual__2026-11-21T10:00:00+00:00",
        "for-use-with-amazon-emr-managed-policies": "true",  # the v2 service role needs it
    }
    assert (flow["ServiceRole"], flow["JobFlowRole"]) == ("EMR_DefaultRole", "EMR_EC2_DefaultRole")
    assert "SecurityConfiguration" not in flow
    # No emrfs-site encryption: the steps' writes take the bucket's default, like every other write.
    assert not [c for c in flow["Configurations"] if c["Classification"] == "emrfs-site"]


def test_spec_encrypts_step_output_with_the_kms_key_when_configured():
    settings = Settings.from_env(
        {"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://b/l", "ORCHARD_KMS_KEY_ID": "k-1"}
    )
    emrfs = next(c for c in spec(settings)["Configurations"] if c["Classification"] == "emrfs-site")
    assert emrfs["Properties"]["fs.s3.serverSideEncryption.kms.keyId"] == "k-1"


def test_spec_options_from_configuration():
    settings = Settings.from_env(
        {
            "ORCHARD_TARGET": "emr",
            "ORCHARD_LAKE": "s3://b/l",
            "ORCHARD_EMR_CORE_SPOT": "true",
            "ORCHARD_EMR_SUBNET_ID": "subnet-123",
            "ORCHARD_EMR_SECURITY_CONFIGURATION": "orchard-at-rest",
            "ORCHARD_EMR_RELEASE": "emr-7.9.0",
            "ORCHARD_EMR_IDLE_TIMEOUT": "600",
        }
    )
    flow = spec(settings, instance_type="r5.2xlarge", core_instances=5)
    core = flow["Instances"]["InstanceGroups"][1]
    assert (core["Market"], core["InstanceType"], core["InstanceCount"]) == ("SPOT", "r5.2xlarge", 5)
    assert flow["Instances"]["Ec2SubnetId"] == "subnet-123"
    assert flow["SecurityConfiguration"] == "orchard-at-rest"
    assert flow["ReleaseLabel"] == "emr-7.9.0"
    assert flow["AutoTerminationPolicy"] == {"IdleTimeout": 600}


def test_emr_target_needs_an_s3_lake():
    with pytest.raises(ValueError, match="needs an s3:// ORCHARD_LAKE"):
        Settings.from_env({"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "/tmp/lake"})


def test_spark_step_is_a_client_mode_spark_submit_under_a_time_limit():
    step = emr.spark_step(
        "orchard-pca", "s3://b/a/pca.py", ["--k", "5"], py_files="s3://b/a/orchard_jobs.zip", time_limit=900
    )
    assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    args = step["HadoopJarStep"]["Args"]
    # The cluster itself ends the step after its time limit, whatever Airflow does.
    assert args[:3] == ["timeout", "--kill-after=60", "900"]
    assert args[3:8] == ["spark-submit", "--deploy-mode", "client", "--py-files", "s3://b/a/orchard_jobs.zip"]
    assert args[-3:] == ["s3://b/a/pca.py", "--k", "5"]
    confs = dict(a.split("=", 1) for a in args[args.index("--conf") : -3] if a != "--conf")
    assert confs["spark.pyspark.python"] == "/usr/bin/python3.11"
    assert confs["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
    # The executors are sized per instance type in the cluster's spark-defaults, not here.
    assert "spark.executor.cores" not in confs
    # The preloading daemon is local only: executors get the jobs' modules per task (--py-files).
    assert "spark.python.daemon.module" not in confs


def test_the_time_limit_is_the_sensors_wait_plus_a_grace_rendered_from_the_image_count():
    import jinja2

    template = emr.time_limit_template("upload_images", base_seconds=2700, seconds_per_image=0.1)
    assert (
        template
        == "{{ step_time_limit(ti.xcom_pull(task_ids='upload_images', key='image_count'), 2700, 0.1) }}"
    )

    class TaskInstance:
        def xcom_pull(self, task_ids: str, key: str) -> int:
            return {("upload_images", "image_count"): 22688}[task_ids, key]

    rendered = jinja2.Template(template).render(ti=TaskInstance(), step_time_limit=emr.step_time_limit)
    assert int(rendered) == 2700 + 2269 + emr.TIME_LIMIT_GRACE


def gib(value: str) -> float:
    return int(value[:-1]) / (1 if value.endswith("g") else 1024)


@pytest.mark.parametrize(
    ("instance_type", "vcpu", "memory_gb", "slots"),
    [
        ("m5.xlarge", 4, 16, 4),  # the default: 12,288 MB for YARN
        ("m5.2xlarge", 8, 32, 8),
        ("m6g.xlarge", 4, 16, 4),  # Graviton: 11,712 MB
        ("c5.xlarge", 4, 8, 2),  # 6,144 MB: fewer slots, so their workers fit beside a 2 GiB heap
        ("c6g.xlarge", 4, 8, 1),  # 5,632 MB: one slot
        ("z9.unlisted", 4, 8, 1),  # not in the table: the lowest listed share of its memory
    ],
)
def test_executors_fit_yarn_on_each_instance_type(instance_type, vcpu, memory_gb, slots):
    from orchard.aws import sizing

    yarn_mb = sizing.yarn_memory_mb(instance_type, memory_gb)
    conf = sizing.executor_sizing(vcpu, yarn_mb)
    assert conf is not None
    cores, overhead = int(conf["spark.executor.cores"]), gib(conf["spark.executor.memoryOverhead"])
    assert cores == slots
    # Every worker at its measured peak with 50 % to spare, and 1 GiB for the JVM's off-heap use.
    assert overhead >= cores * sizing.WORKER_PEAK_GIB * 1.5 + 1.0
    heap_mb = gib(conf["spark.executor.memory"]) * 1024
    assert sizing.MIN_HEAP_MB <= heap_mb <= sizing.EXECUTOR_HEAP_GIB * 1024
    # Executor container and the client-mode application master (512m + 384m) fit YARN's memory.
    assert heap_mb + overhead * 1024 + 512 + 384 <= yarn_mb
    spec_conf = next(
        c["Properties"]
        for c in spec(instance_type=instance_type, vcpu=vcpu, memory_gb=memory_gb)["Configurations"]
        if c["Classification"] == "spark-defaults"
    )
    assert {k: spec_conf[k] for k in conf} == conf


def test_a_type_that_cannot_host_an_executor_is_refused_before_the_cluster():
    from orchard.aws import sizing

    assert sizing.executor_sizing(2, sizing.yarn_memory_mb("t3.small", 2.0)) is None
    with pytest.raises(ValueError, match="cannot host one executor: pick a larger type"):
        spec(instance_type="t3.small", vcpu=2, memory_gb=2.0)


def test_step_timeout_grows_with_images():
    assert emr.step_timeout(0, base_seconds=600, seconds_per_image=0.1) == 600
    assert emr.step_timeout(100_000, base_seconds=600, seconds_per_image=0.1) == 10_600
    assert emr.first_step_id("add_pca_step") == "{{ ti.xcom_pull(task_ids='add_pca_step')[0] }}"


@mock_aws
def test_botocore_and_moto_accept_the_spec_and_steps():
    client = boto3.client("emr", region_name="eu-west-1")
    cluster_id = client.run_job_flow(**spec())["JobFlowId"]
    step = emr.spark_step(
        "orchard-featurize",
        "s3://b/a/featurize.py",
        ["--limit", "0"],
        py_files="s3://b/a/j.zip",
        time_limit=60,
    )
    step_ids = client.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"]
    cluster = client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.14.0"
    assert cluster["LogUri"] == "s3://orchard-lake/prod/emr-logs/"
    described = client.describe_step(ClusterId=cluster_id, StepId=step_ids[0])["Step"]
    assert described["Config"]["Args"][-2:] == ["--limit", "0"]


def test_bootstrap_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make test installs it with apt when run as root)")
    script = ROOT / "bootstrap" / "install-python-deps.sh"
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert not re.search(r"(?i)(aws_secret|aws_access_key|password)", text)


def test_bootstrap_requirements_use_the_project_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(r.split("==", 1) for r in project)
    locked = (ROOT / "constraints.txt").read_text().splitlines()
    pins |= {n.lower().replace("_", "-"): v for n, _, v in (line.partition("==") for line in locked) if v}
    nodes = [
        line.split("==", 1)
        for line in (ROOT / "bootstrap" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert nodes, "bootstrap/requirements.txt is empty"
    for name, version in nodes:
        assert "==" not in version and version, name
        if name in pins:
            assert pins[name] == version, name
    assert {"onnxruntime", "pillow", "pyarrow", "pandas", "numpy"} <= {n for n, _ in nodes}
    assert "pyspark" not in {n for n, _ in nodes}  # EMR brings its own Spark
    # The model arrives converted to ONNX: no node installs TensorFlow (nor Keras, nor tf2onnx).
    assert not {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx"} & {n for n, _ in nodes}


def started_step(cluster_id: str) -> None:
    """Give the cluster's step in moto the start time a step that ran has (moto leaves it unset)."""
    import datetime

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    (step,) = emr_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"].clusters[cluster_id].steps
    step.start_date_time = datetime.datetime.now(datetime.UTC)


@mock_aws
@pytest.mark.backs("an EMR step fails before EMR has uploaded its log (it does so about every five minutes)")
def test_a_failed_step_whose_stderr_is_not_uploaded_yet_says_where_it_will_be(capfd, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.create_bucket(Bucket="orchard-lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    client = boto3.client("emr", region_name="eu-west-1")
    cluster_id = client.run_job_flow(**spec())["JobFlowId"]
    step = emr.spark_step("orchard-pca", "s3://b/a/pca.py", [], py_files="s3://b/a/j.zip", time_limit=60)
    (step_id,) = client.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"]
    started_step(cluster_id)  # it ran, and failed
    sensor = emr.ImageStepSensor(
        task_id="wait_pca", job_flow_id=cluster_id, step_id=step_id, images=1,
        log_uri="s3://orchard-lake/prod/emr-logs/", base_seconds=60, seconds_per_image=0,
        log_wait_attempts=2, log_wait_delay=0.01, aws_conn_id=None, region_name="eu-west-1",
    )  # fmt: skip
    sensor.log_failure()
    logged = capfd.readouterr().out
    where = f"s3://orchard-lake/prod/emr-logs/{cluster_id}/steps/{step_id}/stderr.gz"
    assert f"It will be at {where}" in logged
    assert "EMR uploads step logs about every five minutes" in logged
    assert f"aws s3 cp {where} - | gunzip | tail -n 40" in logged

    # Once EMR has uploaded it, the tail itself is printed.
    s3.put_object(Bucket="orchard-lake", Key=where.removeprefix("s3://orchard-lake/"),
                  Body=gzip.compress(b"INFO start\nValueError: the real reason\n"))  # fmt: skip
    sensor.log_failure()
    assert "ValueError: the real reason" in capfd.readouterr().out


def run_cluster(emr_client, core_type="m5.2xlarge", core_count=2) -> str:
    """A cluster with a 1-node primary group (m5.xlarge) and a Spot core group."""
    flow = emr_client.run_job_flow(
        Name="orchard-cost",
        ReleaseLabel="emr-7.14.0",
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        Instances={
            "InstanceGroups": [
                {
                    "Name": "primary",
                    "InstanceRole": "MASTER",
                    "InstanceType": "m5.xlarge",
                    "InstanceCount": 1,
                },
                {
                    "Name": "core",
                    "InstanceRole": "CORE",
                    "InstanceType": core_type,
                    "InstanceCount": core_count,
                    "Market": "SPOT",
                },
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
    )
    return flow["JobFlowId"]


def terminated_cluster(client, hours: float, normalized: int) -> str:
    """A cluster run and terminated, with what moto does not model: a lifetime of `hours` and AWS's
    normalized instance-hours."""
    import datetime

    from tests.emr_moto import clusters

    cluster_id = run_cluster(client)
    client.terminate_job_flows(JobFlowIds=[cluster_id])
    cluster = clusters()[cluster_id]
    cluster.normalized_instance_hours = normalized
    cluster.end_datetime = cluster.creation_datetime + datetime.timedelta(hours=hours)
    return cluster_id


@mock_aws
def test_cluster_cost_of_a_terminated_cluster_with_a_price_per_type_and_a_default():
    client = boto3.client("emr", region_name="eu-west-1")
    cluster_id = terminated_cluster(client, hours=0.5, normalized=24)

    cost = emr.cluster_cost(client, cluster_id, price_per_hour=0.3, prices={"m5.2xlarge": 0.5})

    assert cost["state"] == "TERMINATED"
    assert cost["lifetime_seconds"] == pytest.approx(1800, abs=1)
    assert cost["normalized_instance_hours"] == 24
    assert sorted((g["role"], g["type"], g["count"], g["market"]) for g in cost["instances"]) == [
        ("CORE", "m5.2xlarge", 2, "SPOT"),
        ("MASTER", "m5.xlarge", 1, "ON_DEMAND"),
    ]
    estimate = cost["estimate"]
    # 1 x 0.5 h x 0.3 (the default price) + 2 x 0.5 h x 0.5 (m5.2xlarge's own) = 0.65
    assert estimate["cost"] == pytest.approx(0.65, abs=1e-3)
    assert estimate["instance_hours"] == pytest.approx(1.5, abs=1e-3)
    assert estimate["prices"] == {"m5.2xlarge": 0.5, "m5.xlarge": 0.3}
    assert cost["missing_prices"] == []


@mock_aws
def test_cluster_cost_without_prices_or_with_a_type_missing_from_the_table():
    client = boto3.client("emr", region_name="eu-west-1")
    cluster_id = terminated_cluster(client, hours=2, normalized=48)

    unpriced = emr.cluster_cost(client, cluster_id)
    assert unpriced["estimate"] is None and unpriced["missing_prices"] == []
    assert unpriced["normalized_instance_hours"] == 48

    partial = emr.cluster_cost(client, cluster_id, prices={"m5.xlarge": 0.24})
    assert partial["estimate"] is None
    assert partial["missing_prices"] == ["m5.2xlarge"]

    flat = emr.cluster_cost(client, cluster_id, price_per_hour=0.25)
    assert flat["estimate"]["cost"] == pytest.approx(3 * 2 * 0.25, abs=1e-3)


@mock_aws
def test_cluster_cost_of_a_cluster_not_terminated_yet_is_its_cost_so_far():
    client = boto3.client("emr", region_name="eu-west-1")
    cluster_id = run_cluster(client, core_type="m5.xlarge", core_count=1)

    cost = emr.cluster_cost(client, cluster_id, price_per_hour=1.0, wait=(0, 1))  # still running

    assert cost["ended"] is None
    assert 0 <= cost["lifetime_seconds"] < 60
    assert cost["estimate"]["cost"] == pytest.approx(2 * cost["lifetime_seconds"] / 3600, rel=0.05, abs=1e-3)


class TaskInstanceXcoms:
    """What the operators' links need of a task instance: somewhere to push their XComs."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def active_clusters(client) -> list[str]:
    pages = client.get_paginator("list_clusters").paginate(ClusterStates=emr.ACTIVE_CLUSTER_STATES)
    return sorted(c["Id"] for page in pages for c in page["Clusters"])


@pytest.mark.backs("an Airflow task killed mid-run")
@mock_aws
def test_a_retried_create_cluster_re_attaches_to_the_cluster_of_its_run():
    client = boto3.client("emr", region_name="eu-west-1")

    def try_create(job_flow: dict) -> str:
        # Each try builds the operator afresh, as a retry or a cleared task does.
        op = emr.RunClusterOperator(
            task_id="create_cluster", job_flow_overrides=job_flow, emr_conn_id=None, region_name="eu-west-1"
        )
        return op.execute({"ti": TaskInstanceXcoms()})

    first = try_create(spec())
    assert try_create(spec()) == first  # the second try finds the first try's cluster
    assert active_clusters(client) == [first]
    # Another run of the DAG (its own run id and tags) gets its own cluster.
    other = try_create(spec(run_id="scheduled__2026-11-22T00:00:00+00:00"))
    assert active_clusters(client) == sorted([first, other])
    # A cluster that has ended is not re-attached to: the next try of its run starts a new one.
    client.terminate_job_flows(JobFlowIds=[first])
    again = try_create(spec())
    assert again not in {first, other}
    # A cluster of the same name with another DAG's tag is not taken for this run's; nor is any
    # cluster for a spec without the run's tags.
    assert emr.run_cluster(client, spec(dag_id="another_dag")) is None
    untagged = {**spec(), "Tags": [t for t in spec()["Tags"] if t["Key"] != "dag_run_id"]}
    assert emr.run_cluster(client, untagged) is None


@pytest.mark.backs("an Airflow task killed mid-run")
@mock_aws
def test_a_retried_add_steps_returns_the_step_already_on_the_cluster():
    client = boto3.client("emr", region_name="eu-west-1")
    cluster_id = client.run_job_flow(**spec())["JobFlowId"]

    def try_add(args: list[str]) -> list[str]:
        step = emr.spark_step(
            "orchard-featurize", "s3://b/a/featurize.py", args, py_files="s3://b/a/j.zip", time_limit=60
        )
        op = emr.RunStepsOperator(
            task_id="add_featurize_step", job_flow_id=cluster_id, steps=[step], region_name="eu-west-1"
        )
        return op.execute({"ti": TaskInstanceXcoms()})

    first = try_add(["--attempt", "1"])
    assert try_add(["--attempt", "1"]) == first  # the retried task's sensor waits on this step
    steps = client.list_steps(ClusterId=cluster_id)["Steps"]
    assert [s["Id"] for s in steps] == first
    # A step with other arguments (another attempt's paths) is a new step.
    second = try_add(["--attempt", "2"])
    assert second != first
    assert len(client.list_steps(ClusterId=cluster_id)["Steps"]) == 2


@pytest.mark.backs("the cluster itself fails (bootstrap, roles, KMS, capacity) and its steps are cancelled")
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "BOOTSTRAP_FAILURE",
            "On the master instance (i-0abc), bootstrap action 1 returned a non-zero return code",
        ),
        ("VALIDATION_ERROR", "Service role EMR_DefaultRole has insufficient EC2 permissions"),
        ("INSTANCE_FAILURE", "Instance i-0def failed: The requested number of instances exceeds your quota"),
    ],
)
def test_steps_cancelled_by_a_failed_cluster_are_explained_by_the_cluster(code, message):
    """botocore's Stubber checks these responses against EMR's service model; S3 is never asked for a
    stderr that cannot exist (the stubbed S3 client has no response to give)."""
    from botocore.stub import Stubber

    emr_client = boto3.client("emr", region_name="eu-west-1")
    s3_client = boto3.client("s3", region_name="eu-west-1")
    created = datetime.datetime(2026, 12, 5, 8, 0, tzinfo=datetime.UTC)
    with Stubber(emr_client) as emr_stub, Stubber(s3_client):
        emr_stub.add_response(
            "describe_step",
            {"Step": {"Id": "s-1", "Name": "orchard-featurize", "Status": {
                "State": "CANCELLED", "Timeline": {"CreationDateTime": created}}}},
            {"ClusterId": "j-1", "StepId": "s-1"},
        )  # fmt: skip
        emr_stub.add_response(
            "describe_cluster",
            {"Cluster": {"Id": "j-1", "Name": "orchard-run", "Status": {
                "State": "TERMINATED_WITH_ERRORS", "StateChangeReason": {"Code": code, "Message": message}}}},
            {"ClusterId": "j-1"},
        )  # fmt: skip
        lines = emr.failure_report(
            emr_client, s3_client, "s3://lake/prod/emr-logs/", "j-1", "s-1", attempts=1
        )

    text = "\n".join(lines)
    assert "EMR step s-1 (orchard-featurize) is CANCELLED" in text
    assert f"EMR cluster j-1 is TERMINATED_WITH_ERRORS: {code}: {message}" in text
    assert "never started, so it has no stderr" in text
    assert "aws s3 ls --recursive s3://lake/prod/emr-logs/j-1/node/" in text
    assert "not in S3 yet" not in text


def test_the_cost_waits_for_a_terminating_cluster_to_end():
    """The report asks right after the teardown: a TERMINATING cluster is waited on (boto3's
    ClusterTerminated waiter) and priced to its end, shut-down included. botocore's Stubber checks
    the responses against EMR's model (moto terminates at once)."""
    from botocore.stub import Stubber

    client = boto3.client("emr", region_name="eu-west-1")
    created = datetime.datetime(2026, 12, 5, 8, 0, tzinfo=datetime.UTC)
    ended = created + datetime.timedelta(minutes=30)

    def described(state: str, end: datetime.datetime | None) -> dict:
        timeline = {"CreationDateTime": created, **({"EndDateTime": end} if end else {})}
        return {
            "Cluster": {"Id": "j-1", "Name": "orchard-run", "Status": {"State": state, "Timeline": timeline}}
        }

    groups = {
        "InstanceGroups": [
            {"InstanceGroupType": role, "InstanceType": "m5.xlarge", "RequestedInstanceCount": count}
            for role, count in (("MASTER", 1), ("CORE", 2))
        ]
    }
    with Stubber(client) as stub:
        stub.add_response("describe_cluster", described("TERMINATING", None), {"ClusterId": "j-1"})
        stub.add_response("describe_cluster", described("TERMINATED", ended), {"ClusterId": "j-1"})
        stub.add_response("describe_cluster", described("TERMINATED", ended), {"ClusterId": "j-1"})
        stub.add_response("list_instance_groups", groups, {"ClusterId": "j-1"})
        cost = emr.cluster_cost(client, "j-1", price_per_hour=0.262, wait=(0, 5))
        stub.assert_no_pending_responses()

    assert (cost["state"], cost["ended"]) == ("TERMINATED", ended.isoformat())
    assert cost["lifetime_seconds"] == 1800
    assert cost["estimate"]["cost"] == pytest.approx(3 * 0.5 * 0.262)
