"""Featurization transforms: binary files in, features and quarantine out.

Every input file becomes exactly one row of either output: a decodable image gets 1280 floats,
anything else a quarantine reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from orchard_jobs.images import UndecodableImage, decode_image, label_for, relative_path, unsupported_reason

log = logging.getLogger(__name__)

RESULT_TYPE = T.StructType(
    [
        T.StructField("path", T.StringType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("features", T.ArrayType(T.FloatType(), False), True),
        T.StructField("reason", T.StringType(), True),
        # True on the first row a Python worker produced after building its model: summing the
        # column counts model builds on any Spark version (accumulators from pandas UDFs do not
        # reach the driver on Spark 3.5).
        T.StructField("model_built", T.BooleanType(), True),
    ]
)

QUARANTINE_TYPE = T.StructType(
    [T.StructField(name, T.StringType(), True) for name in ("path", "label", "reason")]
)

# One Featurizer per Python worker process, keyed by a digest of its weights. Spark reuses Python
# workers across tasks (and jobs), so a model is built once per worker, not per task. The key is
# the weights' content, never an object's identity: a recycled id would hand out stale weights.
_FEATURIZERS: dict[str, Any] = {}


def weights_digest(arrays: list[np.ndarray]) -> str:
    """SHA-256 of weight arrays (shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def featurizer_for(broadcast: Any, digest: str) -> tuple[Any, bool]:
    """The process-wide Featurizer for weights (a broadcast or arrays), and whether this call built it."""
    from orchard_jobs.model import Featurizer

    if digest in _FEATURIZERS:
        return _FEATURIZERS[digest], False
    weights = broadcast.value if hasattr(broadcast, "value") else broadcast
    _FEATURIZERS[digest] = Featurizer(weights)
    print(f"orchard: built MobileNetV2 in python worker pid={os.getpid()}", file=sys.stderr, flush=True)
    return _FEATURIZERS[digest], True


def featurize_records(featurizer: Any, root: str, paths: pd.Series, contents: pd.Series) -> pd.DataFrame:
    """Decode and featurize one batch of files; undecodable ones get a reason instead of features."""
    rel_paths = [relative_path(p, root) for p in paths]
    reasons: list[str | None] = [None] * len(rel_paths)
    images: list[np.ndarray] = []
    decoded: list[int] = []
    for i, (rel, content) in enumerate(zip(rel_paths, contents, strict=True)):
        reason = unsupported_reason(rel)
        if reason is None:
            try:
                images.append(decode_image(content))
                decoded.append(i)
                continue
            except UndecodableImage as exc:
                reason = str(exc)
        reasons[i] = reason
    features: list[np.ndarray | None] = [None] * len(rel_paths)
    if images:
        vectors = featurizer(np.stack(images))
        for i, vector in zip(decoded, vectors, strict=True):
            features[i] = vector
    return pd.DataFrame(
        {
            "path": rel_paths,
            "label": [label_for(rel) for rel in rel_paths],
            "features": features,
            "reason": reasons,
        }
    )


def _as_path_column(uri: str) -> str:
    """An inputFiles() entry (URI-escaped, file:///) in the form of binaryFile's path column."""
    raw = unquote(uri)
    return "file:/" + raw[len("file:///") :] if raw.startswith("file:///") else raw


def read_images(spark: SparkSession, uri: str, limit: int | None = None) -> tuple[DataFrame, list[str]]:
    """All files below `uri` (recursively) as (path, content), and the sorted list of those paths.

    The list comes from the file listing, which also holds the files the scan never returns
    (zero-byte files), so the caller can account for every one. `limit` keeps the first N paths.
    """
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
    listed = sorted(_as_path_column(u) for u in files.inputFiles())
    if limit:
        listed = listed[:limit]
        files = files.where(F.col("path").isin(listed))
    return files.select("path", "content"), listed


def unread_files(spark: SparkSession, results: DataFrame, listed: list[str], root: str) -> list[tuple]:
    """Quarantine rows for listed files that the scan did not return, with the reason."""
    seen = {row.path for row in results.select("path").collect()}
    hadoop_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    rows = []
    for uri in listed:
        rel = relative_path(uri, root)
        if rel in seen:
            continue
        path = hadoop_path(uri)
        size = path.getFileSystem(conf).getFileStatus(path).getLen()
        reason = "empty file (0 bytes)" if size == 0 else f"not returned by Spark's file scan ({size} bytes)"
        rows.append((rel, label_for(rel), reason))
    return rows


def featurize(files: DataFrame, root: str, weights: Any, partitions: int) -> DataFrame:
    """(path, content) -> (path, label, features, reason, model_built): one row per file."""
    digest = weights_digest(weights.value if hasattr(weights, "value") else weights)

    @F.pandas_udf(RESULT_TYPE)
    def _featurize(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        featurizer, built = featurizer_for(weights, digest)
        for paths, contents in batches:
            records = featurize_records(featurizer, root, paths, contents)
            records["model_built"] = [built and i == 0 for i in range(len(records))]
            built = built and records.empty
            yield records

    # Spark packs ~30 small files into one read split; spreading them evenly over the task slots
    # is what keeps every core busy with inference.
    spread = files.repartition(partitions)
    return spread.select(_featurize("path", "content").alias("r")).select("r.*")


def featurized(results: DataFrame) -> DataFrame:
    """Rows with features: the features output."""
    return results.where(F.col("reason").isNull()).select("path", "label", "features")


def quarantined(results: DataFrame, unread: list[tuple] | None = None) -> DataFrame:
    """Rows without features, plus the files the scan never returned: the quarantine output."""
    rows = results.where(F.col("reason").isNotNull()).select("path", "label", "reason")
    if unread:
        spark = results.sparkSession
        rows = rows.unionByName(spark.createDataFrame(unread, QUARANTINE_TYPE))
    return rows


def count_outcomes(results: DataFrame) -> dict[str, int]:
    """Counts of inputs, featurized and quarantined rows, and of model builds, in one pass."""
    ok: Column = F.col("reason").isNull()
    row = results.agg(
        F.count(F.lit(1)).alias("inputs"),
        F.count(F.when(ok, 1)).alias("featurized"),
        F.count(F.when(~ok, 1)).alias("quarantined"),
        F.count(F.when(F.col("model_built"), 1)).alias("model_builds"),
    ).first()
    return {key: row[key] for key in ("inputs", "featurized", "quarantined", "model_builds")}
