"""The bodies of fruits_pipeline's Python tasks, one function per task, testable without Airflow.

The DAG file (dags/fruits_pipeline.py) wires these to tasks; each takes the settings, the run's
params and what earlier tasks returned, and returns what later tasks need (plain data: XCom).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchard import clients, model_cache, runs
from orchard import retention as retention_policy
from orchard.aws import emr, preflight, staging
from orchard.config import Settings
from orchard.layout import LakeLayout, RunLayout
from orchard.report.render import write_report
from orchard.storage.lake import airflow_lake
from orchard.storage.sync import listing_parquet
from orchard.uris import dataset_name


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


def report(settings: Settings, run: RunLayout, cluster_id: str | None = None) -> str:
    """The report (plots and one HTML page), then `latest.json`: the attempt is finished.

    On the emr target (`cluster_id`), the manifest first gets what the cluster ran and for how long,
    with a cost estimate when a price is configured (`emr.cluster_cost`).
    """
    lake = airflow_lake(settings)
    if cluster_id:
        manifest = lake.read_json(run.manifest)
        manifest["emr"] = emr.cluster_cost(
            clients.aws_client("emr", settings.region, settings.aws_conn_id),
            cluster_id,
            settings.emr_price_per_hour,
            settings.emr_prices,
        )
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


def stage_artifacts(
    settings: Settings, params: Mapping[str, Any], run_id: str, dag_id: str
) -> dict[str, Any]:
    """Stage the jobs, bootstrap and wheelhouse under content-hashed prefixes; build the cluster's spec.

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
    job_flow = emr.job_flow_spec(
        settings,
        run_id=run_id,
        dag_id=dag_id,
        bootstrap_uri=staged["install-python-deps.sh"],
        requirements_uri=staged["requirements.txt"],
        wheelhouse_uri=wheelhouse,
        instance_type=params["instance_type"],
        core_instances=params["core_instances"],
        vcpu=int(described.get("VCPU", 4)),
        memory_gb=float(described.get("MemoryGB", 16.0)),
    )
    return {
        "featurize": staged["featurize.py"],
        "pca": staged["pca.py"],
        "py_files": staged[staging.JOBS_ZIP],
        "job_flow": job_flow,
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
