"""Centred PCA on the features with pyspark.ml, and the flat CSV form of its scores.

pyspark.ml's PCA centres while fitting (it diagonalises the covariance) but projects the raw
vectors; centring them first with StandardScaler(withMean=True, withStd=False) makes the scores
equal scikit-learn's PCA scores up to the sign of each component.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def to_vectors(features: DataFrame) -> DataFrame:
    """(path, label, features array) -> (path, label, vector) for pyspark.ml."""
    return features.select("path", "label", array_to_vector("features").alias("vector"))


def fit(vectors: DataFrame, k: int) -> PipelineModel:
    """Fit centring + PCA with k components."""
    centre = StandardScaler(inputCol="vector", outputCol="centred", withMean=True, withStd=False)
    pca = PCA(k=k, inputCol="centred", outputCol="scores")
    return Pipeline(stages=[centre, pca]).fit(vectors)


def explained_variance(model: PipelineModel) -> list[float]:
    """Share of the total variance explained by each fitted component."""
    return [float(v) for v in model.stages[-1].explainedVariance.toArray()]


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


def scores(model: PipelineModel, vectors: DataFrame) -> DataFrame:
    """(path, label, pca array<double>): centred scores, one row per image."""
    return model.transform(vectors).select("path", "label", vector_to_array("scores").alias("pca"))


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
