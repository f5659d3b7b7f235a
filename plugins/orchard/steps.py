"""Arguments and Spark configuration of the two Spark steps, as data.

The arguments are Jinja templates, rendered when a Spark task runs: the paths from the RunLayout of
the attempt the upload task started (`run_layout(ti)`, a DAG macro), the choices from the params.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchard import spark_home
from orchard.config import Settings
from orchard.layout import RunLayout

# One Arrow batch is one inference batch; 64 images keep a worker's memory near 1 GB.
ARROW_BATCH = 64


UPLOAD_TASK = "upload_images"


def run_layout(ti: Any) -> RunLayout:
    """The RunLayout of the attempt the upload task of this run started (a template macro)."""
    return RunLayout.from_xcom(ti.xcom_pull(task_ids=UPLOAD_TASK, key="run"))


def _run(name: str) -> str:
    return f"{{{{ run_layout(ti).{name} }}}}"


def featurize_args() -> list[str]:
    """Command-line arguments of spark_jobs/featurize.py, as templates over the run and its params."""
    return [
        "--images", _run("images"),
        "--features", _run("features"),
        "--quarantine", _run("quarantine"),
        "--summary", _run("featurize_summary"),
        "--model", _run("inference_model"),
        "--inputs", _run("inputs"),
        "--partitions", "{{ params.partitions or 0 }}",
        "--limit", "{{ params.limit or 0 }}",
        "--cache", _run("cache"),
    ]  # fmt: skip


def pca_args() -> list[str]:
    """Command-line arguments of spark_jobs/pca.py, as templates over the run and its params."""
    return [
        "--features", _run("features"),
        "--pca", _run("pca"),
        "--model", _run("model"),
        "--summary", _run("pca_summary"),
        "--csv-parts", _run("csv_parts"),
        "--k", "{{ params.pca_k or 0 }}",
        "--variance", "{{ params.pca_variance }}",
    ]  # fmt: skip


MACROS = {"run_layout": run_layout}


def spark_conf() -> dict[str, str]:
    """Spark configuration both steps run with, on any target."""
    return {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Neither S3 nor a local folder has block locations to schedule tasks by, so Spark lists
        # the images without fetching them (as SQLConf's doc of the key advises for remote data).
        # Listing 100,000 local files: 136 -> 125 MB of live driver heap (no BlockLocation each).
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
        # Spark's 4 MB default assumes (~32 per task): ~4 % faster on 600 images (bench). Not on
        # EMR, where each S3 open is a request and more, smaller tasks read in parallel.
        "spark.sql.files.openCostInBytes": str(64 * 1024),
    }
    if settings.lake_on_s3:
        conf |= {
            "spark.hadoop.fs.s3a.aws.credentials.provider": (
                "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
            ),
            "spark.hadoop.fs.s3a.endpoint.region": settings.region,
            # What the steps write is encrypted like every other write to the lake.
            "spark.hadoop.fs.s3a.encryption.algorithm": "SSE-KMS" if settings.kms_key_id else "SSE-S3",
        }
        if settings.kms_key_id:
            conf["spark.hadoop.fs.s3a.encryption.key"] = settings.kms_key_id
        if settings.s3_endpoint:
            conf |= {
                "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
            }
    return conf


# A local step's JVM: its quick compiler only, and the serial collector with a tighter heap (see
# local_java_options). The class archive is dumped by a JVM with the same options (orchard.jvm_archive).
LOCAL_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:MinHeapFreeRatio=20 -XX:MaxHeapFreeRatio=40"


def local_java_options(settings: Settings) -> str:
    """JVM options of a local step's driver (which is also its executor): a short-lived JVM.

    C1 only: C2's compiler threads compete with the Python workers for the cores, and a step ends
    before C2's code pays off (bench: the featurize step on 600 images 21.1 -> 15.7 s, on 8,000 the
    JVM's CPU time 37 -> 21 s). With the class archive (orchard.jvm_archive) the classes Spark
    loads at every start are mapped instead of loaded: 15.7 -> 11.6 s on 600 images.

    The serial collector: its heap follows the live data (a few hundred MB: Spark's file index
    and the batches in flight), where G1's grew with the step's length towards the 2 GiB bound.
    Featurize step, whole process tree, same speed: 8,000 images 1.74 -> 1.37 GiB (28.7-30.5 vs
    28.6-28.8 s), 100,000 images 2.35 -> 1.75 GiB (291 vs 283 s).

    By default the serial collector keeps 40-70 % of the old generation free after a full
    collection, and sizes the young generation at half the old: the heap was ~2.5x the live data,
    so the file index's growth with the input (~1.3 KB per image) counted 2.5 times. With 20-40 %
    free: 100,000 images 1.75 -> 1.55 GiB (20 full collections instead of 7, 4.0 s of 304 s),
    8,000 images 1.37 -> 1.35 GiB (29.5-30.0 vs 31.5-32.9 s).
    """
    options = [LOCAL_JVM]
    archive = settings.spark_class_archive
    if archive and " " not in archive and Path(archive).is_file():
        options.append(f"-XX:SharedArchiveFile={archive}")
    return " ".join(options)


def local_env(settings: Settings) -> dict[str, str]:
    """Environment of a local spark-submit: the Python that has the jobs' packages, and their modules.

    With the local Spark home (orchard.spark_home) when it exists and the environment names no
    Spark home of its own: the steps' Python processes then import the installed pyspark, not
    its zipped sources (~0.5 s less per process).
    """
    env = {
        "PYSPARK_PYTHON": settings.pyspark_python,
        "PYSPARK_DRIVER_PYTHON": settings.pyspark_python,
        "PYTHONPATH": settings.spark_jobs_dir,
    }
    home = settings.spark_home
    if home and "SPARK_HOME" not in os.environ and spark_home.is_home(Path(home)):
        env["SPARK_HOME"] = home
    return env
