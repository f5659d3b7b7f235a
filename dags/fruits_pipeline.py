"""
# fruits_pipeline

Turns a folder of fruit photos (one sub-folder per class) into a table of PCA features.

- local target: `upload_images` → `convert_model` → `plan` → `featurize` → `pca` → `export_csv` →
  `report` → `retention` (spark-submit, local mode)
- emr target: `check_aws` → `stage_artifacts`, `upload_images` → `convert_model` → `plan` → `create_cluster` →
  `add_featurize_step` → `wait_featurize` → `add_pca_step` → `wait_pca` → `export_csv` →
  `terminate_cluster` (teardown: it runs whatever happened before it) → `report` (with what the
  cluster ran, for how long, and an estimate of its cost when ORCHARD_EMR_PRICE_PER_HOUR is set);
  → `retention`; then `check_outcome` (teardown too), the run's verdict: it fails the run unless
  every other task succeeded, so a failed step, or a run marked failed while it waits for a step, ends failed

1. **upload_images** checks the `source` folder (missing or empty: the run stops here, before any
   upload or cluster) and syncs it into the lake (`$ORCHARD_LAKE/images/<dataset>`), skipping files
   that are already there and unchanged (on S3: same size and SHA-256; encrypted).
2. **convert_model** resolves the `weights` and converts MobileNetV2 to ONNX, once per weights: the
   model is kept in the lake (`cache/models/`) and later runs reuse it.
3. **plan** logs and writes `plan.json` before any step or cluster exists: images to featurize now
   and from the cache, the machines (on EMR: type, count, vCPUs, memory; with `sizing=auto` the
   core nodes meeting `target_minutes` at the lowest predicted cost), each step's predicted
   duration and, with a price, the cost, each figure with what it was measured on. The report sets
   what happened beside it.
4. **featurize** (Spark, ONNX Runtime in the workers) turns every image into 1280 MobileNetV2
   features; files that cannot be decoded go to `quarantine` with a reason. Nothing is dropped
   silently. Its log shows progress:
   `featurize progress: 300/600 images (50%), tasks 1/2, 57.3 images/s, … s left`.
5. **pca** (Spark) fits a centred PCA with `pca_k` components, or the fewest that explain
   `pca_variance` of the variance.
6. **export_csv** writes one `pcaFeatures.csv` (`path,label,pc_1,…,pc_k`) and `manifest.json`.
7. **report** writes `report/report.html` (one self-contained page) with `scree.png` and
   `pc_scatter.png`; its log prints where they are. Open it from the run's **Orchard report** tab.
   Then `latest.json` points at this attempt.

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

Every attempt of a run writes under `$ORCHARD_LAKE/runs/<run id>/attempt-<n>/` (clearing a run
starts attempt n+1; earlier attempts stay as they were), and `$ORCHARD_LAKE/latest.json` moves to an
attempt once its report is written. `manifest.json` says which weights were used: with
`weights_fallback=random`, a run that cannot download the ImageNet weights uses seeded random
weights and says so loudly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.providers.amazon.aws.operators.emr import EmrTerminateJobFlowOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, BaseHook, Param, chain, get_current_context, task, teardown

from orchard.aws import emr
from orchard.config import Settings
from orchard.layout import RunLayout
from orchard.spark import steps
from orchard.tasks import pipeline
from orchard.tasks.notify import failure_callbacks
from orchard.tasks.watch import dag_schedule

settings = Settings.from_env()
JOBS = settings.spark_jobs_dir

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
    "pca_mode": Param(
        settings.pca_mode,
        type="string",
        enum=["refit", "reuse"],
        title="PCA basis",
        description="refit: fit the PCA on this run (component signs aligned to the published basis); "
        "reuse: project on the published basis (latest run's), so the CSVs of runs share axes.",
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
        description="Number of core nodes (the ones that run the featurization), with sizing=fixed.",
    )
    PARAMS["sizing"] = Param(
        settings.emr_sizing,
        type="string",
        enum=["fixed", "auto"],
        title="Cluster sizing",
        description="fixed: core_instances nodes; auto: the nodes the plan predicts to finish within "
        "target_minutes at the lowest predicted cost (within the vCPU quota left and "
        "ORCHARD_EMR_MAX_CORE_INSTANCES).",
    )
    PARAMS["target_minutes"] = Param(
        settings.emr_target_minutes,
        type="number",
        exclusiveMinimum=0,
        title="Target duration (minutes)",
        description="With sizing=auto: how long the cluster's run may take, from its start to its end.",
    )


# The Python tasks: each calls its body in orchard.tasks.pipeline with the run's context.


@task(multiple_outputs=True)
def upload_images() -> dict[str, Any]:
    """Mirror the source into the lake and list the inputs of a new attempt of this run."""
    context = get_current_context()
    return pipeline.upload_images(settings, context["params"], context["run_id"])


@task(multiple_outputs=True)
def convert_model(run: dict[str, Any]) -> dict[str, Any]:
    """The ONNX model of the run's weights (converted now, or before by an earlier run)."""
    return pipeline.convert_model(settings, get_current_context()["params"], RunLayout.from_xcom(run))


@task(task_id="plan", multiple_outputs=False)
def plan_local(run: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Before the steps: the work, this machine, predicted durations (plan.json, and the log)."""
    master = BaseHook.get_connection(settings.spark_conn_id).host
    return pipeline.plan_local(settings, RunLayout.from_xcom(run), model, master)


@task(task_id="plan", multiple_outputs=True)
def plan_emr(run: dict[str, Any], model: dict[str, Any], staged: dict[str, Any]) -> dict[str, Any]:
    """Before the cluster: the work, the cluster (sized by `sizing`), predicted durations and cost."""
    context = get_current_context()
    return pipeline.plan_emr(
        settings, context["params"], RunLayout.from_xcom(run), model, staged, context["run_id"],
        context["dag"].dag_id,
    )  # fmt: skip


@task
def export_csv(run: dict[str, Any], sync: dict[str, Any]) -> str:
    """One pcaFeatures.csv plus the attempt's manifest; returns the CSV's URI."""
    return pipeline.export_csv(settings, RunLayout.from_xcom(run), sync)


@task
def report(run: dict[str, Any], cluster_id: str | None = None) -> str:
    """Plots and one HTML page summing up the run (on EMR, what the cluster cost), then latest.json."""
    return pipeline.report(settings, RunLayout.from_xcom(run), cluster_id)


@task(multiple_outputs=False)
def retention(staged: dict[str, Any] | None = None) -> dict[str, Any]:
    """Remove old attempts (ORCHARD_RETAIN_*), never latest's or an erasure record; on EMR old logs too."""
    return pipeline.retention(settings, staged)


@task
def check_aws() -> None:
    """Preflight: bucket, roles, release, instance type, subnet and key, before any upload or cost."""
    params = get_current_context()["params"]
    # With sizing=auto the plan checks the quota for the nodes it picks; here the smallest cluster.
    nodes = params["core_instances"] if params["sizing"] == "fixed" else 1
    pipeline.check_aws(settings, params["instance_type"], nodes)


@task(multiple_outputs=True)
def stage_artifacts() -> dict[str, Any]:
    """Stage jobs, bootstrap and wheels under content-hashed prefixes; describe the instance type."""
    return pipeline.stage_artifacts(settings, get_current_context()["params"])


@teardown(on_failure_fail_dagrun=True)
def check_outcome() -> None:
    """The run's verdict, last: it fails the run unless every other task of the run succeeded."""
    ti = get_current_context()["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    pipeline.check_outcome(states, ti.task_id)


# The two targets: one chain each, in the order the tasks run.


def local_pipeline() -> None:
    """featurize → pca with spark-submit (Spark local mode), then the CSV and the report."""
    submit = {
        "conf": steps.local_spark_conf(settings),
        "driver_memory": settings.spark_driver_memory,
        "env_vars": steps.local_env(settings),
    }
    upload = upload_images()
    featurize = SparkSubmitOperator(
        task_id="featurize",
        application=f"{JOBS}/featurize.py",
        name="orchard-featurize",
        application_args=steps.dag_featurize_args(),
        **submit,
    )
    pca = SparkSubmitOperator(
        task_id="pca",
        application=f"{JOBS}/pca.py",
        name="orchard-pca",
        application_args=steps.dag_pca_args(),
        **submit,
    )
    # The step arguments read the run's layout from the upload's XCom (templates): say so as edges.
    upload >> [featurize, pca]
    chain(
        upload,
        plan_local(upload["run"], convert_model(upload["run"])),
        featurize,
        pca,
        export_csv(upload["run"], upload["sync"]),
        report(upload["run"]),
        retention(),
    )


# How long a step may take: a fixed part (bootstrap, queueing) and a part per image. The sensor
# waits that long; the cluster itself stops the step TIME_LIMIT_GRACE later (emr.spark_step).
# Featurize: 0.1 s per image, ~1/5 of the rate of an EMR run the project was seeded with (22,688
# images in ~8 min on 2 core nodes; the seeds' figure, not measured here), so a slow run is not cut short.
FEATURIZE_WAIT = {"base_seconds": 45 * 60, "seconds_per_image": 0.1}
PCA_WAIT = {"base_seconds": 20 * 60, "seconds_per_image": 0.01}


def emr_pipeline() -> None:
    """Preflight and staging, a cluster, the two steps each waited on, the CSV, and the teardowns."""
    # SETUP: nothing is uploaded, staged or created before the preflight passes.
    preflight = check_aws()
    stage = stage_artifacts()
    upload = upload_images()
    planned = plan_emr(upload["run"], convert_model(upload["run"]), stage)
    create_cluster = emr.RunClusterOperator(
        task_id="create_cluster", job_flow_overrides=planned["job_flow"], emr_conn_id=None
    )
    # BODY: each step added, then waited on (the wait sized to the number of images).
    waiting = {
        "job_flow_id": create_cluster.output,
        "images": upload["image_count"],
        "log_uri": settings.emr_log_uri,
        "deferrable": True,
        "poke_interval": settings.emr_poll_seconds,
    }
    add_featurize_step = emr.RunStepsOperator(
        task_id="add_featurize_step",
        job_flow_id=create_cluster.output,
        steps=[
            emr.spark_step(
                "orchard-featurize",
                stage["featurize"],
                steps.dag_featurize_args(),
                py_files=stage["py_files"],
                time_limit=emr.time_limit_template("upload_images", **FEATURIZE_WAIT),
            )
        ],
    )
    wait_featurize = emr.ImageStepSensor(
        task_id="wait_featurize", step_id=emr.first_step_id("add_featurize_step"), **FEATURIZE_WAIT, **waiting
    )
    add_pca_step = emr.RunStepsOperator(
        task_id="add_pca_step",
        job_flow_id=create_cluster.output,
        steps=[
            emr.spark_step(
                "orchard-pca",
                stage["pca"],
                steps.dag_pca_args(),
                py_files=stage["py_files"],
                time_limit=emr.time_limit_template("upload_images", **PCA_WAIT),
            )
        ],
    )
    wait_pca = emr.ImageStepSensor(
        task_id="wait_pca", step_id=emr.first_step_id("add_pca_step"), **PCA_WAIT, **waiting
    )
    export = export_csv(upload["run"], upload["sync"])
    # TEARDOWN: the cluster ends whatever happened before it; the report follows it (what the
    # cluster ran and cost; the cluster never waits for the report); the run's verdict comes last.
    terminate_cluster = EmrTerminateJobFlowOperator(
        task_id="terminate_cluster", job_flow_id=create_cluster.output
    ).as_teardown(setups=create_cluster)
    reported = report(upload["run"], create_cluster.output)

    chain(preflight, [stage, upload])
    chain(planned, create_cluster)
    # The step arguments read the run's layout from the upload's XCom (templates): say so as edges.
    upload >> [add_featurize_step, add_pca_step]
    chain(add_featurize_step, wait_featurize, add_pca_step, wait_pca, export, terminate_cluster, reported)
    export >> reported
    chain([terminate_cluster, reported >> retention(stage)], check_outcome())


with DAG(
    dag_id="fruits_pipeline",
    doc_md=__doc__,
    # ORCHARD_SCHEDULE: @daily by default, a cron expression, none, or asset (run on new images).
    schedule=dag_schedule(settings),
    # With catchup off, the first deploy runs (at most) the latest interval, never a backlog.
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    # ORCHARD_NOTIFY_*: a failed run sends e-mail and/or a webhook message (off unless set).
    on_failure_callback=failure_callbacks(settings),
    params=PARAMS,
    tags=["orchard", settings.target],
    # Operators take the arguments they accept from here: the AWS and Spark connections.
    default_args={
        "retries": 0,
        "aws_conn_id": settings.aws_conn_id,
        "region_name": settings.region,
        "conn_id": settings.spark_conn_id,
    },
    user_defined_macros={**steps.MACROS, "step_time_limit": emr.step_time_limit},
) as dag:
    if settings.target == "local":
        local_pipeline()
    else:
        emr_pipeline()
