"""The emr target end to end against moto's threaded server, with the provider's real operators.

moto accepts EMR calls but never runs steps. `EmrStandIn` plays the cluster: it takes each step
exactly as submitted (staged script, --py-files zip, arguments) and spark-submits it in client
mode to a Spark standalone cluster the test starts (a master and two one-core workers, separate
processes), on a mirror of the bucket; it writes the outputs back to S3 and marks the step
COMPLETED; or marks it FAILED with a stderr log where the real EMR would put one. The workers'
Python cannot import orchard_jobs from the editable install, and records where each executor
imported it from: the test checks that it was the shipped zip.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from orchard import planning
from orchard.aws.emr import NODE_PYTHON
from orchard.dev.ui import stop_process_groups
from orchard.samples import generate
from tests import iam
from tests.conftest import ROOT
from tests.emr_moto import BUCKET, LAKE, SECRETS, WHEELHOUSE_KEY, clusters
from tests.imagefactory import truncated_jpeg

pytestmark = pytest.mark.e2e

STDERR_TAIL = "pyspark.errors.exceptions: planted failure for the test"
# Grants of the policy that no moto run exercises, and why they are there.
NOT_EXERCISED = {
    "ReadWriteTheLake:s3:AbortMultipartUpload": "clean-up when assembling pcaFeatures.csv fails",
    "PreflightReleaseAndInstanceTypes:ec2:DescribeSubnets": "preflight with ORCHARD_EMR_SUBNET_ID set",
    "UseTheLakeKeyOnlyWithSseKms:kms:GenerateDataKey": "writes with SSE-KMS (ORCHARD_KMS_KEY_ID)",
    "UseTheLakeKeyOnlyWithSseKms:kms:Decrypt": "reads and multipart uploads with SSE-KMS",
    "UseTheLakeKeyOnlyWithSseKms:kms:DescribeKey": "preflight with ORCHARD_KMS_KEY_ID set",
    "UseTheLakeKeyOnlyWithSseKms:kms:GetKeyPolicy": "preflight with ORCHARD_KMS_KEY_ID set",
    "PreflightTheVcpuQuota:ec2:DescribeInstanceTypes": "preflight while instances run in the region",
    "PreflightTheNodesKeyUse:iam:SimulatePrincipalPolicy": "preflight with a key its policy leaves to IAM",
}


def assert_no_secrets(*texts: str) -> None:
    """None of the configured secret values appears in the task logs (console and log files)."""
    files = [p.read_text(errors="replace") for p in Path(os.environ["AIRFLOW_HOME"]).rglob("*.log")]
    for text in [*texts, *files]:
        for secret in SECRETS:
            assert secret not in text


def check_policy(calls) -> list:
    """Every recorded call is allowed by the shipped policy, resource and conditions included."""
    requests_made = iam.requests_for(calls)
    assert requests_made, "no AWS call was recorded"
    refused = iam.refused(iam.airflow_policy(BUCKET, "lake"), requests_made)
    assert refused == [], "\n".join(refused)
    return requests_made


# Loaded by the workers' Python (PYTHONPATH): drops the editable install's import hook, so the
# executors can import orchard_jobs only from what spark-submit shipped (--py-files), and records
# where each import came from.
SITECUSTOMIZE = """
import os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                    and "__editable__" not in getattr(type(f), "__module__", "")]
sys.path[:] = [p for p in sys.path if os.path.abspath(p) not in {repo_dirs!r}]

class _Recorder:
    def find_spec(self, name, path=None, target=None):
        if name != "orchard_jobs":
            return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        with open(os.path.join(os.environ["ORCHARD_IMPORT_LOG"], str(os.getpid())), "a") as log:
            log.write(f"{{spec.origin if spec else None}}\\n")
        return spec

sys.meta_path.insert(0, _Recorder())
"""
# Sizing for the test's workers (1 core, 1 GiB each) in place of the m5.xlarge sizing of the steps.
STANDIN_SIZING = {
    "spark.executor.cores": "1",
    "spark.executor.memory": "512m",
    "spark.executor.memoryOverhead": "384m",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SPARK35_PYTHON = ROOT / ".venv-spark35" / "bin" / "python"


@pytest.fixture(params=["spark-4.2", "spark-3.5"])
def spark_line(request) -> dict:
    """The Spark the stand-in's cluster runs: the Airflow venv's pyspark 4.2, or EMR's line (3.5) from
    .venv-spark35, which cannot share the Airflow venv. Its Python plays the nodes' Python."""
    if request.param == "spark-4.2":
        import pyspark

        return {"python": sys.executable, "home": Path(pyspark.__file__).parent}
    if not SPARK35_PYTHON.exists():
        pytest.skip(f"needs {SPARK35_PYTHON}: `make test-spark35` builds it")
    found = subprocess.run(
        [str(SPARK35_PYTHON), "-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {"python": str(SPARK35_PYTHON), "home": Path(found.stdout.strip())}


@pytest.fixture
def spark_standalone(tmp_path, spark_line):
    """A Spark standalone master and two one-core workers (pyspark's own spark-class), stopped after."""
    home = spark_line["home"]
    spark_class = home / "bin" / "spark-class"
    if not spark_class.exists():
        pytest.skip(f"{spark_class} not found")
    site = tmp_path / "worker-site"
    site.mkdir()
    repo_dirs = {str(ROOT), str(ROOT / "spark_jobs"), str(ROOT / "plugins")}
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(repo_dirs=repo_dirs))
    imports = tmp_path / "executor-imports"
    imports.mkdir()
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base |= {"SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1",
             "PYSPARK_PYTHON": spark_line["python"]}  # fmt: skip
    procs, logs = [], []

    def start(name, args, env):
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("w") as out:
            procs.append(
                subprocess.Popen([str(spark_class), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            )  # fmt: skip

    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(free_port())], base)  # fmt: skip
        workers = {**base, "PYTHONPATH": str(site), "ORCHARD_IMPORT_LOG": str(imports)}
        for i in (1, 2):
            start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                                 "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                                 "--work-dir", str(tmp_path / f"work{i}")], workers)  # fmt: skip
        deadline = time.monotonic() + 90
        while not all("Successfully registered with master" in (tmp_path / f"worker{i}.log").read_text()
                      for i in (1, 2)):  # fmt: skip
            assert time.monotonic() < deadline, "workers did not register:\n" + logs[-1].read_text()[-2000:]
            assert all(p.poll() is None for p in procs), "a Spark daemon exited"
            time.sleep(0.5)
        yield {"master": master_url, "imports": imports, "pids": [p.pid for p in procs], **spark_line}
    finally:
        stop_process_groups(procs)


class EmrStandIn(threading.Thread):
    """Runs (or fails) the steps moto receives; see the module docstring."""

    def __init__(self, s3, workdir: Path, fail: tuple[str, ...] = (), master: str = "local[2]",
                 python: str = sys.executable, home: Path | None = None):  # fmt: skip
        super().__init__(daemon=True)
        self.s3, self.workdir, self.fail, self.master = s3, workdir, fail, master
        # The nodes' Python and Spark: spark-submit of that pyspark, its Python on the "nodes".
        self.python, self.home = python, home
        self.done = threading.Event()
        self.handled: set[str] = set()
        self.errors: list[str] = []

    def run(self):
        while not self.done.is_set():
            for cluster in list(clusters().values()):
                for step in list(cluster.steps):
                    if step.id not in self.handled and step.state in {"PENDING", "RUNNING"}:
                        self.handled.add(step.id)
                        try:
                            self.execute(cluster, step)
                        except Exception as exc:  # surfaced by the test, never swallowed
                            self.errors.append(repr(exc))
                            step.state = "FAILED"
            time.sleep(0.2)

    def execute(self, cluster, step):
        step.start_date_time = datetime.datetime.now(datetime.UTC)  # EMR's Timeline.StartDateTime
        if step.name in self.fail:
            log_prefix = cluster.log_uri.removeprefix(f"s3://{BUCKET}/").rstrip("/")
            log = f"INFO starting\nTraceback (most recent call last):\n{STDERR_TAIL}\n"
            self.s3.put_object(
                Bucket=BUCKET,
                Key=f"{log_prefix}/{cluster.id}/steps/{step.id}/stderr.gz",
                Body=gzip.compress(log.encode()),
            )
            step.state = "FAILED"
            step.end_date_time = datetime.datetime.now(datetime.UTC)
            return
        step.state = "RUNNING"
        mirror = self.workdir / "mirror"
        self.sync_down(mirror)

        def local(arg: str) -> str:
            return arg.replace(f"s3://{BUCKET}/", f"file://{mirror}/")

        args = list(step.args)
        # The cluster's own time limit (coreutils timeout) around the spark-submit: honoured here too.
        assert args[:2] == ["timeout", "--kill-after=60"], args
        limit, args = int(args[2]), args[3:]
        assert args[:4] == ["spark-submit", "--deploy-mode", "client", "--py-files"], args
        submit = str(self.home / "bin" / "spark-submit") if self.home else "spark-submit"
        command = [submit, "--master", self.master, "--deploy-mode", "client"]
        command += ["--py-files", local(args[4]).removeprefix("file://")]
        rest = args[5:]
        while rest[0] == "--conf":
            command += ["--conf", rest[1].replace(NODE_PYTHON, self.python)]
            rest = rest[2:]
        for key, value in STANDIN_SIZING.items():  # later --conf wins
            command += ["--conf", f"{key}={value}"]
        command += [local(rest[0]).removeprefix("file://"), *[local(a) for a in rest[1:]]]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the zip must carry the modules
        env |= {"PYSPARK_PYTHON": self.python, "PYSPARK_DRIVER_PYTHON": self.python}
        if self.home:
            env["SPARK_HOME"] = str(self.home)
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=limit)
        if result.returncode != 0:
            raise RuntimeError(f"step {step.name} failed locally:\n{result.stderr[-3000:]}")
        self.sync_up(mirror, cluster)
        step.end_date_time = datetime.datetime.now(datetime.UTC)  # EMR's Timeline.EndDateTime
        step.state = "COMPLETED"

    def sync_down(self, mirror: Path):
        self.present = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                self.present.add(obj["Key"])
                target = mirror / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(BUCKET, obj["Key"], str(target))
                if target.name == "inference_model.json":  # it names the ONNX model by its S3 URI
                    text = target.read_text(encoding="utf-8")
                    target.write_text(text.replace(f"s3://{BUCKET}/", f"file://{mirror}/"), encoding="utf-8")

    def sync_up(self, mirror: Path, cluster) -> None:
        """What the step wrote, with the encryption the cluster's EMRFS configuration asks for
        (`emrfs_sse`), as EMRFS writes it; none when the spec asks for none."""
        extra = emrfs_sse(cluster.configurations)
        self.written = []
        for path in mirror.rglob("*"):
            key = path.relative_to(mirror).as_posix()
            if path.is_file() and key not in self.present:
                self.s3.upload_file(str(path), BUCKET, key, ExtraArgs=extra)
                self.written.append((key, extra))


def emrfs_sse(configurations: list[dict]) -> dict[str, str]:
    """The S3 encryption EMRFS applies to its writes, from the cluster's emrfs-site classification:
    SSE-S3 with fs.s3.enableServerSideEncryption, SSE-KMS when a key id is set too (EMR Release Guide,
    "Specifying Amazon S3 encryption using EMRFS properties",
    /emr/latest/ReleaseGuide/emr-emrfs-encryption.html); nothing otherwise."""
    props = next(
        (c.get("Properties", {}) for c in configurations if c.get("Classification") == "emrfs-site"), {}
    )
    if props.get("fs.s3.enableServerSideEncryption") != "true":
        return {}
    key = props.get("fs.s3.serverSideEncryption.kms.keyId")
    return (
        {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key} if key else {"ServerSideEncryption": "AES256"}
    )


def check_model_document(s3, featurize_args: list[str]) -> None:
    """The weights were converted to ONNX on the Airflow side; the step gets the run's model document."""
    model_arg = featurize_args[featurize_args.index("--model") + 1]
    assert model_arg.startswith(f"{LAKE}/runs/") and model_arg.endswith("/inference_model.json")
    key = model_arg.removeprefix(f"s3://{BUCKET}/")
    model_doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert model_doc["model"].startswith(f"{LAKE}/cache/models/") and model_doc["model"].endswith(".onnx")
    assert model_doc["converted"]


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["fruits_pipeline"]


EARLIER_ATTEMPT = "lake/runs/an-earlier-run/attempt-1/manifest.json"


def saved_weights(folder: Path) -> Path:
    """A .weights.h5 file of seeded random weights: the run's `weights` param (a user's own file)."""
    from orchard_jobs.model import build_model, random_weights

    weights_file = folder / "mobilenet_v2.weights.h5"
    model = build_model(None)
    model.set_weights(random_weights(9))
    model.save_weights(weights_file)
    return weights_file


@pytest.mark.backs("no credentials in logs", "every S3 write encrypted", "least-privilege IAM policy")
def test_emr_run_creates_the_cluster_runs_both_steps_and_terminates(
    airflow_db, moto_server, spark_standalone, tmp_path, aws_calls, capfd, caplog, monkeypatch
):
    s3 = moto_server
    # Retention keeps one attempt: the run's own retention task removes an earlier run's from S3.
    monkeypatch.setenv("ORCHARD_RETAIN_ATTEMPTS", "1")
    s3.put_object(Bucket=BUCKET, Key=EARLIER_ATTEMPT, Body=b"{}", ServerSideEncryption="AES256")
    calls, ignored = aws_calls
    ignored.append(s3)
    source = tmp_path / "images"
    generate(source, per_class=4, seed=8)
    (source / "Kiwi" / "broken.jpg").write_bytes(truncated_jpeg())
    weights_file = saved_weights(tmp_path)

    stand_in = EmrStandIn(
        s3, tmp_path, master=spark_standalone["master"], python=spark_standalone["python"],
        home=spark_standalone["home"],
    )  # fmt: skip
    ignored.append(stand_in.s3)
    stand_in.start()
    try:
        run = load_dag().test(
            run_conf={"source": str(source), "weights": str(weights_file), "pca_k": 3, "core_instances": 3}
        )
    finally:
        stand_in.done.set()
    assert (stand_in.errors, run.state) == ([], "success")
    check_executor_imports(spark_standalone["imports"])

    (cluster,) = clusters().values()
    assert cluster.state == "TERMINATED"
    assert cluster.release_label == "emr-7.14.0"
    assert [s.name for s in cluster.steps] == ["orchard-featurize", "orchard-pca"]
    featurize_args = cluster.steps[0].args
    check_model_document(s3, featurize_args)
    assert featurize_args[featurize_args.index("--py-files") + 1].endswith("/orchard_jobs.zip")
    (bootstrap,) = cluster.bootstrap_actions
    assert bootstrap.args[-1] == f"s3://{BUCKET}/{WHEELHOUSE_KEY}"  # the nodes install from the lake

    latest = json.loads(s3.get_object(Bucket=BUCKET, Key="lake/latest.json")["Body"].read())
    manifest = json.loads(
        s3.get_object(Bucket=BUCKET, Key=latest["manifest"].removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    )
    assert manifest["counts"]["featurized"] == 24
    assert manifest["counts"]["quarantined"] == 1
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=EARLIER_ATTEMPT)
    assert manifest["weights"]["used"] == str(weights_file)
    assert manifest["weights"]["meaningful"]
    check_cluster_facts(manifest, cluster)
    check_plan(s3, manifest)
    csv_key = latest["csv"].removeprefix(f"s3://{BUCKET}/")
    head = s3.head_object(Bucket=BUCKET, Key=csv_key)
    assert head["ServerSideEncryption"] == "AES256"
    table = pd.read_csv(s3.get_object(Bucket=BUCKET, Key=csv_key)["Body"])
    assert list(table.columns) == ["path", "label", "pc_1", "pc_2", "pc_3"]
    assert len(table) == 24

    # Every call is allowed by the policy (resource and conditions too), and the policy grants
    # nothing that no call needs but the documented rest.
    requests_made = check_policy(calls)
    assert iam.unused_grants(iam.airflow_policy(BUCKET, "lake"), requests_made) == set(NOT_EXERCISED)

    check_step_output_encryption(s3, stand_in)

    # Uploaded images are encrypted and a re-run would skip them.
    image_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="lake/images/")["Contents"]]
    assert len(image_keys) == 25
    assert s3.head_object(Bucket=BUCKET, Key=image_keys[0])["ServerSideEncryption"] == "AES256"

    check_report_and_logs(s3, manifest, capfd, caplog)


def check_step_output_encryption(s3, stand_in: EmrStandIn) -> None:
    """The steps' outputs were written as the spec's EMRFS configuration asks: with no setting, no
    header, so the bucket's default encryption (SSE-S3 here) applies, as to every other write."""
    assert stand_in.written
    assert {extra.get("ServerSideEncryption") for _, extra in stand_in.written} == {None}
    assert s3.head_object(Bucket=BUCKET, Key=stand_in.written[0][0])["ServerSideEncryption"] == "AES256"


def check_cluster_facts(manifest: dict, cluster) -> None:
    """What the cluster ran and for how long, as DescribeCluster and ListInstanceGroups answered."""
    emr_facts = manifest["emr"]
    assert (emr_facts["cluster_id"], emr_facts["state"]) == (cluster.id, "TERMINATED")
    assert emr_facts["normalized_instance_hours"] == cluster.normalized_instance_hours
    assert sorted((g["role"], g["type"], g["count"]) for g in emr_facts["instances"]) == [
        ("CORE", "m5.xlarge", 3),
        ("MASTER", "m5.xlarge", 1),
    ]
    assert emr_facts["lifetime_seconds"] is not None and emr_facts["estimate"] is None  # no price set


def check_plan(s3, manifest: dict) -> None:
    """The plan sized the cluster (core_instances=3, fixed), and the report set EMR's timelines beside
    it: each step's StepTimeline; the run's record joined the lake's history."""
    plan = manifest["plan"]
    assert plan["sizing"] == {"mode": "fixed", "reason": "core_instances=3"}
    assert (plan["machine"]["nodes"], plan["machine"]["instance_type"]) == (3, "m5.xlarge")
    assert plan["work"] == {**plan["work"], "inputs": 25, "featurize_now": 25, "from_cache": 0}
    # No history yet: the documented default.
    assert plan["phases"]["cluster_start"]["seconds"] == pytest.approx(planning.DEFAULT_CLUSTER_START)
    actual = plan["actual"]
    assert actual["featurize"] > 0 and actual["pca"] > 0 and actual["featurize_job"] > 0
    (record,) = s3.list_objects_v2(Bucket=BUCKET, Prefix="lake/history/")["Contents"]
    history = json.loads(s3.get_object(Bucket=BUCKET, Key=record["Key"])["Body"].read())
    assert (
        history["machine"]["key"] == "emr: m5.xlarge"
        and history["phases"]["featurize"] == actual["featurize"]
    )


def check_executor_imports(imports: Path) -> None:
    """Python workers of the executors (separate processes) imported orchard_jobs, only from the zip."""
    logs = list(imports.iterdir())
    origins = [line for log in logs for line in log.read_text().splitlines()]
    assert len(logs) >= 2, origins
    assert origins, "no executor imported orchard_jobs"
    assert all("orchard_jobs.zip" in origin for origin in origins), origins


def check_report_and_logs(s3, manifest: dict, capfd, caplog) -> None:
    """The report is in the run's output, encrypted, its log says where; no credential in any log."""
    report_key = manifest["outputs"]["report"].removeprefix(f"s3://{BUCKET}/")
    assert s3.head_object(Bucket=BUCKET, Key=report_key)["ServerSideEncryption"] == "AES256"
    page = s3.get_object(Bucket=BUCKET, Key=report_key)["Body"].read().decode("utf-8")
    assert "normalized instance-hours" in page and manifest["emr"]["cluster_id"] in page
    assert "Plan and what happened" in page and "3 core node(s) x m5.xlarge" in page
    output = capfd.readouterr()
    assert f"run report: {manifest['outputs']['report']}" in caplog.text
    assert_no_secrets(output.out, output.err, caplog.text)


@pytest.mark.backs("an EMR step fails", "no credentials in logs", "least-privilege IAM policy")
def test_failed_featurize_step_fails_the_run_and_still_terminates(
    airflow_db, moto_server, tmp_path, capfd, caplog, aws_calls
):
    calls, ignored = aws_calls
    ignored.append(moto_server)
    source = tmp_path / "images"
    generate(source, per_class=2, seed=1)
    stand_in = EmrStandIn(moto_server, tmp_path, fail=("orchard-featurize",))
    stand_in.start()
    try:
        run = load_dag().test(run_conf={"source": str(source), "weights": "random"})
    finally:
        stand_in.done.set()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["wait_featurize"] == "failed"
    assert states["add_pca_step"] == "upstream_failed"
    assert states["terminate_cluster"] == "success"
    assert states["check_outcome"] == "failed"  # the verdict: not every task succeeded

    (cluster,) = clusters().values()
    assert [s.name for s in cluster.steps] == ["orchard-featurize"]  # PCA never added
    assert cluster.state == "TERMINATED"
    output = capfd.readouterr()
    assert STDERR_TAIL in output.out + output.err
    check_policy(calls)
    assert_no_secrets(output.out, output.err, caplog.text)
