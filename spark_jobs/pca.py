"""Spark step 2: features Parquet -> centred PCA scores (Parquet), fitted model, variance (JSON), CSV parts.

    spark-submit pca.py --features URI --pca URI --model URI --summary URI --csv-parts URI \
        [--cache URI] [--k N] [--variance SHARE] [--mode refit|reuse] [--basis URI --basis-summary URI]

--cache: --features is a run's index into this features cache (the featurize step's --cache).
--basis: the published PCA model (and --basis-summary its pca.json). `refit` fits the run's own
basis and turns its components' signs to agree with it; `reuse` projects on it, so the CSVs of
runs share axes. Without a basis, both fit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from pyspark.ml import PipelineModel
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
    parser.add_argument("--cache", default="", help="features cache folder: --features is an index into it")
    parser.add_argument("--mode", choices=["refit", "reuse"], default="refit", help="fit, or reuse --basis")
    parser.add_argument("--basis", default="", help="URI of the published PCA model (empty: none)")
    parser.add_argument("--basis-summary", default="", help="URI of the published model's pca.json")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Run the PCA step in its own Spark application."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    spark = SparkSession.builder.appName("orchard-pca").getOrCreate()
    run(spark, args, session_seconds=time.time() - started)
    session.stop(spark)


def run(spark: SparkSession, args: argparse.Namespace, session_seconds: float | None = None) -> dict:
    """The PCA step on a running Spark session; returns the summary it wrote."""
    started = time.time()
    for key, value in pca_ops.SPARK_CONF.items():
        spark.conf.set(key, value)
    # The features' files (and an index's rows) read once, for the fit and the scores.
    features = pca_ops.feature_files(spark, pca_ops.Features(args.features, args.cache or None))
    basis = pca_ops.load_basis(args.basis) if args.basis else None
    published = hadoop_files.read_json(spark, args.basis_summary).get("basis") if args.basis_summary else None
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if args.mode == "reuse" and basis is not None:
        # One pass for the run's own spread along the published axes; nothing is fitted.
        fitted, ratios = pca_ops.basis_on(pca_ops.moments(spark, features), basis)
        k = fitted.components.shape[1]
        if args.k and args.k != k:
            raise ValueError(f"pca_k={args.k}, but the published basis (pca_mode=reuse) has k={k}")
        origin = {
            "mode": "reuse",
            "model": args.basis,
            "fitted_at": (published or {}).get("fitted_at"),
            "fitted_in": (published or {}).get("fitted_in", args.basis),
        }
        target = None
    else:
        # One pass over the features fits every component; k is then chosen without fitting again.
        fitted = pca_ops.fit(spark, features)
        if basis is not None:
            fitted = pca_ops.align_signs(fitted, basis)
        ratios = fitted.ratios[: min(fitted.n, FEATURE_DIM)]
        k = args.k or pca_ops.choose_k(ratios, args.variance)
        pca_ops.validate_k(k, fitted.n, FEATURE_DIM)
        origin = {
            "mode": "refit",
            "model": args.model,
            "fitted_at": now,
            "fitted_in": args.model,
            "signs_aligned_to": args.basis or None,
            "requested": args.mode,  # "reuse" with nothing published yet fits the first basis
        }
        target = None if args.k else args.variance

    # The fitted model and the scores are independent outputs, so their Spark jobs (a few small
    # ones each) run side by side from two driver threads; any failure still fails the step.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pca-model") as pool:
        if origin["mode"] == "reuse":  # the run's model is the basis it used: the next reuse reads it
            model = PipelineModel.load(args.basis)
        else:
            model = pca_ops.pipeline_model(spark, fitted, k)
        saved = pool.submit(lambda: model.write().overwrite().save(args.model))
        pca_ops.scores(spark, features, fitted, k).write.mode("overwrite").parquet(args.pca)
        pca_ops.write_csv_parts(pca_ops.flatten(spark.read.parquet(args.pca), k), args.csv_parts)
        saved.result()

    summary = pca_ops.summary(ratios, k, target, fitted.n)
    summary.update(
        step="pca",
        basis=origin,
        seconds=round(time.time() - started, 3),
        # The Spark session's start, before `seconds` (a run's plan counts both).
        session_seconds=None if session_seconds is None else round(session_seconds, 3),
        versions=versions(spark),
    )
    hadoop_files.write_json(spark, args.summary, summary)
    logging.getLogger("pca").info("pca done: k=%d, variance kept %.4f", k, summary["variance_kept"])
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
