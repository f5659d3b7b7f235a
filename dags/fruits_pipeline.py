"""
# fruits_pipeline

Turns a folder of fruit photos (one sub-folder per class) into a table of PCA features:

`upload_images` → `featurize` → `pca` → `export_csv`

1. **upload_images** syncs the source folder into the lake (`$ORCHARD_LAKE/images/<dataset>`),
   skipping files that are already there and unchanged.
2. **featurize** (Spark) turns every image into 1280 MobileNetV2 features; files that cannot be
   decoded go to `quarantine` with a reason. Nothing is dropped silently.
3. **pca** (Spark) fits a centred PCA with `pca_k` components, or the fewest that explain
   `pca_variance` of the variance.
4. **export_csv** writes one `pcaFeatures.csv` (`path,label,pc_1,…,pc_k`) and `manifest.json`.

Every run writes under `$ORCHARD_LAKE/runs/<run id>/`; `$ORCHARD_LAKE/latest.json` points at the
newest finished run. `manifest.json` says which weights were used: with `weights_fallback=random`,
a run that cannot download the ImageNet weights uses seeded random weights and says so loudly.
"""

from __future__ import annotations

import time

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, get_current_context, task

from orchard import steps
from orchard.config import Settings
from orchard.layout import run_layout, slug

settings = Settings.from_env()
JOBS = settings.spark_jobs_dir

PARAMS = {
    "source": Param(
        settings.default_source,
        type="string",
        minLength=1,
        title="Source folder",
        description="Folder of images, one sub-folder per class (the folder name is the label).",
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
        description="Partitions of the featurize step. Empty: Spark's default parallelism.",
    ),
}

with DAG(
    dag_id="fruits_pipeline",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["orchard", settings.target],
    default_args={"retries": 0},
) as dag:

    @task(multiple_outputs=True)
    def upload_images() -> dict:
        """Sync the source folder into the lake; returns the run's URIs and the sync report."""
        from pathlib import Path

        from orchard.layout import local_path
        from orchard.storage import sync_folder

        context = get_current_context()
        params = context["params"]
        source = Path(params["source"]).expanduser().resolve()
        run = run_layout(settings.lake, source.name, context["run_id"])
        started = time.monotonic()
        report = sync_folder(source, local_path(run["images"]), limit=params["limit"])
        sync = {**report.as_dict(), "source": str(source), "seconds": round(time.monotonic() - started, 3)}
        if report.failed:
            raise OSError(f"{len(report.failed)} files could not be copied: {sorted(report.failed)[:5]}")
        return {**run, "sync": sync, "dataset": slug(source.name)}

    upload = upload_images()

    featurize = SparkSubmitOperator(
        task_id="featurize",
        conn_id=settings.spark_conn_id,
        application=f"{JOBS}/featurize.py",
        name="orchard-featurize",
        application_args=steps.featurize_args(upload),
        conf=steps.spark_conf(),
        driver_memory=settings.spark_driver_memory,
        env_vars=steps.local_env(settings),
    )

    pca = SparkSubmitOperator(
        task_id="pca",
        conn_id=settings.spark_conn_id,
        application=f"{JOBS}/pca.py",
        name="orchard-pca",
        application_args=steps.pca_args(upload),
        conf=steps.spark_conf(),
        driver_memory=settings.spark_driver_memory,
        env_vars=steps.local_env(settings),
    )

    @task
    def export_csv(run: dict) -> str:
        """One pcaFeatures.csv plus the run manifest; returns the CSV's URI."""
        from orchard.export import export_run

        export_run(get_current_context()["run_id"], run, run["sync"], settings.lake)
        return run["csv"]

    featurize >> pca >> export_csv(upload)
