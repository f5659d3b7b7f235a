"""The bodies of fruits_pipeline's Python tasks, one function per task, testable without Airflow.

The DAG file (dags/fruits_pipeline.py) wires these to tasks; each takes the settings, the run's
params and what earlier tasks returned, and returns what later tasks need (plain data: XCom).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchard import emr
from orchard.config import Settings
from orchard.lake import Lake, airflow_lake, source_location
from orchard.layout import LakeLayout, RunLayout

log = logging.getLogger(__name__)


def dataset_name(source: str) -> str:
    """The dataset a source feeds: its folder's (or S3 prefix's) last name."""
    return source_location(source).rsplit("/", 1)[-1]


def next_attempt(lake: Lake, lake_uri: str, run_id: str) -> int:
    """1 + the highest attempt of `run_id` the lake holds (1 for a new run).

    Taken from the lake, not from Airflow's try number: whatever re-runs the upload (a clear in
    the UI, `airflow dags test` on the same run, a retry), it never writes into an attempt readers saw.
    """
    from orchard.export import attempts

    return max(attempts(lake, lake_uri, run_id), default=0) + 1


def upload_images(settings: Settings, params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Mirror the source into the lake and list the inputs of a new attempt of the run.

    Returns the attempt's layout (RunLayout.to_xcom), the sync's account and the number of inputs.
    Raises ValueError (naming the source) before any copy when the source is missing or
    empty, and OSError when files could not be copied.
    """
    lake = airflow_lake(settings)
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
    attempt = next_attempt(lake, settings.lake, run_id)
    run = LakeLayout(settings.spark_lake).run(dataset, run_id, attempt)
    # The attempt reads exactly this listing, whatever else the lake holds.
    from orchard.storage import listing_parquet

    lake.write_bytes(run.inputs_file, listing_parquet(report.inputs))
    return {"run": run.to_xcom(), "sync": sync, "image_count": report.files}


def convert_model(settings: Settings, params: Mapping[str, Any], run: RunLayout) -> dict[str, Any]:
    """The ONNX model of the run's weights (converted now, or taken from the lake)."""
    from orchard.inference import prepare_model

    lake = airflow_lake(settings)
    model = prepare_model(lake, run.models, params["weights"], params["weights_fallback"])
    lake.write_json(run.inference_model, model)
    return model


def export_csv(settings: Settings, run: RunLayout, sync: Mapping[str, Any]) -> str:
    """One pcaFeatures.csv plus the attempt's manifest; returns the CSV's URI."""
    from orchard.export import export_run

    export_run(airflow_lake(settings), run, sync)
    return run.csv


def report(settings: Settings, run: RunLayout, cluster_id: str | None = None) -> str:
    """The report (plots and one HTML page), then `latest.json`: the attempt is finished.

    On the emr target (`cluster_id`), the manifest first gets what the cluster ran and for how long,
    with a cost estimate when a price is configured (`emr.cluster_cost`).
    """
    from orchard.export import publish, write_report

    lake = airflow_lake(settings)
    if cluster_id:
        manifest = lake.read_json(run.manifest)
        client = aws_client(settings, "emr")
        manifest["emr"] = emr.cluster_cost(
            client, cluster_id, settings.emr_price_per_hour, settings.emr_prices
        )
        lake.write_json(run.manifest, manifest)
    page = write_report(lake, run)
    publish(lake, run)
    return page


def aws_client(settings: Settings, service: str) -> Any:
    """A boto3 client of an AWS service other than S3, from the Airflow connection.

    S3 goes through the lake (orchard.lake), which builds its clients with retries.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(
        client_type=service, aws_conn_id=settings.aws_conn_id, region_name=settings.region
    ).conn


def check_aws(settings: Settings, instance_type: str) -> None:
    """Preflight: bucket, roles, release, instance type, subnet and key, before any upload or cost."""
    from orchard.preflight import problems, run_checks

    def client(service: str) -> Any:
        return airflow_lake(settings).client if service == "s3" else aws_client(settings, service)

    checks = run_checks(settings, client, instance_type)
    for check in checks:
        print(check)
    failed = problems(checks)
    if failed:
        raise RuntimeError("AWS preflight failed:\n" + "\n".join(str(c) for c in failed))


def stage_artifacts(
    settings: Settings, params: Mapping[str, Any], run_id: str, dag_id: str
) -> dict[str, Any]:
    """Stage the jobs and bootstrap under a content-hashed prefix; build the cluster's spec."""
    from orchard import artifacts
    from orchard.s3 import upload_files

    client = airflow_lake(settings).client
    jobs = Path(settings.spark_jobs_dir)
    shared = LakeLayout(settings.lake)
    with tempfile.TemporaryDirectory() as workdir:
        files = artifacts.collect(jobs, jobs.parent / "bootstrap", Path(workdir))
        staged = upload_files(
            client, files, shared.artifacts(artifacts.content_hash(files)), settings.encryption
        )
        wheelhouse = stage_wheelhouse(settings, files["requirements.txt"], params["instance_type"])
    job_flow = emr.job_flow_spec(
        settings,
        run_id=run_id,
        dag_id=dag_id,
        bootstrap_uri=staged["install-python-deps.sh"],
        requirements_uri=staged["requirements.txt"],
        wheelhouse_uri=wheelhouse,
        instance_type=params["instance_type"],
        core_instances=params["core_instances"],
    )
    return {
        "featurize": staged["featurize.py"],
        "pca": staged["pca.py"],
        "py_files": staged[artifacts.JOBS_ZIP],
        "job_flow": job_flow,
    }


def stage_wheelhouse(settings: Settings, requirements: Path, instance_type: str) -> str:
    """The nodes' wheels under artifacts/wheelhouse/<requirements hash>/: built and sent once per hash.

    Built for the instance type's architecture (x86_64, or aarch64 on Graviton types).
    """
    from orchard import artifacts
    from orchard.preflight import supported_instance_types
    from orchard.s3 import upload_files

    types = supported_instance_types(aws_client(settings, "emr"), settings.emr_release)
    architecture = types.get(instance_type, {}).get("Architecture", "X86_64")
    lake = airflow_lake(settings)
    prefix = LakeLayout(settings.lake).wheelhouse(artifacts.requirements_hash(requirements, architecture))
    uri = f"{prefix}/{artifacts.WHEELHOUSE}"
    if lake.exists(uri):
        return uri
    tar = artifacts.build_wheelhouse(requirements, artifacts.default_cache(), architecture)
    return upload_files(lake.client, {artifacts.WHEELHOUSE: tar}, prefix, settings.encryption)[
        artifacts.WHEELHOUSE
    ]


def unfinished_tasks(states: Mapping[str, str | None], own_task_id: str) -> dict[str, str | None]:
    """The run's tasks, other than `own_task_id`, that did not succeed (the run's verdict)."""
    return {t: s for t, s in sorted(states.items()) if t != own_task_id and s != "success"}
