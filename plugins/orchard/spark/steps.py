"""The two Spark steps' command lines and Spark configuration, written once.

`featurize_args` and `pca_args` are the contract of spark_jobs/featurize.py and pca.py: the DAG
passes templates over the attempt's RunLayout (`StepPaths.templates()`, rendered when a Spark task
runs), the class-archive builder and the bench pass a RunLayout's URIs (`StepPaths.of(run)`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchard.config import Settings
from orchard.layout import RunLayout
from orchard.spark import home

# One Arrow batch is one inference batch; 64 images keep a worker's memory near 1 GB.
ARROW_BATCH = 64
UPLOAD_TASK = "upload_images"
MODEL_TASK = "convert_model"


@dataclass(frozen=True)
class StepPaths:
    """The URIs the two steps read and write: a RunLayout's, or templates that render to them."""

    images: str
    inputs: str
    features: str
    quarantine: str
    featurize_summary: str
    inference_model: str
    pca: str
    model: str
    pca_summary: str
    csv_parts: str
    cache: str | None = None  # the shared features cache; None: every image featurized (the bench)

    @classmethod
    def of(cls, run: RunLayout) -> StepPaths:
        """The paths of one attempt."""
        return cls(**{f.name: getattr(run, f.name) for f in fields(cls)})

    @classmethod
    def templates(cls) -> StepPaths:
        """The paths as Jinja templates over `run_layout(ti)` (a DAG macro), rendered when a step runs:
        the DAG's steps learn their attempt only then, from the upload's XCom."""
        return cls(**{f.name: f"{{{{ run_layout(ti).{f.name} }}}}" for f in fields(cls)})


def featurize_args(run: StepPaths, *, partitions: object = 0, limit: object = 0) -> list[str]:
    """Command-line arguments of spark_jobs/featurize.py."""
    return [
        "--images", run.images,
        "--features", run.features,
        "--quarantine", run.quarantine,
        "--summary", run.featurize_summary,
        "--model", run.inference_model,
        "--inputs", run.inputs,
        "--partitions", str(partitions),
        "--limit", str(limit),
        *(["--cache", run.cache] if run.cache else []),
    ]  # fmt: skip


def pca_args(run: StepPaths, *, k: object = 0, variance: object = 0.9, mode: object = "refit",
             basis: object = "", basis_summary: object = "") -> list[str]:  # fmt: skip
    """Command-line arguments of spark_jobs/pca.py."""
    return [
        "--features", run.features,
        "--pca", run.pca,
        "--model", run.model,
        "--summary", run.pca_summary,
        "--csv-parts", run.csv_parts,
        "--k", str(k),
        "--variance", str(variance),
        "--mode", str(mode),
        "--basis", str(basis),
        "--basis-summary", str(basis_summary),
        *(["--cache", run.cache] if run.cache else []),
    ]  # fmt: skip


def run_layout(ti: Any) -> RunLayout:
    """The RunLayout of the attempt the upload task of this run started (a template macro)."""
    return RunLayout.from_xcom(ti.xcom_pull(task_ids=UPLOAD_TASK, key="run"))


def basis_layout(ti: Any) -> RunLayout | None:
    """The attempt whose PCA model is published (latest), if this run may use it (a template macro).

    `convert_model` decides (`runs.published_basis`); the layout is rebuilt on this run's lake URI,
    the one the Spark steps address (s3a:// for a local Spark on S3).
    """
    basis = ti.xcom_pull(task_ids=MODEL_TASK, key="basis")
    if not basis:
        return None
    published = RunLayout.from_xcom(basis)
    return RunLayout(run_layout(ti).lake, published.dataset, published.run_id, published.attempt)


def _basis(name: str) -> str:
    return f"{{{{ basis_layout(ti).{name} if basis_layout(ti) else '' }}}}"


def dag_featurize_args() -> list[str]:
    """featurize_args as the DAG passes them: the attempt's paths and the run's params, as templates."""
    return featurize_args(
        StepPaths.templates(), partitions="{{ params.partitions or 0 }}", limit="{{ params.limit or 0 }}"
    )


def dag_pca_args() -> list[str]:
    """pca_args as the DAG passes them: the attempt's paths and the run's params, as templates."""
    return pca_args(
        StepPaths.templates(),
        k="{{ params.pca_k or 0 }}",
        variance="{{ params.pca_variance }}",
        mode="{{ params.pca_mode }}",
        basis=_basis("model"),
        basis_summary=_basis("pca_summary"),
    )


MACROS = {"run_layout": run_layout, "basis_layout": basis_layout}


def spark_conf() -> dict[str, str]:
    """Spark configuration both steps run with, on any target."""
    return {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Neither S3 nor a local folder has block locations to schedule tasks by, so Spark lists
        # the images without fetching them (as SQLConf's doc of the key advises for remote data).
        "spark.sql.sources.ignoreDataLocality": "true",
        # Spark's INFO lines would bury the jobs' own progress and summaries in the task log.
        "spark.log.level": "WARN",
    }


def local_spark_conf(settings: Settings) -> dict[str, str]:
    """spark_conf() plus, for a lake on S3 or an S3-compatible store, the s3a connector's settings.

    Credentials are not in here: s3a reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the
    environment of the Spark process, as the AWS SDK does everywhere else.
    """
    # Python workers fork from a daemon that has already imported their libraries. Local steps
    # only: on a cluster the jobs' modules arrive with --py-files, which Spark puts on a worker's
    # sys.path per task, after the daemon has started (the standalone-cluster test showed it).
    conf = spark_conf() | {
        "spark.python.daemon.module": "orchard_jobs.daemon",
        "spark.driver.extraJavaOptions": local_java_options(settings),
        # Opening a local file costs little, so a scan task may read more small images than
        # Spark's 4 MB default assumes (~32 per task). Not on EMR, where each S3 open is a
        # request and more, smaller tasks read in parallel.
        "spark.sql.files.openCostInBytes": str(64 * 1024),
    }
    if settings.lake_on_s3:
        conf |= {
            "spark.hadoop.fs.s3a.aws.credentials.provider": (
                "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
            ),
            "spark.hadoop.fs.s3a.endpoint.region": settings.region,
        }
        # What the steps write is encrypted like every other write to the lake (Settings.encryption).
        algorithm = {"aws:kms": "SSE-KMS", "AES256": "SSE-S3"}.get(
            settings.encryption.get("ServerSideEncryption", "")
        )
        if algorithm:
            conf["spark.hadoop.fs.s3a.encryption.algorithm"] = algorithm
        if settings.kms_key_id:
            conf["spark.hadoop.fs.s3a.encryption.key"] = settings.kms_key_id
        if settings.s3_endpoint:
            conf |= {
                "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
            }
    return conf


# A local step's JVM: its quick compiler only, and the serial collector with a tighter heap (see
# local_java_options). The class archive is dumped by a JVM with the same options (orchard.dev.jvm_archive).
LOCAL_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:MinHeapFreeRatio=20 -XX:MaxHeapFreeRatio=40"


def local_java_options(settings: Settings) -> str:
    """JVM options of a local step's driver (which is also its executor): a short-lived JVM.

    C1 only: C2's compiler threads compete with the Python workers for the cores, and a step ends
    before C2's code pays off. The serial collector, kept 20-40 % free: its heap follows the live
    data, where G1's grew towards its bound. With the class archive (orchard.dev.jvm_archive) the
    classes Spark loads at every start are mapped, not loaded. Figures: docs/performance.md, "Local steps".
    """
    options = [LOCAL_JVM]
    archive = settings.spark_class_archive
    if archive and " " not in archive and Path(archive).is_file():
        options.append(f"-XX:SharedArchiveFile={archive}")
    return " ".join(options)


def local_env(settings: Settings) -> dict[str, str]:
    """Environment of a local spark-submit: the Python that has the jobs' packages, and their modules.

    With the local Spark home (orchard.spark.home) when it exists and the environment names no
    Spark home of its own: the steps' Python processes then import the installed pyspark, not
    its zipped sources (~0.5 s less per process).
    """
    env = {
        "PYSPARK_PYTHON": settings.pyspark_python,
        "PYSPARK_DRIVER_PYTHON": settings.pyspark_python,
        "PYTHONPATH": settings.spark_jobs_dir,
    }
    spark_home = settings.spark_home
    if spark_home and "SPARK_HOME" not in os.environ and home.is_home(Path(spark_home)):
        env["SPARK_HOME"] = spark_home
    return env
