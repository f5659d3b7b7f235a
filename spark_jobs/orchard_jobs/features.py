"""Featurization transforms: binary files in, features and quarantine out.

Every input file becomes exactly one row of either output: a decodable image gets 1280 floats,
anything else a quarantine reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
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
        # The Python worker (process id) that computed the row: model builds ÷ distinct workers
        # shows whether every worker built its model exactly once.
        T.StructField("worker", T.IntegerType(), True),
        # SHA-256 of the file's bytes: the key of the features cache.
        T.StructField("sha256", T.StringType(), True),
        # True when the features came from the cache instead of the model.
        T.StructField("from_cache", T.BooleanType(), True),
    ]
)

# The features cache: one row per distinct image content ever featurized with given weights.
CACHE_TYPE = T.StructType(
    [
        T.StructField("sha256", T.StringType(), False),
        T.StructField("features", T.ArrayType(T.FloatType(), False), False),
    ]
)
LOCATION_TYPE = T.StructType(
    [T.StructField("path", T.StringType(), True), T.StructField("label", T.StringType(), True)]
)

QUARANTINE_TYPE = T.StructType(
    [T.StructField(name, T.StringType(), True) for name in ("path", "label", "reason")]
)

# One featurizer (an ONNX Runtime session) per Python worker process, keyed by the model's
# SHA-256. Spark reuses Python workers across tasks (and jobs), so a session is opened once per
# worker, not per task. The key is the model's content, never an object's identity: a recycled id
# would hand out a stale model.
_FEATURIZERS: dict[str, Any] = {}

# Images per featurize task (see plan_partitions): ~10-20 s of work per task slot.
IMAGES_PER_TASK = 1000


def featurizer_for(model: Any, digest: str, threads: int = 0) -> tuple[Any, bool]:
    """The process-wide featurizer for a model (a broadcast or bytes), and whether this call built it."""
    from orchard_jobs.engine import OnnxFeaturizer

    if digest in _FEATURIZERS:
        return _FEATURIZERS[digest], False
    data = model.value if hasattr(model, "value") else model
    _FEATURIZERS[digest] = OnnxFeaturizer(data, threads=threads)
    print(f"orchard: opened the ONNX model in python worker pid={os.getpid()}", file=sys.stderr, flush=True)
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
    jvm: Any = spark.sparkContext._jvm  # py4j's gateway: untyped
    hadoop_path = jvm.org.apache.hadoop.fs.Path
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


def plan_partitions(images: int, slots: int, per_task: int = IMAGES_PER_TASK) -> int:
    """Partitions for the featurize stage: a multiple of the task slots, about `per_task` images each.

    Every slot gets the same share (no idle core at the end), and tasks stay short enough to
    report progress and to retry cheaply; a task with only a few images would pay Spark's
    per-task overhead for little work (measured in bench/).
    """
    slots = max(1, slots)
    rounds = max(1, -(-images // (slots * per_task)))
    return slots * rounds


def featurize(files: DataFrame, root: str, model: Any, partitions: int, threads: int = 0) -> DataFrame:
    """(path, content) -> RESULT_TYPE rows (path, label, features, reason, ...): one row per file.

    `model`: the serialized ONNX model (bytes, or a broadcast of them). `threads`: engine threads
    per Python worker (0: all cores). With one worker per task slot, one thread each keeps the
    cores busy without oversubscribing them, and a worker's decoding overlaps the others' inference.
    """
    from orchard_jobs.engine import model_digest

    digest = model_digest(model.value if hasattr(model, "value") else model)

    @F.pandas_udf(RESULT_TYPE)
    def _featurize(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        worker = os.getpid()
        state: dict[str, Any] = {"model": None, "built": False}

        def infer(images: np.ndarray) -> np.ndarray:
            # Opened (or taken from this worker's cache) when there is a first image to infer: a
            # task that only meets undecodable files opens nothing.
            if state["model"] is None:
                state["model"], state["built"] = featurizer_for(model, digest, threads)
            return state["model"](images)

        for paths, contents in batches:
            started = time.perf_counter()
            records = featurize_records(infer, root, paths, contents)
            inferred = records["reason"].isna()
            records["model_built"] = False
            if state["built"] and inferred.any():  # counted once, on the first featurized row
                records.loc[inferred.idxmax(), "model_built"] = True
                state["built"] = False
            # Only rows the model computed name their worker: builds ÷ workers counts workers
            # that used a model.
            records["worker"] = pd.array([worker if ok else None for ok in inferred], dtype="Int32")
            records["sha256"] = [hashlib.sha256(content).hexdigest() for content in contents]
            records["from_cache"] = False
            print(
                f"orchard: featurized {int(inferred.sum())} files in python worker pid={worker} "
                f"({time.perf_counter() - started:.2f} s)",
                file=sys.stderr,
                flush=True,
            )
            yield records

    # Spark packs ~30 small files into one read split; spreading them evenly over the task slots
    # is what keeps every core busy with inference.
    spread = files.repartition(partitions)
    return spread.select(_featurize("path", "content").alias("r")).select("r.*")


def cache_uri(cache_root: str, digest: str) -> str:
    """Where features computed by the model of this digest are cached."""
    return f"{cache_root}/model={digest[:16]}"


def read_cache(spark: SparkSession, uri: str) -> DataFrame | None:
    """The cached (sha256, features) rows, one per content; None when nothing is cached yet."""
    from orchard_jobs import lake

    if not lake.exists(spark, uri):
        return None
    return spark.read.schema(CACHE_TYPE).parquet(uri).dropDuplicates(["sha256"])


def split_by_cache(
    files: DataFrame, cache: DataFrame | None
) -> tuple[DataFrame, DataFrame | None, int | None]:
    """(files the model must see, (path, sha256, features) of files already cached, how many to compute).

    Hashing reads every file once; only the files whose content is not cached are read again.
    Without a cache, every file is to compute (the count is then the listing's: None here).
    """
    if cache is None:
        return files, None, None
    hashes = files.select("path", F.sha2("content", 256).alias("sha256")).persist()
    todo_paths = hashes.join(cache.select("sha256"), "sha256", "left_anti").select("path")
    pending = todo_paths.count()
    todo = files.join(F.broadcast(todo_paths), "path", "left_semi")
    known = hashes.join(cache, "sha256", "inner")
    return todo, known, pending


def featurize_incremental(
    todo: DataFrame, known: DataFrame | None, root: str, model: Any, partitions: int, threads: int = 0
) -> DataFrame:
    """featurize() on the files to compute, plus one row per cached file with the cached features."""
    computed = featurize(todo, root, model, partitions, threads)
    if known is None:
        return computed

    @F.pandas_udf(LOCATION_TYPE)
    def _locate(paths: pd.Series) -> pd.DataFrame:
        rel_paths = [relative_path(p, root) for p in paths]
        return pd.DataFrame({"path": rel_paths, "label": [label_for(p) for p in rel_paths]})

    cached = known.select(
        _locate("path").alias("where"),
        "features",
        F.lit(None).cast("string").alias("reason"),
        F.lit(False).alias("model_built"),
        F.lit(None).cast("int").alias("worker"),
        "sha256",
        F.lit(True).alias("from_cache"),
    ).select("where.*", "features", "reason", "model_built", "worker", "sha256", "from_cache")
    return computed.unionByName(cached)


def new_cache_rows(results: DataFrame) -> DataFrame:
    """Features the model computed in this run, keyed by content: what to append to the cache."""
    fresh = results.where(F.col("reason").isNull() & ~F.col("from_cache"))
    return fresh.select("sha256", "features").dropDuplicates(["sha256"])


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
        F.countDistinct("worker").alias("python_workers"),
        F.count(F.when(F.col("from_cache"), 1)).alias("from_cache"),
    ).first()
    assert row is not None  # an aggregate without groups has exactly one row
    keys = ("inputs", "featurized", "quarantined", "model_builds", "python_workers", "from_cache")
    return {key: row[key] for key in keys}
