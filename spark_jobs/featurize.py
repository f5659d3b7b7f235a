"""Spark step 1: images -> MobileNetV2 features (Parquet) + quarantine (Parquet) + summary (JSON).

    spark-submit featurize.py --images URI --features URI --quarantine URI --summary URI \
        --model URI [--inputs URI] [--partitions N] [--limit N] [--cache URI]

With --cache, the features of every content are stored once, in the cache, and --features is the
run's index into it (orchard_jobs.features.INDEX_TYPE); without, --features holds the features.

--inputs names the run's input listing (Parquet, written by the upload): the step reads exactly
those paths below --images, and every listed path ends in the features or the quarantine. Without
it, the input is every file Spark lists below --images.

--model names the run's model document (written by `orchard.model_cache.prepare_model`): the
ONNX model's URI and SHA-256 and the account of its weights. The step never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, cast

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession

from orchard_jobs import engine, features, hadoop_files, session
from orchard_jobs.progress import StageProgress
from orchard_jobs.versions import versions


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments of the featurize step."""
    parser = argparse.ArgumentParser(prog="featurize", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", required=True, help="folder/prefix URI of images, one sub-folder per class"
    )
    parser.add_argument("--features", required=True, help="output URI of the features Parquet")
    parser.add_argument("--quarantine", required=True, help="output URI of the quarantine Parquet")
    parser.add_argument("--summary", required=True, help="output URI of the step's JSON summary")
    parser.add_argument("--model", required=True, help="URI of the run's model document (JSON)")
    parser.add_argument(
        "--inputs", default="", help="URI of the run's input listing (default: every file below --images)"
    )
    parser.add_argument("--partitions", type=int, default=0, help="0: a multiple of the task slots")
    parser.add_argument("--limit", type=int, default=0, help="featurize only the first N files (0: all)")
    parser.add_argument(
        "--cache", default="", help="features cache folder URI: contents seen before are not featurized again"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Run the featurize step in its own Spark application."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    spark = SparkSession.builder.appName("orchard-featurize").getOrCreate()
    run(spark, args, session_seconds=time.time() - started)
    session.stop(spark)


def write_features(
    spark: SparkSession, uri: str, outcomes: DataFrame, results: DataFrame, counts: dict, cache_at: str | None
) -> None:
    """The features output: with a cache, the new features appended to it and the run's index into
    it (each content's features stored once); without, the features themselves."""
    if not cache_at:
        features.featurized(outcomes).write.mode("overwrite").parquet(uri)
        return
    computed = counts["featurized"] - counts["from_cache"]
    added = features.append_to_cache(spark, results, cache_at, computed)
    features.features_index(outcomes, added).write.mode("overwrite").parquet(uri)
    index = spark.read.parquet(uri)
    indexed, unplaced = index.count(), index.where("segment IS NULL").count()
    if indexed != counts["featurized"] or unplaced:
        raise RuntimeError(
            f"accounting failed: {counts['featurized']} featurized images, {indexed} in the index, "
            f"{unplaced} of them without a row in {cache_at}"
        )


def run(spark: SparkSession, args: argparse.Namespace, session_seconds: float | None = None) -> dict:
    """The featurize step on a running Spark session; returns the summary it wrote."""
    started = time.time()
    phases: dict[str, Any] = {"session": session_seconds}
    model_doc = hadoop_files.read_json(spark, args.model)
    model = hadoop_files.read_bytes(spark, model_doc["model"])
    digest = engine.model_digest(model)
    if digest != model_doc["sha256"]:
        raise ValueError(
            f"{model_doc['model']}: SHA-256 {digest} differs from {model_doc['sha256']} in {args.model}"
        )
    broadcast = spark.sparkContext.broadcast(model)
    phases["model"] = time.time() - started
    files, listing = features.read_images(spark, args.images, args.inputs or None, args.limit or None)
    listed = listing.count()  # an upload's listing: Parquet metadata; Spark's own: a local relation
    phases["listing"] = time.time() - started - phases["model"]
    cache_at = features.cache_uri(args.cache, digest) if args.cache else None
    cache = features.read_cache(spark, cache_at) if cache_at else None
    todo, known, pending = features.split_by_cache(files, cache)
    pending = listed if pending is None else pending
    # One Python worker per task slot, each with as many engine threads as a task has cores.
    task_cpus = int(cast(str, spark.conf.get("spark.task.cpus", "1")))  # with a default: never None
    slots = max(1, spark.sparkContext.defaultParallelism // task_cpus)
    partitions = args.partitions or features.plan_partitions(pending, slots)
    # The step's joins and de-duplications shuffle data that grows with the images, as the
    # featurize partitions do; Spark's default of 200 made a cached 48-image run 25 s instead of 11.
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    # Computed once, by the first write; the second output and the cache read them back from
    # local disk, so the driver's memory does not grow with the input.
    results = features.featurize_incremental(todo, known, broadcast, partitions, task_cpus)
    results.persist(StorageLevel.DISK_ONLY)
    if cache_at:
        logging.getLogger("featurize").info(
            "%d of %d files to featurize; the others' contents are in the cache", pending, listed
        )
    job_started = time.time()
    phases["cache_lookup"] = job_started - started - phases["model"] - phases["listing"]
    outcomes = features.outcomes(spark, results, listing, args.images, sized=bool(args.inputs))
    # The counts come from the first output's write itself (observed metrics): no job of their own.
    observation = Observation("orchard-outcomes")
    observed = outcomes.observe(observation, *features.outcome_metrics(), features.busy_metric())
    with StageProgress(spark.sparkContext, "orchard-featurize", partitions, pending):
        features.quarantined(observed).write.mode("overwrite").parquet(args.quarantine)
    metrics = dict(observation.get)
    # Worker-seconds of decoding and inference in the Python workers (what a plan's rate is taken from).
    phases["busy"] = float(metrics.pop("busy_seconds") or 0.0)
    counts = {key: int(value) for key, value in metrics.items()}
    phases["featurize"] = time.time() - job_started
    # Outcomes that do not add up fail the step (and the run) before anything reaches the cache,
    # which later runs share.
    if counts["inputs"] != listed or counts["featurized"] + counts["quarantined"] != listed:
        raise RuntimeError(f"accounting failed: {listed} listed inputs, outcomes {counts}")
    write_features(spark, args.features, outcomes, results, counts, cache_at)
    results.unpersist()
    phases["write"] = time.time() - job_started - phases["featurize"]

    summary = {
        "step": "featurize",
        "images": args.images,
        "inputs": args.inputs or None,
        "counts": counts,
        "weights": model_doc["weights"],
        "model": {key: model_doc[key] for key in ("model", "sha256", "converted", "seconds")},
        "engine": engine.describe(),
        "partitions": partitions,
        "slots": slots,
        "threads_per_task": task_cpus,
        "cache": cache_at,
        "limit": args.limit or None,
        # What the driver holds in memory because of the input's size (bench-scale checks it).
        "driver": {"listed_files": listed, "listing_from_upload": bool(args.inputs)},
        "seconds": round(time.time() - started, 3),
        # Where the step's time went: Spark session start, reading the model, listing the images,
        # the cache lookup, the featurize job (Python workers, model, inference), the writes; `busy`
        # (not a part of the others): the workers' decoding and inference, summed over workers.
        "phases_seconds": {key: None if value is None else round(value, 3) for key, value in phases.items()},
        "versions": versions(spark),
    }
    hadoop_files.write_json(spark, args.summary, summary)
    logging.getLogger("featurize").info(
        "featurize done: %s (the model ran on %d images, %d came from the cache)",
        counts,
        counts["featurized"] - counts["from_cache"],
        counts["from_cache"],
    )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
