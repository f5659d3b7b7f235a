"""Spark step 2: features Parquet -> centred PCA scores (Parquet), fitted model, variance (JSON), CSV parts.

    spark-submit pca.py --features URI --pca URI --model URI --summary URI --csv-parts URI \
        [--k N] [--variance SHARE]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from pyspark import StorageLevel
from pyspark.sql import SparkSession

from orchard_jobs import lake
from orchard_jobs import pca as pca_ops
from orchard_jobs.model import FEATURE_DIM
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
    """Run the PCA step."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    spark = SparkSession.builder.appName("orchard-pca").getOrCreate()

    vectors = pca_ops.to_vectors(spark.read.parquet(args.features))
    # Fitted once or twice and then projected: read and convert the features once.
    vectors.persist(StorageLevel.MEMORY_AND_DISK)
    n_images = vectors.count()
    max_k = min(n_images, FEATURE_DIM)
    if args.k:
        pca_ops.validate_k(args.k, n_images, FEATURE_DIM)
        model = pca_ops.fit(vectors, args.k)
        ratios_all = pca_ops.explained_variance(model)
        k = args.k
    else:
        pca_ops.validate_k(max_k, n_images, FEATURE_DIM)
        full = pca_ops.fit(vectors, max_k)
        ratios_all = pca_ops.explained_variance(full)
        k = pca_ops.choose_k(ratios_all, args.variance)
        model = full if k == max_k else pca_ops.fit(vectors, k)

    model.write().overwrite().save(args.model)
    scores = pca_ops.scores(model, vectors)
    scores.write.mode("overwrite").parquet(args.pca)
    pca_ops.write_csv_parts(pca_ops.flatten(spark.read.parquet(args.pca), k), args.csv_parts)
    vectors.unpersist()

    summary = pca_ops.summary(ratios_all, k, None if args.k else args.variance, n_images)
    summary.update(step="pca", seconds=round(time.time() - started, 3), versions=versions(spark))
    lake.write_json(spark, args.summary, summary)
    logging.getLogger("pca").info("pca done: k=%d, variance kept %.4f", k, summary["variance_kept"])
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
