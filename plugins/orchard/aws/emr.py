"""EMR as data: the job-flow spec and the Spark steps are plain dicts built by pure functions.

Plus the behaviour the provider's operators lack: a wait sized to the number of images, the failed
step's reason and stderr tail in the task log, and a cluster and steps that a retried or cleared
task finds again instead of starting twice.
"""

from __future__ import annotations

import datetime
import gzip
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator, EmrCreateJobFlowOperator
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from botocore.exceptions import WaiterError

from orchard import clients
from orchard.aws.sizing import executor_sizing, yarn_memory_mb
from orchard.config import Settings
from orchard.layout import slug
from orchard.spark import steps
from orchard.uris import split_uri

if TYPE_CHECKING:
    from airflow.sdk import Context
    from types_boto3_emr import EMRClient
    from types_boto3_emr.literals import ClusterStateType, StepStateType
    from types_boto3_s3 import S3Client

NODE_PYTHON = "/usr/bin/python3.11"
# A cluster in these states still runs (and bills); ListClusters' names for them.
ACTIVE_CLUSTER_STATES: list[ClusterStateType] = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
# A step in these states has run or will run: adding it again would run it twice.
LIVE_STEP_STATES: list[StepStateType] = ["PENDING", "RUNNING", "COMPLETED"]


def job_flow_spec(
    settings: Settings,
    *,
    run_id: str,
    dag_id: str,
    bootstrap_uri: str,
    requirements_uri: str,
    wheelhouse_uri: str,
    instance_type: str,
    core_instances: int,
    vcpu: int = 4,
    memory_gb: float = 16.0,
) -> dict[str, Any]:
    """RunJobFlow request for one pipeline run: a transient cluster that waits for its steps.

    `vcpu` and `memory_gb`: the instance type's, as ListSupportedInstanceTypes gives them (the
    defaults are an m5.xlarge's); the executors are sized from them.
    """
    emrfs = emrfs_encryption(settings)
    sizing = executor_sizing(vcpu, yarn_memory_mb(instance_type, memory_gb))
    if sizing is None:
        raise ValueError(
            f"{instance_type} ({vcpu} vCPU, {memory_gb} GB) cannot host one executor: pick a larger type"
        )
    core_market = "SPOT" if settings.emr_core_spot else "ON_DEMAND"
    instances: dict[str, Any] = {
        "InstanceGroups": [
            {
                "Name": "primary",
                "InstanceRole": "MASTER",
                "Market": "ON_DEMAND",
                "InstanceType": instance_type,
                "InstanceCount": 1,
            },
            {
                "Name": "core",
                "InstanceRole": "CORE",
                "Market": core_market,
                "InstanceType": instance_type,
                "InstanceCount": core_instances,
            },
        ],
        # Steps are added one at a time after the cluster starts: it must not end in between.
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if settings.emr_subnet_id:
        instances["Ec2SubnetId"] = settings.emr_subnet_id
    spec: dict[str, Any] = {
        "Name": f"orchard-{slug(run_id)}"[:256],
        "ReleaseLabel": settings.emr_release,
        "Applications": [{"Name": "Spark"}, {"Name": "Hadoop"}],
        "LogUri": settings.emr_log_uri,
        "VisibleToAllUsers": True,
        "ServiceRole": settings.emr_service_role,
        "JobFlowRole": settings.emr_instance_profile,
        "EbsRootVolumeSize": settings.emr_root_volume_gb,
        "StepConcurrencyLevel": 1,
        # The backstop when Airflow itself dies: an idle cluster terminates on its own.
        "AutoTerminationPolicy": {"IdleTimeout": settings.emr_idle_timeout},
        "BootstrapActions": [
            {
                "Name": "install-python-deps",
                # The nodes install from the staged wheelhouse: they need S3, not PyPI.
                "ScriptBootstrapAction": {"Path": bootstrap_uri, "Args": [requirements_uri, wheelhouse_uri]},
            }
        ],
        "Configurations": [
            {
                "Classification": "spark-env",
                "Configurations": [
                    {
                        "Classification": "export",
                        "Properties": {"PYSPARK_PYTHON": NODE_PYTHON, "PYSPARK_DRIVER_PYTHON": NODE_PYTHON},
                    }
                ],
            },
            {"Classification": "spark-defaults", "Properties": {**step_conf(), **sizing}},
            # What the steps write to S3 through EMRFS is encrypted like everything else.
            *([{"Classification": "emrfs-site", "Properties": emrfs}] if emrfs else []),
        ],
        "Instances": instances,
        "Tags": [
            {"Key": "project", "Value": "orchard"},
            {"Key": "dag_id", "Value": dag_id},
            {"Key": "dag_run_id", "Value": run_id[:256]},
            # Required by the v2 service role's managed policy (AmazonEMRServicePolicy_v2, EMR
            # Management Guide, "Service role for Amazon EMR"); a plain tag with the v1 role.
            {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"},
        ],
    }
    if settings.emr_security_configuration:
        spec["SecurityConfiguration"] = settings.emr_security_configuration
    return spec


def emrfs_encryption(settings: Settings) -> dict[str, str]:
    """EMRFS properties for the steps' S3 writes, the same choice as every other write's
    (Settings.encryption): SSE-KMS with the key, SSE-S3 when asked for, else none (the bucket's
    default encryption applies).

    EMR Release Guide, "Specifying Amazon S3 encryption using EMRFS properties"
    (/emr/latest/ReleaseGuide/emr-emrfs-encryption.html): these apply unless the cluster has a
    security configuration (ORCHARD_EMR_SECURITY_CONFIGURATION), whose S3 encryption overrides them.
    """
    header = settings.encryption.get("ServerSideEncryption")
    if header is None:
        return {}
    props = {"fs.s3.enableServerSideEncryption": "true"}
    if settings.kms_key_id:
        props["fs.s3.serverSideEncryption.kms.keyId"] = settings.kms_key_id
    return props


def step_conf() -> dict[str, str]:
    """Spark configuration of the steps on EMR: the common one plus the nodes' Python. The executor
    sizing, which depends on the instance type, is in the cluster's spark-defaults (job_flow_spec)."""
    return {
        **steps.spark_conf(),
        "spark.pyspark.python": NODE_PYTHON,
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": NODE_PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": NODE_PYTHON,
    }


def spark_step(
    name: str, script: Any, args: Sequence[Any], *, py_files: Any, time_limit: Any
) -> dict[str, Any]:
    """An EMR step that spark-submits `script`; a failure cancels later steps.

    Client deploy mode: the driver runs on the primary node, so its log (progress lines, the
    summary, a Python traceback) is the step's own stdout/stderr, which the step sensor tails on
    failure. spark-submit downloads the s3:// script and --py-files itself in client mode.

    `timeout` (coreutils) ends the spark-submit after `time_limit` seconds, on the cluster itself: a
    hung step otherwise keeps the cluster from being idle, and its idle auto-termination from ever
    starting (EMR Management Guide, "Using an auto-termination policy": a running step or YARN
    application is activity), even when Airflow is gone. The step then fails, and the later ones
    are cancelled.
    """
    limit = ["timeout", f"--kill-after={TIME_LIMIT_KILL_AFTER}", str(time_limit)]
    submit = [*limit, "spark-submit", "--deploy-mode", "client", "--py-files", py_files]
    for key, value in step_conf().items():
        submit += ["--conf", f"{key}={value}"]
    return {
        "Name": name,
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": [*submit, script, *args]},
    }


class RunClusterOperator(EmrCreateJobFlowOperator):
    """EmrCreateJobFlowOperator that starts at most one cluster per DAG run.

    RunJobFlow has no idempotency token, so a try killed after the call (or a task cleared while
    its cluster runs) would start a second cluster that nothing terminates until its idle timeout.
    A try first looks for an active cluster of this run (the spec's name, and the run's
    `dag_id`/`dag_run_id` tags) and, when there is one, returns its id instead.
    """

    def execute(self, context: Context) -> str | None:
        spec = self.job_flow_overrides
        if isinstance(spec, Mapping):
            found = run_cluster(self.hook.conn, spec)
            if found:
                self.log.info("Cluster %s of this run is still active: re-attaching to it", found)
                self._job_flow_id = found
                return found
        return super().execute(context)


def run_cluster(client: EMRClient, spec: Mapping[str, Any]) -> str | None:
    """The active cluster created from this spec (same name, same dag_id and dag_run_id tags), if any."""
    wanted = {
        tag["Key"]: tag["Value"] for tag in spec.get("Tags", []) if tag["Key"] in {"dag_id", "dag_run_id"}
    }
    if len(wanted) < 2:  # nothing tells this run's cluster apart
        return None
    for page in client.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_CLUSTER_STATES):
        for summary in page["Clusters"]:
            if summary["Name"] != spec["Name"]:
                continue
            tags = client.describe_cluster(ClusterId=summary["Id"])["Cluster"].get("Tags", [])
            if wanted.items() <= {tag["Key"]: tag["Value"] for tag in tags}.items():
                return summary["Id"]
    return None


class RunStepsOperator(EmrAddStepsOperator):
    """EmrAddStepsOperator that adds a step at most once to a cluster.

    A retried try whose steps are already on the cluster (same name and arguments; pending, running
    or completed) returns their ids, so its sensor waits on the step that runs, and the step does
    not run twice. Steps that failed or were cancelled are added again.
    """

    def execute(self, context: Context) -> list[str]:
        wanted = self.steps if isinstance(self.steps, list) and self.job_flow_id else None
        found = live_steps(self.hook.conn, str(self.job_flow_id), wanted) if wanted else None
        if found:
            self.log.info("Steps %s are already on cluster %s: re-attaching to them", found, self.job_flow_id)
            return found
        return super().execute(context)


def live_steps(client: EMRClient, cluster_id: str, wanted: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """Ids of steps on the cluster equal to `wanted` (name and arguments), in order; None unless all are."""
    live = [
        step
        for page in client.get_paginator("list_steps").paginate(
            ClusterId=cluster_id, StepStates=LIVE_STEP_STATES
        )
        for step in page["Steps"]
    ]
    ids = []
    for step in wanted:
        args = list(step["HadoopJarStep"].get("Args", []))
        match = next(
            (
                s["Id"]
                for s in live
                if s["Name"] == step["Name"] and list(s["Config"].get("Args", [])) == args
            ),
            None,
        )
        if match is None:
            return None
        ids.append(match)
    return ids


def first_step_id(add_steps_task_id: str) -> str:
    """The id of the one step an EmrAddStepsOperator added (it returns a list of ids)."""
    return f"{{{{ ti.xcom_pull(task_ids='{add_steps_task_id}')[0] }}}}"


def step_timeout(images: int, *, base_seconds: int, seconds_per_image: float) -> int:
    """Seconds to wait for a step over `images` images: a fixed part plus a per-image part."""
    return int(base_seconds + math.ceil(max(images, 0) * seconds_per_image))


# The cluster's own bound on a step: the sensor's wait plus this, so that the sensor (which
# explains the failure) normally gives up first; SIGKILL TIME_LIMIT_KILL_AFTER s after SIGTERM.
TIME_LIMIT_GRACE = 600
TIME_LIMIT_KILL_AFTER = 60


def step_time_limit(images: Any, base_seconds: int, seconds_per_image: float) -> int:
    """Seconds a step may run on the cluster (a DAG macro: `images` comes from the upload's XCom)."""
    return (
        step_timeout(int(images), base_seconds=base_seconds, seconds_per_image=seconds_per_image)
        + TIME_LIMIT_GRACE
    )


def time_limit_template(upload_task_id: str, *, base_seconds: int, seconds_per_image: float) -> str:
    """The step's time limit as a template over the upload's image count (the DAG's step_time_limit macro)."""
    images = f"ti.xcom_pull(task_ids='{upload_task_id}', key='image_count')"
    return f"{{{{ step_time_limit({images}, {base_seconds}, {seconds_per_image}) }}}}"


def stderr_uri(log_uri: str, cluster_id: str, step_id: str) -> str:
    """Where EMR puts a step's stderr under the cluster's log URI."""
    return f"{log_uri.rstrip('/')}/{cluster_id}/steps/{step_id}/stderr.gz"


def stderr_tail(s3_client: S3Client, log_uri: str, cluster_id: str, step_id: str, lines: int = 40,
                attempts: int = 10, delay: float = 15.0) -> str | None:  # fmt: skip
    """The last lines of a step's stderr from the cluster's log URI, waiting while EMR uploads it.

    None when it is not there yet: EMR uploads step logs to S3 about every five minutes ("Configure
    Amazon EMR cluster logging and debugging", /emr/latest/ManagementGuide/emr-plan-debugging.html).
    """
    bucket, key = split_uri(stderr_uri(log_uri, cluster_id, step_id))
    for attempt in range(attempts):
        try:
            body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3_client.exceptions.NoSuchKey:
            if attempt + 1 < attempts:
                time.sleep(delay)
            continue
        text = gzip.decompress(body).decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return None


def missing_log_message(step_id: str, uri: str, log_file: str | None, waited: float) -> str:
    """What to tell the user when the stderr tail is not in S3 yet: where it will be, and how to read it."""
    where = f"{uri}" + (f" (EMR's FailureDetails.LogFile: {log_file})" if log_file else "")
    return (
        f"The stderr of step {step_id} is not in S3 yet after {waited:.0f} s: EMR uploads step logs "
        f"about every five minutes. It will be at {where}; read it with "
        f"`aws s3 cp {uri} - | gunzip | tail -n 40`."
    )


class ImageStepSensor(EmrStepSensor):
    """EmrStepSensor whose wait grows with the number of images, and that explains a failure."""

    template_fields: Sequence[str] = (*EmrStepSensor.template_fields, "images")

    def __init__(
        self,
        *,
        images: Any,
        log_uri: str,
        base_seconds: int,
        seconds_per_image: float,
        log_wait_attempts: int = 10,
        log_wait_delay: float = 15.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.images = images
        self.log_uri = log_uri
        self.base_seconds = base_seconds
        self.seconds_per_image = seconds_per_image
        self.log_wait_attempts = log_wait_attempts
        self.log_wait_delay = log_wait_delay

    def execute(self, context: Context) -> None:
        """Size the wait from the image count, then wait (deferred) for the step."""
        budget = step_timeout(
            int(self.images), base_seconds=self.base_seconds, seconds_per_image=self.seconds_per_image
        )
        self.timeout = budget
        self.max_attempts = max(1, math.ceil(budget / self.poke_interval))
        self.log.info("Waiting up to %d s for step %s (%s images)", budget, self.step_id, self.images)
        try:
            return super().execute(context)
        except Exception:
            self.log_failure()
            raise

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        """Resume after the trigger; on failure, log why before failing."""
        try:
            return super().execute_complete(context, event)
        except Exception:
            self.log_failure()
            raise

    def log_failure(self) -> None:
        """Log why the step failed (best effort: never masks the error)."""
        try:
            s3, _ = clients.s3_access(self.region_name, {}, conn_id=self.aws_conn_id)
            for line in failure_report(
                self.hook.conn, s3, self.log_uri, str(self.job_flow_id), str(self.step_id),
                attempts=self.log_wait_attempts, delay=self.log_wait_delay,
            ):  # fmt: skip
                self.log.error("%s", line)
        except Exception as exc:  # diagnostics must not replace the real failure
            self.log.warning("Could not read the failed step's diagnostics: %s", exc)


# The cluster itself failed: its steps end CANCELLED (or never start), and have no stderr.
CLUSTER_FAILURES = {"TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"}


def failure_report(emr_client: EMRClient, s3_client: S3Client, log_uri: str, cluster_id: str, step_id: str,
                   attempts: int = 10, delay: float = 15.0) -> list[str]:  # fmt: skip
    """What to tell the user about a failed or cancelled step: its state and failure details, and
    either its stderr tail (waiting while EMR uploads it) or, when the step never started because
    the cluster failed (bootstrap, roles, KMS, capacity), the cluster's own reason and where its
    nodes' logs are. Codes: EMR API Reference, ClusterStateChangeReason."""
    step = emr_client.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    status = step["Status"]
    details = status.get("FailureDetails", {})
    lines = [
        f"EMR step {step_id} ({step.get('Name')}) is {status.get('State')}: {details.get('Reason', '')} "
        f"{details.get('Message', '')} (log file: {details.get('LogFile', '-')})"
    ]
    cluster = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
    reason = cluster.get("StateChangeReason", {})
    started = status.get("Timeline", {}).get("StartDateTime") is not None
    state, code = cluster.get("State"), reason.get("Code")
    if state in CLUSTER_FAILURES and code not in {None, "ALL_STEPS_COMPLETED"}:
        lines.append(f"EMR cluster {cluster_id} is {state}: {code}: {reason.get('Message', '')}")
    if not started:
        nodes = f"{log_uri.rstrip('/')}/{cluster_id}/node/"
        lines.append(
            f"Step {step_id} never started, so it has no stderr. The nodes' logs (bootstrap actions under "
            f"<instance id>/bootstrap-actions/) are at {nodes}: `aws s3 ls --recursive {nodes}`."
        )
        return lines
    tail = stderr_tail(s3_client, log_uri, cluster_id, step_id, attempts=attempts, delay=delay)
    if tail is None:
        uri = stderr_uri(log_uri, cluster_id, step_id)
        lines.append(missing_log_message(step_id, uri, details.get("LogFile"), max(attempts - 1, 0) * delay))
    else:
        lines.append(f"Last lines of the step's stderr:\n{tail}")
    return lines


def wait_until_ended(emr_client: EMRClient, cluster_id: str, delay: int = 15, attempts: int = 40) -> bool:
    """Wait (at most delay x attempts s) for a terminating cluster to end, with boto3's own
    ClusterTerminated waiter; whether it ended. Its end time is what bounds its cost."""
    try:
        emr_client.get_waiter("cluster_terminated").wait(
            ClusterId=cluster_id, WaiterConfig={"Delay": delay, "MaxAttempts": attempts}
        )
    except WaiterError as exc:  # TERMINATED_WITH_ERRORS is an end too; a timeout is not
        state = (getattr(exc, "last_response", None) or {}).get("Cluster", {}).get("Status", {}).get("State")
        return state == "TERMINATED_WITH_ERRORS"
    return True


def cluster_cost(
    emr_client: EMRClient,
    cluster_id: str,
    price_per_hour: float | None = None,
    prices: Mapping[str, float] | None = None,
    wait: tuple[int, int] = (15, 40),
) -> dict[str, Any]:
    """What a cluster ran and for how long, with a cost estimate when a price per instance-hour is known.

    `prices` (by instance type) win over `price_per_hour` (any type). The estimate is
    instances x cluster lifetime x price: nodes start a few minutes after the cluster is created and
    Spot nodes cost less, so it is an upper bound of the instance charges, not a bill (no EBS, S3 or
    data transfer). `normalized_instance_hours` is AWS's own figure, in m1.small-hours: "an
    approximation of the cost of the cluster ... Larger instances are weighted more ... This result
    is only an approximation and does not reflect the actual billing rate"
    (https://docs.aws.amazon.com/emr/latest/APIReference/API_ClusterSummary.html, NormalizedInstanceHours).

    The report runs right after the teardown asked for termination: the cluster is first waited on
    until it has ended (`wait`: delay and attempts, ~10 min at most), so that its lifetime includes
    the shut-down; a cluster still up after that is priced for its lifetime so far, and says so.
    """
    wait_until_ended(emr_client, cluster_id, *wait)
    cluster = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    status = cluster.get("Status", {})
    timeline = status.get("Timeline", {})
    created, ended = timeline.get("CreationDateTime"), timeline.get("EndDateTime")
    # A cluster still terminating has no end yet: its lifetime so far, and the report says so.
    until = ended or datetime.datetime.now(datetime.UTC)
    lifetime = (until - created).total_seconds() if created else None
    instances = _instances(emr_client, cluster_id, cluster.get("InstanceCollectionType"))
    result: dict[str, Any] = {
        "cluster_id": cluster_id,
        "state": status.get("State"),
        "created": created.isoformat() if created else None,
        "ended": ended.isoformat() if ended else None,
        "lifetime_seconds": lifetime,
        "normalized_instance_hours": cluster.get("NormalizedInstanceHours"),
        "instances": instances,
        "estimate": None,
        "missing_prices": [],
    }
    table = dict(prices or {})
    priced = {
        group["type"]: table.get(group["type"], price_per_hour)
        for group in instances
        if group["count"] is not None
    }
    if lifetime is None:
        result["no_estimate"] = "no estimate: the cluster has no creation time"
    elif not instances or any(group["count"] is None for group in instances):
        result["no_estimate"] = "no estimate: the instance counts are not known (instance fleets)"
    elif table or price_per_hour is not None:
        missing = sorted(name for name, price in priced.items() if price is None)
        if missing:
            result["missing_prices"] = missing
        else:
            hours = lifetime / 3600
            instance_hours = sum(group["count"] for group in instances) * hours
            cost = sum(group["count"] * hours * priced[group["type"]] for group in instances)
            result["estimate"] = {
                "cost": round(cost, 4),
                "currency": "USD",
                "instance_hours": round(instance_hours, 4),
                "prices": {name: priced[name] for name in sorted(priced)},
                "basis": ", ".join(f"{priced[name]:g}/h for {name}" for name in sorted(priced)),
            }
    return result


# The steps' names (spark_step) and the plan's phases they are.
STEP_PHASES = {"orchard-featurize": "featurize", "orchard-pca": "pca"}


def cluster_phases(emr_client: EMRClient, cluster_id: str) -> dict[str, float | None]:
    """What a cluster's run took, phase by phase (seconds), from EMR's own timelines: the start
    (created -> ready to run steps: provisioning and bootstrap actions; ClusterTimeline,
    https://docs.aws.amazon.com/emr/latest/APIReference/API_ClusterTimeline.html), each step (its
    StepTimeline start -> end; ListSteps lists the newest first: a step run again counts once, its
    newest run), the finish (the last step's end -> terminated: the export, then the shut-down), and
    what lies between (ready -> the first step, and between the steps: Airflow adding each step and
    its sensor seeing the previous one end), so that the phases add up to the cluster's lifetime.
    A phase without both times is None."""
    timeline = (
        emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"].get("Status", {}).get("Timeline", {})
    )

    def between(start: Any, end: Any) -> float | None:
        return round((end - start).total_seconds(), 1) if start and end else None

    phases: dict[str, float | None] = {
        "cluster_start": between(timeline.get("CreationDateTime"), timeline.get("ReadyDateTime"))
    }
    last_end = None
    for page in emr_client.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        for step in page["Steps"]:
            step_times = step.get("Status", {}).get("Timeline", {})
            name = STEP_PHASES.get(step.get("Name", ""))
            if name and name not in phases:
                phases[name] = between(step_times.get("StartDateTime"), step_times.get("EndDateTime"))
            end = step_times.get("EndDateTime")
            last_end = max(last_end, end) if last_end and end else (end or last_end)
    phases["finish"] = between(last_end, timeline.get("EndDateTime"))
    lifetime = between(timeline.get("CreationDateTime"), timeline.get("EndDateTime"))
    parts = [phases.get(name) for name in ("cluster_start", *STEP_PHASES.values(), "finish")]
    phases["between_steps"] = (
        round(lifetime - sum(p for p in parts if p is not None), 1)
        if lifetime is not None and all(p is not None for p in parts)
        else None
    )
    return phases


def _instances(emr_client: EMRClient, cluster_id: str, collection: str | None) -> list[dict[str, Any]]:
    """Role, type, count and market of each instance group (fleets: their types, counts unknown)."""
    if collection == "INSTANCE_FLEET":
        fleets = emr_client.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"]
        return [
            {
                "role": fleet["InstanceFleetType"],
                "type": spec["InstanceType"],
                "count": None,
                "market": "fleet",
            }
            for fleet in fleets
            for spec in fleet.get("InstanceTypeSpecifications", [])
        ]
    groups = emr_client.get_paginator("list_instance_groups").paginate(ClusterId=cluster_id)
    return [
        {
            "role": group["InstanceGroupType"],
            "type": group["InstanceType"],
            # What was asked for: a terminated cluster's groups run no instance any more.
            "count": group.get("RequestedInstanceCount", group.get("RunningInstanceCount")),
            "market": group.get("Market", "ON_DEMAND"),
        }
        for page in groups
        for group in page["InstanceGroups"]
    ]
