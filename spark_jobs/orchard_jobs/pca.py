"""Centred PCA of the features in one pass: blocked covariance per partition, eigh on the driver.

Each partition reduces its rows to (count, mean, centred cross-product XᵀX) with numpy (BLAS-3 on
blocks of rows, float64); a tree aggregate (`moments`) merges the partitions (Chan et al.'s pairwise update,
stable even when the mean is far from zero); the driver diagonalises the 1280x1280 covariance.
Equal to scikit-learn's PCA up to sign (tests); its speed is in docs/performance.md, "PCA step".
The fitted model is saved as a pyspark.ml PipelineModel (centring + PCAModel), so Spark can load
it and project new features.

The features come from a features Parquet, or, for a run of the pipeline, from the run's index into
the features cache (`Features(index, cache)`): the cache's files are read, and each row the index
names is taken once per image path that has its content.

The features Parquet reaches the Python workers as its files' bytes (Spark's binaryFile source,
so every file system Spark reads works alike), and pyarrow decodes them there: Spark's own Parquet
scan hands an `array<float>` column to Python value by value (ColumnarToRow, then ArrowWriter),
several times slower than shipping the files' bytes (docs/performance.md, "PCA step").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

# Rows per BLAS block: large enough for matrix-matrix speed, small enough to stay ~40 MB.
BLOCK_ROWS = 4096
STATS_SCHEMA = "n long, mean binary, m2 binary"
# Partial moments merged per executor task in the tree aggregate (each row is ~6.5 MB).
MERGE_FANIN = 8
# The PCA step's session: one features file (~1,000 rows, ~5 MB) per Arrow batch, so a Python
# worker holds one file's bytes at a time, and decodes one while the JVM reads the next.
SPARK_CONF = {"spark.sql.execution.arrow.maxRecordsPerBatch": "1"}


@dataclass
class Moments:
    """Count, mean and centred cross-product matrix Σ(x - mean)(x - mean)ᵀ of a set of rows."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets together (Chan, Golub, LeVeque's pairwise update)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)

    @classmethod
    def of(cls, block: np.ndarray) -> Moments:
        """The moments of a block of rows (float64 whatever the block's type)."""
        if len(block) == 0:
            return cls(0, np.zeros(block.shape[1]), np.zeros((block.shape[1], block.shape[1])))
        mean = block.mean(axis=0, dtype=np.float64)
        centred = block - mean  # float64: one copy of the block, not two
        return cls(len(block), mean, centred.T @ centred)


@dataclass
class FittedPca:
    """A centred PCA: the mean, all components (columns, by decreasing variance) and their variances."""

    n: int
    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray

    @property
    def ratios(self) -> list[float]:
        """Share of the total variance explained by each component."""
        total = float(self.variances.sum())
        return [float(v / total) if total > 0 else 0.0 for v in self.variances]


def _matrix(column: pa.Array) -> np.ndarray:
    """An Arrow list<float> column of equal-length rows as a 2-D numpy array (no Python loop)."""
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if column.null_count:
        raise ValueError(f"{column.null_count} rows of the features have no vector")
    lengths = np.diff(column.offsets.to_numpy())
    if lengths.min() != lengths.max():
        raise ValueError(f"feature vectors differ in length ({lengths.min()} to {lengths.max()} values)")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(column), -1)


@dataclass(frozen=True)
class Features:
    """Where a PCA reads its features: a features Parquet (`uri`), or a run's index into the cache
    (`uri` the index, orchard_jobs.features.INDEX_TYPE; `cache` the cache folder its segments are in)."""

    uri: str
    cache: str | None = None

    @classmethod
    def of(cls, source: str | Features) -> Features:
        return source if isinstance(source, Features) else cls(source)


# An index as the workers use it: cache file (segment) -> content SHA-256 -> its (path, label)s.
IndexMap = Mapping[str, Mapping[str, list[tuple[str, str]]]]


@dataclass(frozen=True)
class FeatureFiles:
    """The files to read (path, content), and for an index what to take from each, and how many:
    made once per step by `feature_files`, then read by the fit and the scores alike."""

    uri: str
    files: DataFrame
    index: Any = None  # a broadcast IndexMap
    rows: int | None = None


def _index_map(spark: SparkSession, uri: str) -> tuple[dict[str, dict[str, list[tuple[str, str]]]], int]:
    """The index at `uri` grouped by segment and content, and its number of rows (images)."""
    index = spark.read.parquet(uri).select("path", "label", "sha256", "segment")
    grouped: dict[str, dict[str, list[tuple[str, str]]]] = {}
    rows = 0
    for row in index.collect():  # one row per image, four short strings: the driver holds them
        if row.segment is None:
            raise ValueError(f"{uri}: {row.path} has no segment of the features cache")
        grouped.setdefault(row.segment, {}).setdefault(row.sha256, []).append((row.path, row.label))
        rows += 1
    return grouped, rows


def feature_files(spark: SparkSession, source: str | Features | FeatureFiles) -> FeatureFiles:
    """(path, content) of each Parquet file holding the features, for `_feature_tables`.

    Spark's own files beside them (_SUCCESS, .crc checksums) are hidden from its listing; the glob
    keeps anything else that is not Parquet out too.
    """
    if isinstance(source, FeatureFiles):  # already read: the index is collected and broadcast once
        return source
    features = Features.of(source)
    if features.cache is None:
        files = spark.read.format("binaryFile").option("pathGlobFilter", "*.parquet").load(features.uri)
        return FeatureFiles(features.uri, files.select("path", "content"))
    grouped, rows = _index_map(spark, features.uri)
    if not grouped:
        raise ValueError(f"{features.uri}: the index lists no images")
    cache = features.cache.rstrip("/")
    files = spark.read.format("binaryFile").load([f"{cache}/{segment}" for segment in sorted(grouped)])
    index = spark.sparkContext.broadcast(grouped)
    return FeatureFiles(features.uri, files.select("path", "content"), index, rows)


def _segment_of(path: str) -> str:
    """The segment (`<model folder>/<file name>`) of a cache file's URI."""
    return "/".join(path.rsplit("/", 2)[-2:])


def _indexed(part: pa.RecordBatch, wanted: Mapping[str, list[tuple[str, str]]], seen: set[str],
             columns: list[str]) -> pa.RecordBatch:  # fmt: skip
    """The rows of a cache file's batch that the index wants, once per image path, as `columns`."""
    take, paths, labels = [], [], []
    for i, sha in enumerate(part.column("sha256").to_pylist()):
        owners = wanted.get(sha)
        if owners and sha not in seen:  # a content twice in one file: taken once
            seen.add(sha)
            for path, label in owners:
                take.append(i)
                paths.append(path)
                labels.append(label)
    chosen = {
        "path": pa.array(paths, pa.string()),
        "label": pa.array(labels, pa.string()),
        "features": part.column("features").take(pa.array(take, pa.int64())),
    }
    return pa.RecordBatch.from_arrays([chosen[c] for c in columns], names=columns)


def _feature_tables(
    batches: Iterator[pa.RecordBatch], columns: list[str], index: Any = None
) -> Iterator[pa.RecordBatch]:
    """`columns` of the Parquet files whose bytes arrive in `batches`, up to BLOCK_ROWS rows at a time."""
    for batch in batches:
        for path, content in zip(batch.column("path").to_pylist(), batch.column("content"), strict=True):
            parquet = pq.ParquetFile(pa.BufferReader(content.as_buffer()))
            if index is None:
                yield from parquet.iter_batches(batch_size=BLOCK_ROWS, columns=columns)
                continue
            wanted, seen = index.value.get(_segment_of(path), {}), set[str]()
            for part in parquet.iter_batches(batch_size=BLOCK_ROWS, columns=["sha256", "features"]):
                yield _indexed(part, wanted, seen, columns)


def _blocks(batches: Iterator[pa.RecordBatch], index: Any = None) -> Iterator[np.ndarray]:
    """The feature vectors of the files in `batches` as matrices of BLOCK_ROWS rows (the last fewer)."""
    pending: list[np.ndarray] = []
    buffered = 0
    for part in _feature_tables(batches, ["features"], index):
        if part.num_rows:
            pending.append(_matrix(part.column("features")))
            buffered += part.num_rows
        if buffered >= BLOCK_ROWS:
            yield np.concatenate(pending)
            pending, buffered = [], 0
    if buffered:
        yield np.concatenate(pending)


def _partition_moments(batches: Iterator[pa.RecordBatch], index: Any = None) -> Iterator[pa.RecordBatch]:
    """One row per partition: the moments of its files' features, as raw float64 bytes."""
    total = None
    for block in _blocks(batches, index):
        moments = Moments.of(block)
        total = moments if total is None else total.merge(moments)
    if total is not None:
        yield _batch_of(total)


def _moments_of(n: int, mean: bytes, m2: bytes) -> Moments:
    """Moments from the raw float64 bytes of a STATS_SCHEMA row (m2: its upper triangle)."""
    centre = np.frombuffer(mean, dtype=np.float64)
    d = len(centre)
    full = np.zeros((d, d))
    full[np.triu_indices(d)] = np.frombuffer(m2, dtype=np.float64)
    return Moments(n, centre, full + np.triu(full, 1).T)


def _batch_of(moments: Moments) -> pa.RecordBatch:
    """Moments as the one-row Arrow batch of STATS_SCHEMA; m2 is symmetric: its upper triangle only."""
    upper = moments.m2[np.triu_indices(len(moments.mean))]
    return pa.RecordBatch.from_pydict(
        {"n": [moments.n], "mean": [moments.mean.tobytes()], "m2": [upper.tobytes()]},
        schema=pa.schema([("n", pa.int64()), ("mean", pa.binary()), ("m2", pa.binary())]),
    )


def _merge_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One level of the tree: the moments rows of a partition merged into one."""
    total = None
    for batch in batches:
        for n, mean, m2 in zip(*(batch.column(c).to_pylist() for c in ("n", "mean", "m2")), strict=True):
            part = _moments_of(n, mean, m2)
            total = part if total is None else total.merge(part)
    if total is not None:
        yield _batch_of(total)


def moments(spark: SparkSession, source: str | Features | FeatureFiles) -> Moments:
    """One pass over the features: count, mean and centred cross-products, tree-aggregated.

    Partitions reduce to one row each; while there are more than MERGE_FANIN rows, groups of up to
    MERGE_FANIN are merged on the executors (Arrow all the way: no Python RDD, whose separate
    workers would start cold); the driver merges the last few.
    """
    files = feature_files(spark, source)
    stats = files.files.mapInArrow(functools.partial(_partition_moments, index=files.index), STATS_SCHEMA)
    parts = stats.rdd.getNumPartitions()
    while parts > MERGE_FANIN:
        parts = -(-parts // MERGE_FANIN)
        stats = stats.repartition(parts).mapInArrow(_merge_moments, STATS_SCHEMA)
    total = Moments(0, np.zeros(0), np.zeros((0, 0)))
    # As Arrow where Spark offers it (4.0+): ~0.3 s less than pickled rows for 2 x 6.5 MB here.
    table = stats.toArrow() if hasattr(stats, "toArrow") else None
    rows = stats.collect() if table is None else table.to_pylist()
    for row in rows:
        values = row if isinstance(row, dict) else row.asDict()
        total = total.merge(_moments_of(values["n"], values["mean"], values["m2"]))
    if files.rows is not None and total.n != files.rows:
        raise ValueError(f"{files.uri} lists {files.rows} images, the cache holds features for {total.n}")
    return total


def fit(spark: SparkSession, source: str | Features | FeatureFiles) -> FittedPca:
    """Fit a centred PCA of the features, with every component (features x features)."""
    stats = moments(spark, source)
    if stats.n < 2:
        raise ValueError(f"PCA needs at least 2 featurized images, got {stats.n}")
    variances, vectors = np.linalg.eigh(stats.m2 / (stats.n - 1))
    order = np.argsort(variances)[::-1]
    variances, vectors = np.clip(variances[order], 0.0, None), vectors[:, order]
    # scikit-learn's sign convention: each component's largest entry is positive.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return FittedPca(stats.n, stats.mean, vectors * signs, variances)


def scores(
    spark: SparkSession, source: str | Features | FeatureFiles, fitted: FittedPca, k: int
) -> DataFrame:
    """(path, label, pca array<double>): centred scores on the first k components, one row per image."""
    mean, basis = fitted.mean, np.ascontiguousarray(fitted.components[:, :k])
    schema = pa.schema([("path", pa.string()), ("label", pa.string()), ("pca", pa.list_(pa.float64()))])

    files = feature_files(spark, source)
    index = files.index

    def project(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for part in _feature_tables(batches, ["path", "label", "features"], index):
            rows = part.num_rows
            x = _matrix(part.column("features"))
            # Row by row (a vector-matrix product each): an image's coordinates never depend on the
            # images that share its batch, as a matrix product's rounding does. ~2x the time of one
            # matrix product, ~1 s per 100,000 images.
            projected = np.concatenate([row @ basis for row in x - mean]) if rows else np.zeros(0)
            offsets = pa.array(np.arange(0, (rows + 1) * k, k, dtype=np.int32))
            pca = pa.ListArray.from_arrays(offsets, pa.array(projected, type=pa.float64()))
            yield pa.RecordBatch.from_arrays(
                [part.column("path").cast(pa.string()), part.column("label").cast(pa.string()), pca],
                schema=schema,
            )

    return files.files.mapInArrow(project, "path string, label string, pca array<double>")


def pipeline_model(spark: SparkSession, fitted: FittedPca, k: int) -> PipelineModel:
    """The fit as a pyspark.ml PipelineModel (centring, then PCA with k components) on a `vector` column.

    pyspark.ml has no public constructor for fitted models, so the JVM's own model classes are
    built from the arrays; the saved model loads with `PipelineModel.load` and projects new
    features (`to_vectors`) exactly as `scores` does.
    """
    from pyspark.ml.common import _py2java  # ruff: ignore[import-private-name] - pyspark.ml's own Python-to-JVM converter
    from pyspark.ml.feature import PCAModel, StandardScalerModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    sc = spark.sparkContext
    jvm: Any = sc._jvm  # py4j's gateway: untyped
    d = len(fitted.mean)
    java_scaler = jvm.org.apache.spark.ml.feature.StandardScalerModel(
        "orchard_centre", _py2java(sc, DenseVector(np.ones(d))), _py2java(sc, DenseVector(fitted.mean))
    )
    java_pca = jvm.org.apache.spark.ml.feature.PCAModel(
        "orchard_pca",
        _py2java(sc, DenseMatrix(d, k, fitted.components[:, :k].flatten(order="F"))),
        _py2java(sc, DenseVector(fitted.ratios[:k])),
    )
    scaler = StandardScalerModel(java_scaler)
    scaler._set(inputCol="vector", outputCol="centred", withMean=True, withStd=False)
    pca = PCAModel(java_pca)
    pca._set(inputCol="centred", outputCol="scores", k=k)
    for stage in (scaler, pca):
        stage._transfer_params_to_java()
    return PipelineModel([scaler, pca])


def load_basis(uri: str) -> FittedPca:
    """A saved PCA model (`pipeline_model`'s) as a FittedPca: its mean, its k components, their variances."""
    model = PipelineModel.load(uri)
    centre, pca = model.stages[0], model.stages[1]
    components = pca.pc.toArray()  # type: ignore[attr-defined]  # the stage is a PCAModel
    mean = centre.mean.toArray()  # type: ignore[attr-defined]  # the stage is a StandardScalerModel
    variances = pca.explainedVariance.toArray()  # type: ignore[attr-defined]
    return FittedPca(0, np.asarray(mean, dtype=np.float64), np.asarray(components), np.asarray(variances))


def align_signs(fitted: FittedPca, reference: FittedPca) -> FittedPca:
    """`fitted` with each component's sign turned to agree with the same component of `reference`.

    A component and its negation fit equally well; turning each to point the way the previous
    basis's did (a positive dot product) keeps coordinates comparable from run to run, and leaves
    a refit on unchanged data exactly the previous one.
    """
    shared = min(fitted.components.shape[1], reference.components.shape[1])
    dots = np.einsum("ij,ij->j", fitted.components[:, :shared], reference.components[:, :shared])
    signs = np.ones(fitted.components.shape[1])
    signs[:shared][dots < 0] = -1.0
    return FittedPca(fitted.n, fitted.mean, fitted.components * signs, fitted.variances)


def basis_on(stats: Moments, basis: FittedPca) -> tuple[FittedPca, list[float]]:
    """A published basis applied to a run's features: its mean and components, and the share of the
    run's total variance each component holds (the variance of the scores ÷ the total)."""
    if stats.n < 2:
        raise ValueError(f"PCA needs at least 2 featurized images, got {stats.n}")
    if len(stats.mean) != len(basis.mean):
        raise ValueError(f"the basis has {len(basis.mean)} features per image, the run {len(stats.mean)}")
    # The variance of the scores does not depend on the centre (the basis's mean, not the run's).
    covariance = stats.m2 / (stats.n - 1)
    variances = np.einsum("ij,ik,kj->j", basis.components, covariance, basis.components)
    total = float(np.trace(covariance))
    ratios = [float(v / total) if total > 0 else 0.0 for v in variances]
    return FittedPca(stats.n, basis.mean, basis.components, variances), ratios


def to_vectors(features: DataFrame) -> DataFrame:
    """(path, label, features array) -> (path, label, vector): the input of the saved PipelineModel."""
    from pyspark.ml.functions import array_to_vector

    return features.select("path", "label", array_to_vector(F.col("features")).alias("vector"))


def choose_k(ratios: Sequence[float], target: float) -> int:
    """The smallest k whose components explain at least `target` of the variance."""
    if not 0 < target <= 1:
        raise ValueError(f"target explained variance must be in (0, 1], got {target}")
    total = 0.0
    for k, ratio in enumerate(ratios, start=1):
        total += ratio
        # Summing ratios that add up to 1 can land a hair below it; 1e-12 absorbs that rounding.
        if total >= target - 1e-12:
            return k
    return len(ratios)


def validate_k(k: int, n_images: int, dim: int) -> None:
    """Refuse a k that the data cannot support, naming the limit."""
    if n_images < 2:
        raise ValueError(f"PCA needs at least 2 featurized images, got {n_images}")
    if not 1 <= k <= min(n_images, dim):
        raise ValueError(
            f"pca_k={k} is out of range: it must be between 1 and min(images, features) = "
            f"{min(n_images, dim)}"
        )


def csv_columns(k: int) -> list[str]:
    """Header of pcaFeatures.csv."""
    return ["path", "label", *[f"pc_{i}" for i in range(1, k + 1)]]


def flatten(pca_scores: DataFrame, k: int) -> DataFrame:
    """One column per component (the CSV source refuses arrays), ordered by path."""
    cols = [F.col("pca")[i - 1].alias(f"pc_{i}") for i in range(1, k + 1)]
    return pca_scores.select("path", "label", *cols).orderBy("path")


def write_csv_parts(flat: DataFrame, uri: str) -> None:
    """Headerless, RFC 4180-quoted CSV parts whose concatenation in name order is the sorted table."""
    (
        flat.write.mode("overwrite")
        .option("header", False)
        .option("quote", '"')
        .option("escape", '"')  # a quote inside a field is doubled, as RFC 4180 says
        .option("lineSep", "\n")
        .option("encoding", "UTF-8")
        .csv(uri)
    )


def summary(ratios_all: Sequence[float], k: int, target: float | None, n_images: int) -> dict:
    """Explained-variance document of the fitted model."""
    ratios = list(ratios_all[:k])
    cumulative = []
    total = 0.0
    for ratio in ratios:
        total += ratio
        cumulative.append(total)
    return {
        "k": k,
        "n_images": n_images,
        "target_variance": target,
        "variance_kept": cumulative[-1] if cumulative else 0.0,
        "explained_variance_ratio": ratios,
        "cumulative_variance_ratio": cumulative,
        "explained_variance_ratio_all": [r for r in ratios_all if not math.isnan(r)],
        "columns": csv_columns(k),
    }
