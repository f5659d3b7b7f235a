"""Spark step 2: features Parquet -> centred PCA scores (Parquet), fitted model, variance (JSON), CSV parts.

    spark-submit pca.py --features URI --pca URI --model URI --summary URI --csv-parts URI \
        [--k N] [--variance SHARE]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import SparkSession

from orchard_jobs import hadoop_files, session
from orchard_jobs import pca as pca_ops
from orchard_jobs.engine import FEATURE_DIM
from orchard_jobs.versions import versions


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments of the PCA step."""
    parser = argparse.ArgumentParser(prog="pca", description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="URI of the features Parquet")
    parser.add_argument("--pca", required=True, help="output URI of the PCA scores Parquet")
    parser.add_argument("--model", required=True, help="output URI of the fitted PipelineModel")
    parser.add_argument("--summary", required=True, help="output URI of the explained-variance JSON")
    parser.add_argument("--csv-parts", required=True, help="output URI of the headerless CSV parts")
    parser.add_argument("--k", type=int, default=0, help="number of components (0: choose by --variance)")
    parser.add_argument(
        "--variance", type=float, default=0.9, help="without --k: smallest k explaining this share"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Run the PCA step in its own Spark application."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = SparkSession.builder.appName("orchard-pca").getOrCreate()
    run(spark, args)
    session.stop(spark)


def run(spark: SparkSession, args: argparse.Namespace) -> dict:
    """The PCA step on a running Spark session; returns the summary it wrote."""
    started = time.time()
    for key, value in pca_ops.SPARK_CONF.items():
        spark.conf.set(key, value)
    # One pass over the features fits every component; k is then chosen without fitting again.
    fitted = pca_ops.fit(spark, args.features)
    max_k = min(fitted.n, FEATURE_DIM)
    k = args.k or pca_ops.choose_k(fitted.ratios[:max_k], args.variance)
    pca_ops.validate_k(k, fitted.n, FEATURE_DIM)

    # The fitted model and the scores are independent outputs, so their Spark jobs (a few small
    # ones each) run side by side from two driver threads; any failure still fails the step.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pca-model") as pool:
        model = pca_ops.pipeline_model(spark, fitted, k)
        saved = pool.submit(lambda: model.write().overwrite().save(args.model))
        pca_ops.scores(spark, args.features, fitted, k).write.mode("overwrite").parquet(args.pca)
        pca_ops.write_csv_parts(pca_ops.flatten(spark.read.parquet(args.pca), k), args.csv_parts)
        saved.result()

    summary = pca_ops.summary(fitted.ratios[:max_k], k, None if args.k else args.variance, fitted.n)
    summary.update(step="pca", seconds=round(time.time() - started, 3), versions=versions(spark))
    hadoop_files.write_json(spark, args.summary, summary)
    logging.getLogger("pca").info("pca done: k=%d, variance kept %.4f", k, summary["variance_kept"])
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
