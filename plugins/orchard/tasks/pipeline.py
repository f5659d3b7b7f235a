"""The bodies of fruits_pipeline's Python tasks, one function per task, testable without Airflow.

The DAG file (dags/fruits_pipeline.py) wires these to tasks; each takes the settings, the run's
params and what earlier tasks returned, and returns what later tasks need (plain data: XCom).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from orchard import clients, model_cache, planning, runs
from orchard import retention as retention_policy
from orchard.aws import emr, preflight, staging
from orchard.aws.sizing import executor_sizing, yarn_memory_mb
from orchard.config import Settings
from orchard.layout import LakeLayout, RunLayout
from orchard.report.render import write_report
from orchard.storage.lake import Lake, airflow_lake
from orchard.storage.sync import listing_parquet
from orchard.uris import dataset_name

log = logging.getLogger(__name__)


def upload_images(settings: Settings, params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Mirror the source into the lake and list the inputs of a new attempt of the run.

    Returns the attempt's layout (RunLayout.to_xcom), the sync's account and the number of inputs.
    Raises ValueError (naming the source) before any copy when the source is missing or
    empty, and OSError when files could not be copied.
    """
    lake = airflow_lake(settings)
    lake.check_format(settings.lake)  # before the first write of the attempt
    started = time.monotonic()
    dataset = dataset_name(params["source"])
    try:
        source, report = lake.mirror(
            params["source"], LakeLayout(settings.lake).images(dataset), params["limit"]
        )
    except ValueError as exc:
        raise ValueError(f"param {exc}") from exc
    sync = {**report.as_dict(), "source": source, "seconds": round(time.monotonic() - started, 3)}
    if report.failed:
        raise OSError(f"{len(report.failed)} files could not be uploaded: {sorted(report.failed)[:5]}")
    # The Spark steps address the lake as Spark does (s3a:// for a local Spark on S3).
    attempt = runs.next_attempt(lake, settings.lake, run_id)
    run = LakeLayout(settings.spark_lake).run(dataset, run_id, attempt)
    # The attempt reads exactly this listing, whatever else the lake holds.
    lake.write_bytes(run.inputs_file, listing_parquet(report.inputs))
    return {"run": run.to_xcom(), "sync": sync, "image_count": report.files}


def convert_model(settings: Settings, params: Mapping[str, Any], run: RunLayout) -> dict[str, Any]:
    """The ONNX model of the run's weights (converted now, or taken from the lake), and the
    published PCA basis the run may use (`basis`: an attempt's layout, or None)."""
    lake = airflow_lake(settings)
    model = model_cache.prepare_model(lake, run.models, params["weights"], params["weights_fallback"])
    lake.write_json(run.inference_model, model)
    # The PCA basis this run may align to or reuse: it must come from features of this same model.
    basis = runs.published_basis(lake, settings.lake, model["sha256"], params["pca_mode"])
    return {**model, "basis": None if basis is None else basis.to_xcom()}


def export_csv(settings: Settings, run: RunLayout, sync: Mapping[str, Any]) -> str:
    """One pcaFeatures.csv plus the attempt's manifest; returns the CSV's URI."""
    runs.export_run(airflow_lake(settings), run, sync)
    return run.csv


def plan_local(
    settings: Settings, run: RunLayout, model: Mapping[str, Any], master: str | None
) -> dict[str, Any]:
    """The run's plan on local Spark (`master`: the Spark connection's, e.g. local[2]), written to
    the attempt's plan.json and logged before the steps start."""
    lake = airflow_lake(settings)
    machine = planning.local_machine(master)
    work = planning.read_work(lake, run, model["sha256"])
    return _write_plan(lake, run, planning.make_plan(work, machine, _rates(lake, settings, machine)))


def plan_emr(
    settings: Settings,
    params: Mapping[str, Any],
    run: RunLayout,
    model: Mapping[str, Any],
    staged: Mapping[str, Any],
    run_id: str,
    dag_id: str,
) -> dict[str, Any]:
    """The run's plan on EMR, before the cluster exists, and the cluster's spec it sizes.

    `sizing=auto` picks the core nodes (orchard.planning.choose_nodes) within the vCPU quota left
    and ORCHARD_EMR_MAX_CORE_INSTANCES; `fixed` takes `core_instances`. Returns the plan and the
    RunJobFlow request (`job_flow`).
    """
    lake = airflow_lake(settings)
    instance = staged["instance"]
    executors = executor_sizing(instance["vcpu"], yarn_memory_mb(instance["type"], instance["memory_gb"]))
    machine = planning.Machine(
        "emr", f"emr: {instance['type']}", params["core_instances"], instance["vcpu"],
        int(executors["spark.executor.cores"]) if executors else 1, instance["memory_gb"], instance["type"],
    )  # fmt: skip
    rates = _rates(lake, settings, machine)
    work = planning.read_work(lake, run, model["sha256"])
    price = settings.emr_prices.get(instance["type"], settings.emr_price_per_hour)
    decision: dict[str, Any] = {"mode": "fixed", "reason": f"core_instances={machine.nodes}"}
    if params.get("sizing", settings.emr_sizing) == "auto":
        limits = planning.SizingLimits(
            target_seconds=float(params.get("target_minutes") or settings.emr_target_minutes) * 60,
            max_nodes=settings.emr_max_core_instances,
            quota_left=_quota_left(settings, instance["type"]),
            core_spot=settings.emr_core_spot,
        )
        chosen = planning.choose_nodes(work, machine, rates, limits, price)
        machine = machine.with_nodes(chosen["nodes"])
        decision = {
            "mode": "auto", **chosen, "target_seconds": limits.target_seconds,
            "max_nodes": limits.max_nodes, "quota_left": dict(limits.quota_left),
        }  # fmt: skip
    plan = _write_plan(lake, run, planning.make_plan(work, machine, rates, price, decision))
    job_flow = emr.job_flow_spec(
        settings,
        run_id=run_id,
        dag_id=dag_id,
        bootstrap_uri=staged["bootstrap"],
        requirements_uri=staged["requirements"],
        wheelhouse_uri=staged["wheelhouse"],
        instance_type=instance["type"],
        core_instances=machine.nodes,
        vcpu=instance["vcpu"],
        memory_gb=instance["memory_gb"],
    )
    return {"plan": plan, "job_flow": job_flow}


def _rates(lake: Lake, settings: Settings, machine: planning.Machine) -> planning.Rates:
    """The machine's rates from the lake's history, else the bench's engine profile."""
    history = planning.read_history(lake, settings.lake)
    return planning.calibrate(history, machine, planning.read_profile(settings.engine_profile))


def _quota_left(settings: Settings, instance_type: str) -> dict[str, int | None]:
    """vCPUs left of the EC2 quotas by market (None: not a standard family, or the quota is unreadable)."""
    kinds = ["on-demand", "spot"] if settings.emr_core_spot else ["on-demand"]
    if not instance_type.startswith(preflight.STANDARD_FAMILIES):
        return dict.fromkeys(kinds)
    try:
        found = preflight.quota_left(
            clients.aws_client("service-quotas", settings.region, settings.aws_conn_id),
            clients.aws_client("ec2", settings.region, settings.aws_conn_id),
            kinds,
        )
    except ClientError as exc:  # DescribeInstances refused: what runs already is not known
        log.warning("the vCPU quota left could not be read (%s): sizing=auto goes by the maximum alone", exc)
        return dict.fromkeys(kinds)
    return {kind: None if isinstance(q, Exception) else q[0] - q[1] for kind, q in found.items()}


def _write_plan(lake: Lake, run: RunLayout, plan: dict[str, Any]) -> dict[str, Any]:
    lake.write_json(run.plan, plan)
    for line in planning.describe(plan).splitlines():
        print(line)
    return plan


def report(settings: Settings, run: RunLayout, cluster_id: str | None = None) -> str:
    """The report (plots and one HTML page), then `latest.json`: the attempt is finished.

    On the emr target (`cluster_id`), the manifest first gets what the cluster ran and for how long,
    with a cost estimate when a price is configured (`emr.cluster_cost`). The plan's phases get what
    happened beside them, and the attempt's record joins the lake's history (what later plans learn from).
    """
    lake = airflow_lake(settings)
    manifest = lake.read_json(run.manifest)
    featurized = lake.read_json(run.featurize_summary)
    if cluster_id:
        emr_client = clients.aws_client("emr", settings.region, settings.aws_conn_id)
        manifest["emr"] = emr.cluster_cost(
            emr_client, cluster_id, settings.emr_price_per_hour, settings.emr_prices
        )
        try:
            actual = {**emr.cluster_phases(emr_client, cluster_id), **planning.featurize_work(featurized)}
        except ClientError as exc:  # the comparison is a diagnostic: the report goes on without it
            log.warning("the cluster's timelines could not be read (%s): no plan comparison", exc)
            actual = {}
    else:
        actual = planning.local_actuals(featurized, lake.read_json(run.pca_summary))
    plan = manifest.get("plan")
    if plan and actual:
        plan["actual"] = actual
        plan["comparison"] = planning.compare(plan, actual)
        record = planning.history_record(plan, manifest, actual, featurized.get("slots"))
        planning.write_history(lake, settings.lake, record)
    lake.write_json(run.manifest, manifest)
    page = write_report(lake, run)
    runs.publish(lake, run)
    return page


def check_aws(settings: Settings, instance_type: str, core_instances: int | None = None) -> None:
    """Preflight: bucket, roles, release, instance type, subnet and key, before any upload or cost."""
    s3, _ = clients.s3_access(settings.region, settings.encryption, conn_id=settings.aws_conn_id)

    def client(service: clients.Service) -> Any:
        return s3 if service == "s3" else clients.aws_client(service, settings.region, settings.aws_conn_id)

    checks = preflight.run_checks(settings, client, instance_type, core_instances)
    for check in checks:
        print(check)
    failed = preflight.problems(checks)
    if failed:
        raise RuntimeError("AWS preflight failed:\n" + "\n".join(str(c) for c in failed))


def stage_artifacts(settings: Settings, params: Mapping[str, Any]) -> dict[str, Any]:
    """Stage the jobs, bootstrap and wheelhouse under content-hashed prefixes; describe the instance type.

    The wheelhouse is built for the instance type's architecture (x86_64, or aarch64 on Graviton).
    """
    lake = airflow_lake(settings)
    jobs = Path(settings.spark_jobs_dir)
    bootstrap = jobs.parent / "bootstrap"
    staged = staging.stage_code(lake, settings.lake, jobs, bootstrap)
    emr_client = clients.aws_client("emr", settings.region, settings.aws_conn_id)
    types = preflight.supported_instance_types(emr_client, settings.emr_release)
    described = types.get(params["instance_type"], {})
    architecture = described.get("Architecture", "X86_64")
    wheelhouse = staging.stage_wheelhouse(lake, settings.lake, bootstrap / "requirements.txt", architecture)
    return {
        "featurize": staged["featurize.py"],
        "pca": staged["pca.py"],
        "py_files": staged[staging.JOBS_ZIP],
        "bootstrap": staged["install-python-deps.sh"],
        "requirements": staged["requirements.txt"],
        "wheelhouse": wheelhouse,
        # What the plan sizes the cluster and its executors from (ListSupportedInstanceTypes).
        "instance": {
            "type": params["instance_type"],
            "vcpu": int(described.get("VCPU", 4)),
            "memory_gb": float(described.get("MemoryGB", 16.0)),
        },
    }


def unfinished_tasks(states: Mapping[str, str | None], own_task_id: str) -> dict[str, str | None]:
    """The run's tasks, other than `own_task_id`, that did not succeed (the run's verdict)."""
    return {t: s for t, s in sorted(states.items()) if t != own_task_id and s != "success"}


def retention(settings: Settings, staged: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Remove the run outputs (and on EMR old logs and artifacts) that retention lets go."""
    kept = [json.dumps(staged)] if staged else []  # what this run staged stays
    report = retention_policy.apply(
        airflow_lake(settings), settings.lake, settings.retain_attempts, settings.retain_days, staged=kept
    )
    return report.as_dict()


def check_outcome(states: Mapping[str, str | None], own_task_id: str) -> None:
    """The run's verdict: fail unless every other task of the run succeeded.

    Airflow decides a run's state from its last tasks. A run a user marks failed ("Mark as failed")
    while a teardown is still to run stays open until the teardowns have run, then takes the state
    of its last tasks, which the cancel skipped: without this verdict such a run ended *success*
    (tests/test_cancel_live.py).
    """
    unfinished = unfinished_tasks(states, own_task_id)
    if unfinished:
        raise RuntimeError(
            "the run did not complete: " + ", ".join(f"{t} {s}" for t, s in unfinished.items())
        )
