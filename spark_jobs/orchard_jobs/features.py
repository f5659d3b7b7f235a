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

from orchard_jobs import hadoop_files
from orchard_jobs.engine import OnnxFeaturizer, model_digest
from orchard_jobs.images import UNLABELLED, UndecodableImage, decode_image, label_for, relative_path

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
        # The cache file holding the features, relative to the cache (rows from the cache).
        T.StructField("segment", T.StringType(), True),
        # The row's share of its batch's decoding and inference time in its Python worker (model
        # opening excluded), in seconds: summed, the workers' busy time, from which a run's plan
        # takes the rate per task slot apart from the start-up of workers and models.
        T.StructField("busy_s", T.DoubleType(), True),
    ]
)

# The features cache: one row per distinct image content ever featurized with given weights.
CACHE_TYPE = T.StructType(
    [
        T.StructField("sha256", T.StringType(), False),
        T.StructField("features", T.ArrayType(T.FloatType(), False), False),
    ]
)

# A run's features when a cache is given: one row per featurized image naming the cache file
# (`segment`, relative to the cache folder) that holds its content's features. The features
# themselves are stored once, in the cache; a re-run on unchanged images writes only this index.
INDEX_TYPE = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("label", T.StringType(), True),
        T.StructField("sha256", T.StringType(), False),
        T.StructField("segment", T.StringType(), False),
    ]
)

# A run's input listing, made by its upload (orchard.storage.sync): every file the source held, by path
# relative to the images folder, with its size and SHA-256, or the reason it cannot be an input
# (a name that cannot be represented, a broken link, an unreadable file...). The featurize step
# reads exactly these paths, and every row ends in the features or the quarantine.
INPUT_TYPE = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("size", T.LongType(), True),
        T.StructField("sha256", T.StringType(), True),
        T.StructField("reason", T.StringType(), True),
    ]
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
    if digest in _FEATURIZERS:
        return _FEATURIZERS[digest], False
    data = model.value if hasattr(model, "value") else model
    _FEATURIZERS[digest] = OnnxFeaturizer(data, threads=threads)
    print(f"orchard: opened the ONNX model in python worker pid={os.getpid()}", file=sys.stderr, flush=True)
    return _FEATURIZERS[digest], True


def featurize_records(featurizer: Any, paths: pd.Series, contents: pd.Series) -> pd.DataFrame:
    """Decode and featurize one batch of files (paths relative to the images folder).

    What a file is comes from its bytes alone, never its name, so the same content gets the same
    outcome under any name, fresh or from the cache. Undecodable files get a reason instead.
    """
    rel_paths = list(paths)
    reasons: list[str | None] = [None] * len(rel_paths)
    images: list[np.ndarray] = []
    decoded: list[int] = []
    for i, content in enumerate(contents):
        try:
            images.append(decode_image(content))
            decoded.append(i)
        except UndecodableImage as exc:
            reasons[i] = str(exc)
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


def _qualified(spark: SparkSession, uri: str) -> str:
    """`uri` as binaryFile's path column spells the files below it (Hadoop's qualified path)."""
    jvm: Any = spark.sparkContext._jvm  # py4j's gateway: untyped
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return str(fs.makeQualified(path).toString()).rstrip("/")


def scan_files(spark: SparkSession, root: str) -> DataFrame:
    """(path relative to `root`, content) of the files below `root`, read lazily by binaryFile."""
    prefix = _qualified(spark, root) + "/"
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    rel = F.when(F.col("path").startswith(prefix), F.expr(f"substring(path, {len(prefix) + 1})"))
    return files.select(rel.alias("path"), "content")


def read_inputs(spark: SparkSession, uri: str) -> DataFrame:
    """A run's input listing (INPUT_TYPE Parquet, written by its upload)."""
    return spark.read.schema(INPUT_TYPE).parquet(uri)


def listing_from_scan(spark: SparkSession, root: str) -> DataFrame:
    """Without an upload's listing: every file below `root` that Spark lists (sizes unknown).

    The paths pass through the driver (one string per file, as Spark's own file index holds them)
    and go back to the JVM as Arrow: no Python worker starts for the listing.
    """
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    paths = sorted(relative_path(_as_path_column(uri), root) for uri in files.inputFiles())
    unknown = pd.Series([None] * len(paths), dtype=object)
    frame = pd.DataFrame({"path": paths, "size": unknown, "sha256": unknown, "reason": unknown})
    return spark.createDataFrame(frame, INPUT_TYPE)


def read_images(
    spark: SparkSession, root: str, inputs: str | None = None, limit: int | None = None
) -> tuple[DataFrame, DataFrame]:
    """(path, content) of a run's readable inputs below `root`, and the run's input listing.

    The listing is the upload's (`inputs`), or every file Spark lists below `root`. Only listed
    paths are read: files the lake holds beyond them are not inputs. `limit` keeps the first N
    listed paths.
    """
    listing = read_inputs(spark, inputs) if inputs else listing_from_scan(spark, root)
    if limit:
        listing = listing.orderBy("path").limit(limit)
    readable = listing.where(F.col("reason").isNull()).select("path")
    files = scan_files(spark, root).join(F.broadcast(readable), "path", "left_semi")
    return files, listing


def outcomes(
    spark: SparkSession, results: DataFrame, listing: DataFrame, root: str, sized: bool = False
) -> DataFrame:
    """`results` of the listed files, with one row more for each listed file that has none.

    Those are the files the upload could not take (the listing's reason), files missing from the
    lake (or never returned by Spark's scan: empty files), and files whose bytes in the lake are
    not the ones the upload listed (changed since). Every listed path ends in exactly one row.
    `sized`: the listing has the size of every readable file (an upload's), so telling an empty
    file from a missing one needs no look at the lake (and no job).
    """
    listed = listing.select("path", F.col("sha256").alias("listed_sha256"))
    changed = F.col("listed_sha256").isNotNull() & (F.col("sha256") != F.col("listed_sha256"))
    checked = (
        results.join(F.broadcast(listed), "path", "left")
        .withColumn("features", F.when(changed, F.lit(None)).otherwise(F.col("features")))
        .withColumn(
            "reason",
            F.when(
                changed, F.lit("changed in the lake after this run's upload listed it: run again")
            ).otherwise(F.col("reason")),
        )
        .drop("listed_sha256")
    )
    missing = listing.join(results.select("path"), "path", "left_anti")
    unsized = [] if sized else missing.where(F.col("size").isNull() & F.col("reason").isNull()).collect()
    sizes = _sizes(spark, root, [row.path for row in unsized])
    if sizes:  # a join, not a Python UDF: no extra Python workers in the jobs that follow
        found = spark.createDataFrame(sorted(sizes.items()), "path string, found_size long")
        missing = missing.join(F.broadcast(found), "path", "left").withColumn(
            "size", F.coalesce("size", "found_size")
        )
    reason = (
        F.when(F.col("reason").isNotNull(), F.col("reason"))
        .when(F.col("size") == 0, F.lit("empty file (0 bytes)"))
        .otherwise(F.lit("missing from the lake: removed after this run's upload listed it"))
    )
    extra = missing.select(
        "path",
        label_column("path").alias("label"),
        F.lit(None).cast(T.ArrayType(T.FloatType(), False)).alias("features"),
        reason.alias("reason"),
        F.lit(False).alias("model_built"),
        F.lit(None).cast("int").alias("worker"),
        "sha256",
        F.lit(False).alias("from_cache"),
        F.lit(None).cast("string").alias("segment"),
        F.lit(0.0).alias("busy_s"),
    )
    return checked.select(*RESULT_TYPE.fieldNames()).unionByName(extra)


def label_column(path: str) -> Column:
    """images.label_for in SQL: the parent folder's name, or UNLABELLED for a file in the root."""
    parent = F.substring_index(F.substring_index(F.col(path), "/", -2), "/", 1)
    return F.when(F.instr(F.col(path), "/") == 0, F.lit(UNLABELLED)).otherwise(parent)


def _sizes(spark: SparkSession, root: str, paths: list[str]) -> dict[str, int]:
    """Sizes of the few listed files Spark's scan did not return, when the listing has none.

    Asked of Hadoop's FileSystem on the driver, one call per file: these are the empty files of a
    listing made by Spark itself (its scan skips them), not the inputs at large.
    """
    jvm: Any = spark.sparkContext._jvm  # py4j's gateway: untyped
    hadoop_path = jvm.org.apache.hadoop.fs.Path
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    sizes = {}
    for rel in paths:
        path = hadoop_path(f"{root.rstrip('/')}/{rel}")
        fs = path.getFileSystem(conf)
        if fs.exists(path):
            sizes[rel] = int(fs.getFileStatus(path).getLen())
    return sizes


def plan_partitions(images: int, slots: int, per_task: int = IMAGES_PER_TASK) -> int:
    """Partitions for the featurize stage: a multiple of the task slots, about `per_task` images each.

    Every slot gets the same share (no idle core at the end), and tasks stay short enough to
    report progress and to retry cheaply; a task with only a few images would pay Spark's
    per-task overhead for little work (measured in bench/).
    """
    slots = max(1, slots)
    rounds = max(1, -(-images // (slots * per_task)))
    return slots * rounds


def featurize(files: DataFrame, model: Any, partitions: int, threads: int = 0) -> DataFrame:
    """(path, content) -> RESULT_TYPE rows (path, label, features, reason, ...): one row per file.

    `model`: the serialized ONNX model (bytes, or a broadcast of them). `threads`: engine threads
    per Python worker (0: all cores). With one worker per task slot, one thread each keeps the
    cores busy without oversubscribing them, and a worker's decoding overlaps the others' inference.
    """
    digest = model_digest(model.value if hasattr(model, "value") else model)

    @F.pandas_udf(RESULT_TYPE)
    def _featurize(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        worker = os.getpid()
        state: dict[str, Any] = {"model": None, "built": False, "opening_s": 0.0}

        def infer(images: np.ndarray) -> np.ndarray:
            # Opened (or taken from this worker's cache) when there is a first image to infer: a
            # task that only meets undecodable files opens nothing.
            if state["model"] is None:
                opened = time.perf_counter()
                state["model"], state["built"] = featurizer_for(model, digest, threads)
                state["opening_s"] = time.perf_counter() - opened
            return state["model"](images)

        for paths, contents in batches:
            started = time.perf_counter()
            state["opening_s"] = 0.0
            records = featurize_records(infer, paths, contents)
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
            records["segment"] = None
            busy = time.perf_counter() - started - state["opening_s"]
            records["busy_s"] = busy / max(len(records), 1)
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


def cache_folder(digest: str) -> str:
    """The cache's folder for the features computed by the model of this digest."""
    return f"model={digest[:16]}"


def cache_uri(cache_root: str, digest: str) -> str:
    """Where features computed by the model of this digest are cached."""
    return f"{cache_root}/{cache_folder(digest)}"


def _segment(folder: str) -> Column:
    """The cache file a row was read from, relative to the cache root: `<folder>/<file name>`."""
    return F.concat(F.lit(folder + "/"), F.element_at(F.split(F.input_file_name(), "/"), -1))


def read_cache(spark: SparkSession, uri: str) -> DataFrame | None:
    """The cached (sha256, features, segment) rows, one per content; None when nothing is cached yet."""
    if not hadoop_files.exists(spark, uri):
        return None
    folder = uri.rstrip("/").rsplit("/", 1)[-1]
    rows = spark.read.schema(CACHE_TYPE).parquet(uri).withColumn("segment", _segment(folder))
    return rows.dropDuplicates(["sha256"])


def append_to_cache(spark: SparkSession, results: DataFrame, uri: str, computed: int) -> DataFrame:
    """Append the features the model computed (`computed` images) to the cache at `uri`; (sha256,
    segment) of what was added.

    The new files are those the folder did not hold before the write; a run writing beside this one
    only adds files whose contents were all computed again (either copy serves). With nothing
    computed nothing is written (Spark would write an empty file).
    """
    if not computed:
        return spark.createDataFrame([], "sha256 string, segment string")
    before = hadoop_files.file_names(spark, uri)
    new_cache_rows(results).write.mode("append").parquet(uri)
    added = sorted(n for n in hadoop_files.file_names(spark, uri) - before if n.endswith(".parquet"))
    if not added:
        return spark.createDataFrame([], "sha256 string, segment string")
    folder = uri.rstrip("/").rsplit("/", 1)[-1]
    files = spark.read.schema(CACHE_TYPE).parquet(*[f"{uri.rstrip('/')}/{name}" for name in added])
    return files.select("sha256", _segment(folder).alias("segment")).dropDuplicates(["sha256"])


def features_index(results: DataFrame, added: DataFrame) -> DataFrame:
    """INDEX_TYPE rows of the featurized results: where in the cache each image's features are."""
    rows = results.where(F.col("reason").isNull()).select("path", "label", "sha256", "segment")
    fresh = added.select("sha256", F.col("segment").alias("added_segment"))
    joined = rows.join(F.broadcast(fresh), "sha256", "left")
    return joined.select("path", "label", "sha256", F.coalesce("segment", "added_segment").alias("segment"))


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
    todo: DataFrame, known: DataFrame | None, model: Any, partitions: int, threads: int = 0
) -> DataFrame:
    """featurize() on the files to compute, plus one row per cached file with the cached features."""
    computed = featurize(todo, model, partitions, threads)
    if known is None:
        return computed

    cached = known.select(
        "path",
        label_column("path").alias("label"),  # SQL, not a Python UDF: no Python in these tasks
        "features",
        F.lit(None).cast("string").alias("reason"),
        F.lit(False).alias("model_built"),
        F.lit(None).cast("int").alias("worker"),
        "sha256",
        F.lit(True).alias("from_cache"),
        "segment",
        F.lit(0.0).alias("busy_s"),
    )
    return computed.unionByName(cached)


def new_cache_rows(results: DataFrame) -> DataFrame:
    """Features the model computed in this run, keyed by content: what to append to the cache."""
    fresh = results.where(F.col("reason").isNull() & ~F.col("from_cache"))
    return fresh.select("sha256", "features").dropDuplicates(["sha256"])


def featurized(results: DataFrame) -> DataFrame:
    """Rows with features: the features output."""
    return results.where(F.col("reason").isNull()).select("path", "label", "features")


def quarantined(results: DataFrame) -> DataFrame:
    """Rows without features, each with its reason: the quarantine output."""
    return results.where(F.col("reason").isNotNull()).select("path", "label", "reason")


def outcome_metrics() -> list[Column]:
    """Aggregates of the outcome counts: for an agg(), or for observe() on the outputs' write.

    No DISTINCT aggregate (observe() refuses them): the workers are a set, and there are few.
    """
    ok: Column = F.col("reason").isNull()
    return [
        F.count(F.lit(1)).alias("inputs"),
        F.count(F.when(ok, 1)).alias("featurized"),
        F.count(F.when(~ok, 1)).alias("quarantined"),
        F.count(F.when(F.col("model_built"), 1)).alias("model_builds"),
        F.size(F.collect_set("worker")).alias("python_workers"),
        F.count(F.when(F.col("from_cache"), 1)).alias("from_cache"),
    ]


def busy_metric() -> Column:
    """The Python workers' decoding and inference seconds, summed (worker-seconds), for observe()."""
    return F.sum("busy_s").alias("busy_seconds")


def count_outcomes(results: DataFrame) -> dict[str, int]:
    """Counts of inputs, featurized and quarantined rows, and of model builds, in one pass."""
    row = results.agg(*outcome_metrics()).first()
    assert row is not None  # an aggregate without groups has exactly one row
    return row.asDict()
