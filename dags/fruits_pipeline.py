"""
# fruits_pipeline

Turns a folder of fruit photos (one sub-folder per class) into a table of PCA features.

- local target: `upload_images` → `convert_model` → `featurize` → `pca` → `export_csv` → `report`
  (spark-submit, local mode)
- emr target: `check_aws` → `stage_artifacts`, `upload_images` → `convert_model` → `create_cluster` →
  `add_featurize_step` → `wait_featurize` → `add_pca_step` → `wait_pca` → `export_csv` →
  `terminate_cluster` (teardown: it runs whatever happened before it) and `export_csv` → `report`;
  then `check_outcome` (teardown too), the run's verdict: it fails the run unless every other task
  succeeded, so a failed step, or a run marked failed while it waits for a step, ends failed

1. **upload_images** checks the `source` folder (missing or empty: the run stops here, before any
   upload or cluster) and syncs it into the lake (`$ORCHARD_LAKE/images/<dataset>`), skipping files
   that are already there and unchanged (on S3: same size and SHA-256; encrypted).
2. **convert_model** resolves the `weights` and converts MobileNetV2 to ONNX, once per weights: the
   model is kept in the lake (`cache/models/`) and later runs reuse it.
3. **featurize** (Spark, ONNX Runtime in the workers) turns every image into 1280 MobileNetV2
   features; files that cannot be decoded go to `quarantine` with a reason. Nothing is dropped
   silently. Its log shows progress:
   `featurize progress: 300/600 images (50%), tasks 1/2, 57.3 images/s, … s left`.
4. **pca** (Spark) fits a centred PCA with `pca_k` components, or the fewest that explain
   `pca_variance` of the variance.
5. **export_csv** writes one `pcaFeatures.csv` (`path,label,pc_1,…,pc_k`) and `manifest.json`.
6. **report** writes `report/report.html` (one self-contained page) with `scree.png` and
   `pc_scatter.png`; its log prints where they are.

## Reading the report

- **Images**: inputs = featurized + quarantined. Every quarantined file is listed with its reason.
- **Scree plot**: bars are the share of variance each component explains, the line their running
  total; the dashed red line marks the chosen k (and the dotted grey line the variance target).
  A long flat tail means the features are spread over many directions: more components are needed.
- **PC1/PC2 scatter**: one colour per label. Classes that form separate clusters are told apart by
  the first two components alone; overlapping clouds need more components.
- A red banner means the run used untrained weights (seeded random ones, asked for or a fallback
  when the ImageNet weights could not be loaded): its features and plots carry no visual meaning.
- Timings, the weights used and the library versions close the page.

## Runs

`schedule`: `@daily` by default (`ORCHARD_SCHEDULE`: any cron expression, `none` for manual runs
only, or `asset` to run when `orchard_source_watch` sees new images). `catchup` is off, so the first
deploy starts at most one run, and one run is active at a time. Trigger with the form to change any
parameter; the form refuses invalid values and names the field.

Every run writes under `$ORCHARD_LAKE/runs/<run id>/`; `$ORCHARD_LAKE/latest.json` points at the
newest finished run. `manifest.json` says which weights were used: with `weights_fallback=random`,
a run that cannot download the ImageNet weights uses seeded random weights and says so loudly.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, get_current_context, task, teardown

from orchard import emr, steps
from orchard.config import Settings
from orchard.layout import run_layout, slug
from orchard.schedule import dag_schedule

settings = Settings.from_env()
JOBS = settings.spark_jobs_dir
AWS = {"aws_conn_id": settings.aws_conn_id, "region_name": settings.region}

PARAMS = {
    "source": Param(
        settings.default_source,
        type="string",
        minLength=1,
        title="Source folder",
        description="Folder of images, one sub-folder per class (the folder name is the label), "
        "or an s3://bucket/prefix when the lake is on S3.",
    ),
    "pca_k": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=1280,
        title="PCA components",
        description="Number of components. Leave empty to choose by explained variance.",
    ),
    "pca_variance": Param(
        0.9,
        type="number",
        exclusiveMinimum=0,
        maximum=1,
        title="Explained variance target",
        description="Without a component count: the fewest components explaining this share.",
    ),
    "weights": Param(
        settings.weights,
        type="string",
        pattern=r"^(imagenet|random(:[0-9]+)?|.+\.(h5|keras))$",
        title="Model weights",
        description="imagenet, random[:SEED] (offline trials), or a path/URI of a .h5/.keras weights file.",
    ),
    "weights_fallback": Param(
        settings.weights_fallback,
        type="string",
        enum=["random", "fail"],
        title="If ImageNet weights cannot be downloaded",
        description="random: go on with seeded random weights (recorded in the manifest); fail: stop.",
    ),
    "limit": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Image limit",
        description="Process at most this many images (for quick trials). Empty: all.",
    ),
    "partitions": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Spark partitions",
        description="Partitions of the featurize step. Empty: a multiple of the task slots, "
        "~1,000 images per task.",
    ),
}
if settings.target == "emr":
    PARAMS["instance_type"] = Param(
        settings.emr_instance_type,
        type="string",
        pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$",
        title="EMR instance type",
        description="EC2 instance type of the primary and core nodes, e.g. m5.xlarge.",
    )
    PARAMS["core_instances"] = Param(
        settings.emr_core_instances,
        type="integer",
        minimum=1,
        maximum=50,
        title="EMR core nodes",
        description="Number of core nodes (the ones that run the featurization).",
    )

with DAG(
    dag_id="fruits_pipeline",
    doc_md=__doc__,
    # ORCHARD_SCHEDULE: @daily by default, a cron expression, none, or asset (run on new images).
    schedule=dag_schedule(settings),
    # With catchup off, the first deploy runs (at most) the latest interval, never a backlog.
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["orchard", settings.target],
    default_args={"retries": 0},
) as dag:

    @task(multiple_outputs=True)
    def upload_images() -> dict:
        """Mirror the source into the lake and list the run's inputs; returns the run's URIs and the sync."""
        from orchard.export import airflow_lake
        from orchard.storage import listing_parquet

        context = get_current_context()
        params = context["params"]
        started = time.monotonic()
        source, report = sync_source(params["source"], context["run_id"], params["limit"])
        run = run_layout(settings.spark_lake, source.rsplit("/", 1)[-1], context["run_id"])
        sync = {**report.as_dict(), "source": source, "seconds": round(time.monotonic() - started, 3)}
        if report.failed:
            raise OSError(f"{len(report.failed)} files could not be uploaded: {sorted(report.failed)[:5]}")
        # The run reads exactly this listing, whatever else the lake holds.
        listing = listing_parquet(report.inputs)
        airflow_lake(settings).write_bytes(
            f"{run['inputs']}/part-00000.parquet", listing, "application/octet-stream"
        )
        return {**run, "sync": sync, "dataset": slug(source.rsplit("/", 1)[-1]), "image_count": report.files}

    @task(multiple_outputs=True)
    def convert_model(run: dict) -> dict:
        """The ONNX model of the run's weights (converted now, or before by an earlier run)."""
        from orchard.export import airflow_lake
        from orchard.inference import prepare_model

        lake = airflow_lake(settings)
        params = get_current_context()["params"]
        model = prepare_model(lake, run["models"], params["weights"], params["weights_fallback"])
        lake.write_json(run["inference_model"], model)
        return model

    @task
    def export_csv(run: dict) -> str:
        """One pcaFeatures.csv plus the run manifest; returns the CSV's URI."""
        from orchard.export import airflow_lake, export_run

        export_run(airflow_lake(settings), settings.lake, get_current_context()["run_id"], run, run["sync"])
        return run["csv"]

    @task
    def report(run: dict) -> str:
        """Plots and one HTML page summing up the run; its log says where they are."""
        from orchard.export import airflow_lake, write_report

        return write_report(airflow_lake(settings), run)

    upload = upload_images()
    convert = convert_model(upload)

    if settings.target == "local":
        submit = {
            "conn_id": settings.spark_conn_id,
            "conf": steps.local_spark_conf(settings),
            "driver_memory": settings.spark_driver_memory,
            "env_vars": steps.local_env(settings),
        }
        featurize = SparkSubmitOperator(
            task_id="featurize",
            application=f"{JOBS}/featurize.py",
            name="orchard-featurize",
            application_args=steps.featurize_args(upload),
            **submit,
        )
        pca = SparkSubmitOperator(
            task_id="pca",
            application=f"{JOBS}/pca.py",
            name="orchard-pca",
            application_args=steps.pca_args(upload),
            **submit,
        )
        convert >> featurize >> pca >> export_csv(upload) >> report(upload)

    else:

        @task
        def check_aws() -> None:
            """Preflight: bucket, roles, release, instance type, subnet and key, before any upload or cost."""
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            from orchard.preflight import problems, run_checks

            def client(service: str):
                return AwsBaseHook(client_type=service, **AWS).conn

            instance_type = get_current_context()["params"]["instance_type"]
            checks = run_checks(settings, client, instance_type)
            for check in checks:
                print(check)
            failed = problems(checks)
            if failed:
                raise RuntimeError("AWS preflight failed:\n" + "\n".join(str(c) for c in failed))

        @task(multiple_outputs=True)
        def stage_artifacts() -> dict:
            """Stage jobs and bootstrap under a content-hashed prefix; build the cluster spec."""
            import tempfile
            from pathlib import Path

            from orchard import artifacts
            from orchard.s3 import upload_files

            context = get_current_context()
            params = context["params"]
            client = _s3_client()
            with tempfile.TemporaryDirectory() as workdir:
                files = artifacts.collect(Path(JOBS), Path(JOBS).parent / "bootstrap", Path(workdir))
                prefix = f"{settings.lake}/artifacts/{artifacts.content_hash(files)}"
                staged = upload_files(client, files, prefix, settings.encryption)
            wheelhouse = stage_wheelhouse(client, files["requirements.txt"], params["instance_type"])
            job_flow = emr.job_flow_spec(
                settings,
                run_id=context["run_id"],
                dag_id=context["dag"].dag_id,
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

        preflight = check_aws()
        stage = stage_artifacts()
        preflight >> [stage, upload]
        create_cluster = EmrCreateJobFlowOperator(
            task_id="create_cluster", job_flow_overrides=stage["job_flow"], emr_conn_id=None, **AWS
        )
        convert >> create_cluster
        add_featurize_step = EmrAddStepsOperator(
            task_id="add_featurize_step",
            job_flow_id=create_cluster.output,
            steps=[
                emr.spark_step(
                    "orchard-featurize",
                    stage["featurize"],
                    steps.featurize_args(upload),
                    py_files=stage["py_files"],
                )
            ],
            **AWS,
        )
        waiting = {
            "job_flow_id": create_cluster.output,
            "images": upload["image_count"],
            "log_uri": settings.emr_log_uri,
            "deferrable": True,
            "poke_interval": settings.emr_poll_seconds,
            **AWS,
        }
        wait_featurize = emr.ImageStepSensor(
            task_id="wait_featurize",
            step_id=emr.first_step_id("add_featurize_step"),
            # Bootstrap and queueing, then 0.1 s per image: ~1/5 of the reference EMR run's rate
            # (22,688 images in ~8 min on 2 core nodes), so a slow run is not cut short.
            base_seconds=45 * 60,
            seconds_per_image=0.1,
            **waiting,
        )
        add_pca_step = EmrAddStepsOperator(
            task_id="add_pca_step",
            job_flow_id=create_cluster.output,
            steps=[
                emr.spark_step(
                    "orchard-pca", stage["pca"], steps.pca_args(upload), py_files=stage["py_files"]
                )
            ],
            **AWS,
        )
        wait_pca = emr.ImageStepSensor(
            task_id="wait_pca",
            step_id=emr.first_step_id("add_pca_step"),
            base_seconds=20 * 60,
            seconds_per_image=0.01,
            **waiting,
        )
        export = export_csv(upload)
        terminate_cluster = EmrTerminateJobFlowOperator(
            task_id="terminate_cluster", job_flow_id=create_cluster.output, **AWS
        ).as_teardown(setups=create_cluster)
        add_featurize_step >> wait_featurize >> add_pca_step >> wait_pca >> export >> terminate_cluster
        # The report needs the lake only: the cluster need not wait for it.
        reported = report(upload)
        export >> reported

        @teardown(on_failure_fail_dagrun=True)
        def check_outcome() -> None:
            """The run's verdict, last: it fails the run unless every other task of the run succeeded.

            Airflow decides a run's state from its last tasks. A run a user marks failed ("Mark as
            failed") while a teardown is still to run stays open until the teardowns have run, then
            takes the state of its last tasks, which the cancel skipped: without this task such a run
            ended *success* (tests/test_cancel_live.py).
            """
            ti = get_current_context()["ti"]
            states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
            unfinished = {t: s for t, s in sorted(states.items()) if t != ti.task_id and s != "success"}
            if unfinished:
                raise RuntimeError(
                    "the run did not complete: " + ", ".join(f"{t} {s}" for t, s in unfinished.items())
                )

        [terminate_cluster, reported] >> check_outcome()


def stage_wheelhouse(client, requirements, instance_type: str) -> str:
    """The nodes' wheels under artifacts/wheelhouse/<requirements hash>/: built and sent once per hash.

    Built for the instance type's architecture (x86_64, or aarch64 on Graviton types).
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from orchard import artifacts
    from orchard.preflight import supported_instance_types
    from orchard.s3 import existing_sizes, split_uri, upload_files

    types = supported_instance_types(AwsBaseHook(client_type="emr", **AWS).conn, settings.emr_release)
    architecture = types.get(instance_type, {}).get("Architecture", "X86_64")
    digest = artifacts.requirements_hash(requirements, architecture)
    prefix = f"{settings.lake}/artifacts/wheelhouse/{digest}"
    uri = f"{prefix}/{artifacts.WHEELHOUSE}"
    if artifacts.WHEELHOUSE in existing_sizes(client, *split_uri(prefix)):
        return uri
    tar = artifacts.build_wheelhouse(requirements, artifacts.default_cache(), architecture)
    return upload_files(client, {artifacts.WHEELHOUSE: tar}, prefix, settings.encryption)[
        artifacts.WHEELHOUSE
    ]


def sync_source(source: str, run_id: str, limit: int | None):
    """Check `source` (a folder, or an s3:// prefix when the lake is on S3) and mirror it into the lake.

    Returns the source as recorded (a resolved path or the URI) and the sync report. A source on S3
    is copied inside S3: its images never pass through the Airflow worker.
    """
    from pathlib import Path

    from orchard.storage import check_source

    if source.startswith(("s3://", "s3a://")):
        from orchard.s3 import check_s3_source, split_uri, sync_s3_to_s3

        if not settings.lake_on_s3:
            raise ValueError(
                f"param source: {source!r} is on S3; it needs a lake on S3 (ORCHARD_LAKE=s3://...)"
            )
        uri = "s3://" + "/".join(part for part in split_uri(source) if part)
        client = _s3_client()
        try:  # before anything is copied or any cluster is created
            check_s3_source(client, uri)
        except (OSError, ValueError) as exc:
            raise ValueError(f"param source: {exc}") from exc
        images = run_layout(settings.lake, uri.rsplit("/", 1)[-1], run_id)["images"]
        return uri, sync_s3_to_s3(uri, images, client, settings.encryption, limit)
    folder = Path(source).expanduser().resolve()
    try:  # before anything is uploaded or any cluster is created
        check_source(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"param source: {exc}") from exc
    images = run_layout(settings.lake, folder.name, run_id)["images"]
    if settings.lake_on_s3:
        from orchard.s3 import sync_to_s3

        return str(folder), sync_to_s3(folder, images, _s3_client(), settings.encryption, limit)
    from orchard.layout import local_path
    from orchard.storage import sync_folder

    return str(folder), sync_folder(folder, local_path(images), limit=limit)


def _s3_client():
    """S3 client from the Airflow connection (credentials never in code)."""
    from orchard.s3 import airflow_client

    return airflow_client(settings)
