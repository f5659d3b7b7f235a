"""A class archive (CDS) for the driver JVM of the local Spark steps.

    python -m orchard.dev.jvm_archive [--force]      (make demo and make bench run it)

Every local step is a new JVM that loads Spark's classes anew: ~3 s of a step's session start on
this kind of machine. A dynamic class-data-sharing archive, dumped at the exit of one real run of
both steps, lets later JVMs map those classes instead (`-XX:SharedArchiveFile`,
`orchard.spark.steps.local_java_options`). The archive holds the classes of this pyspark's jars and this
JDK; a JVM that finds it does not match (another JDK, other jars) warns and runs without it.
JDK documentation: https://docs.oracle.com/en/java/javase/17/vm/class-data-sharing.html
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchard.config import Settings
from orchard.layout import LakeLayout, RunLayout
from orchard.model_cache import prepare_model
from orchard.samples import generate
from orchard.spark import steps
from orchard.storage.lake import Lake
from orchard.storage.sync import listing_parquet, sync_folder
from orchard.uris import local_path, on_s3

# Run by spark-submit (see build): both steps, one after the other, in one application.
STEPS = "--steps"


def build(settings: Settings, archive: Path) -> float:
    """Run both steps once on generated images, dumping the classes they load to `archive`."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orchard-jvm-archive-") as tmp:
        work = Path(tmp)
        run = _run(work)
        generate(work / "source", per_class=2)
        report = sync_folder(work / "source", local_path(run.images))  # as the upload task does
        local_path(run.inputs_file).parent.mkdir(parents=True)
        local_path(run.inputs_file).write_bytes(listing_parquet(report.inputs))
        # In a local lake's model folder: the demo's offline fallback (random:42) is then converted.
        local = not on_s3(settings.lake)
        models = LakeLayout(settings.lake).models if local else f"file://{work}/models"
        model = prepare_model(Lake.local(), models, "random:42", "fail")
        local_path(run.inference_model).write_text(json.dumps(model), encoding="utf-8")
        # Dumped beside the archive and renamed: a JVM never maps a half-written file.
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
        conf = steps.local_spark_conf(settings) | {
            "spark.driver.extraJavaOptions": f"{steps.LOCAL_JVM} -XX:ArchiveClassesAtExit={partial}"
        }
        command = [
            "spark-submit", "--master", "local[2]", "--driver-memory", settings.spark_driver_memory,
            *[a for key, value in conf.items() for a in ("--conf", f"{key}={value}")],
            __file__, STEPS, str(work),
        ]  # fmt: skip
        env = {**os.environ, **steps.local_env(settings)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"building the class archive failed ({done.returncode}): {done.stderr[-3000:]}"
            )
        os.replace(partial, archive)
    return time.monotonic() - started


def _run(work: Path) -> RunLayout:
    """The attempt the archive's steps run as, in `work`."""
    return LakeLayout(f"file://{work}/lake").run("images", "class-archive")


def run_steps(work: Path) -> None:
    """Both steps on `work`'s images in one Spark application (the archive's class list)."""
    # In spark-submit only: spark_jobs is on its PYTHONPATH there.
    import featurize  # ruff: ignore[import-outside-top-level]
    import pca  # ruff: ignore[import-outside-top-level]
    from pyspark.sql import SparkSession  # ruff: ignore[import-outside-top-level]

    spark = SparkSession.builder.appName("orchard-jvm-archive").getOrCreate()
    paths = steps.StepPaths.of(_run(work))
    featurize.run(spark, featurize.parse_args(steps.featurize_args(paths)))
    pca.run(spark, pca.parse_args(steps.pca_args(paths, k=2)))
    spark.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchard.dev.jvm_archive", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build it even when it exists")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if not settings.spark_class_archive:
        print("ORCHARD_SPARK_CLASS_ARCHIVE is empty: the local steps run without a class archive")
        return 0
    archive = Path(settings.spark_class_archive)
    if archive.is_file() and not args.force:
        print(f"class archive: {archive} (exists)")
        return 0
    seconds = build(settings, archive)
    print(f"class archive: {archive} ({archive.stat().st_size / 2**20:.0f} MiB, built in {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == STEPS:  # in spark-submit: spark_jobs is on PYTHONPATH
        run_steps(Path(sys.argv[2]))
    else:
        sys.exit(main())
