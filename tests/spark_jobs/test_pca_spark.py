"""Centred PCA in Spark against scikit-learn, the choice of k, and the CSV parts."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA

from orchard.storage.lake import Lake
from orchard_jobs import pca as pca_ops

pytestmark = pytest.mark.spark

N, D, RANK = 80, 1280, 6


@pytest.fixture(scope="module")
def matrix() -> np.ndarray:
    """Low-rank structure (6 directions with decaying strength), small noise, and a far-off mean."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(N, RANK)) * np.array([30, 20, 12, 6, 3, 1.5])
    directions = np.linalg.qr(rng.normal(size=(D, RANK)))[0].T
    x = scores @ directions + rng.normal(scale=0.05, size=(N, D)) + rng.normal(5, 2, size=D)
    return x.astype(np.float32)


FEATURES_SCHEMA = "path string, label string, features array<float>"


def write_features(spark, rows, folder, partitions: int) -> str:
    """A features Parquet as the featurize step writes it (one file per partition); its URI."""
    uri = f"file://{folder}"
    spark.createDataFrame(rows, FEATURES_SCHEMA).repartition(partitions).write.parquet(uri)
    return uri


@pytest.fixture(scope="module")
def features_uri(spark, matrix, tmp_path_factory):
    rows = [
        (f"class {i % 3}/img_{i:03d}.jpg", f"class {i % 3}", row.tolist()) for i, row in enumerate(matrix)
    ]
    # Several files, so the tree aggregate merges partial moments.
    return write_features(spark, rows, tmp_path_factory.mktemp("pca") / "features", 3)


@pytest.fixture(scope="module")
def features(spark, features_uri):
    return spark.read.parquet(features_uri)


@pytest.fixture(scope="module")
def fitted(spark, features_uri):
    return pca_ops.fit(spark, features_uri)


def aligned_relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Relative error after flipping each component's sign to match the reference."""
    signs = np.sign(np.sum(got * expected, axis=0))
    return float(np.linalg.norm(got * signs - expected) / np.linalg.norm(expected))


def in_matrix_order(rows) -> np.ndarray:
    """Scores back in the matrix's order: the image number is in the file name."""
    return np.array([r.pca for r in sorted(rows, key=lambda r: r.path.split("_")[-1])])


def test_scores_equal_scikit_learn(spark, features_uri, fitted, matrix):
    k = 5
    got = in_matrix_order(pca_ops.scores(spark, features_uri, fitted, k).collect())

    reference = SkPCA(n_components=k, svd_solver="full")
    expected = reference.fit_transform(matrix.astype(np.float64))

    assert fitted.n == N
    assert got.shape == (N, k)
    assert aligned_relative_error(got, expected) <= 1e-6
    np.testing.assert_allclose(fitted.ratios[:k], reference.explained_variance_ratio_, rtol=1e-6)
    # The scores are centred.
    assert np.abs(got.mean(axis=0)).max() <= 1e-6 * np.abs(got).max()


def test_moments_merge_equals_one_block(matrix):
    halves = pca_ops.Moments.of(matrix[:30]).merge(pca_ops.Moments.of(matrix[30:]))
    whole = pca_ops.Moments.of(matrix)
    assert halves.n == whole.n == N
    np.testing.assert_allclose(halves.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(halves.m2, whole.m2, rtol=1e-9, atol=1e-9 * np.abs(whole.m2).max())
    assert pca_ops.Moments.of(matrix[:0].reshape(0, D)).merge(whole) is whole


def test_saved_model_reloads_and_projects_like_the_scores(spark, features, features_uri, fitted, tmp_path):
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array

    k = 4
    uri = f"file://{tmp_path}/pca_model"
    pca_ops.pipeline_model(spark, fitted, k).write().overwrite().save(uri)
    reloaded = PipelineModel.load(uri)
    projected = reloaded.transform(pca_ops.to_vectors(features)).select(
        "path", vector_to_array("scores").alias("pca")
    )
    got = in_matrix_order(projected.collect())
    expected = in_matrix_order(pca_ops.scores(spark, features_uri, fitted, k).collect())
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(reloaded.stages[-1].explainedVariance.toArray(), fitted.ratios[:k])


@pytest.mark.parametrize("rows", [0, 1])
def test_fit_refuses_fewer_than_two_images(spark, tmp_path, rows):
    uri = write_features(spark, [("a/1.jpg", "a", [1.0] * D)][:rows], tmp_path / "features", 1)
    with pytest.raises(ValueError, match="at least 2 featurized images"):
        pca_ops.fit(spark, uri)


def test_the_fit_reads_only_the_datasets_parquet_files(features_uri, fitted, matrix):
    """Spark's own files beside the parts (_SUCCESS, .crc checksums) are not features."""
    from pathlib import Path

    folder = Path(features_uri.removeprefix("file://"))
    assert (folder / "_SUCCESS").exists() and list(folder.glob(".*.crc"))
    assert fitted.n == N
    np.testing.assert_allclose(fitted.mean, matrix.astype(np.float64).mean(axis=0), rtol=1e-9)


def test_many_partitions_merge_on_the_executors_as_one_block(spark, matrix, tmp_path):
    rows = [(f"c/{i:03d}.jpg", "c", row.tolist()) for i, row in enumerate(matrix)]
    uri = write_features(spark, rows, tmp_path / "features", 20)
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "1")  # one file per partition
    try:
        assert pca_ops.feature_files(spark, uri).files.rdd.getNumPartitions() == 20 > pca_ops.MERGE_FANIN
        got = pca_ops.moments(spark, uri)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    whole = pca_ops.Moments.of(matrix)
    assert got.n == N
    np.testing.assert_allclose(got.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(got.m2, whole.m2, rtol=1e-9, atol=1e-9 * np.abs(whole.m2).max())


def test_vectors_of_different_lengths_are_refused(spark, tmp_path):
    rows = [("a/1.jpg", "a", [1.0] * D), ("a/2.jpg", "a", [2.0] * (D - 1)), ("a/3.jpg", "a", [0.0] * (D + 1))]
    uri = write_features(spark, rows, tmp_path / "features", 1)
    with pytest.raises(Exception, match="differ in length"):
        pca_ops.fit(spark, uri)


def test_k_for_a_variance_target_matches_scikit_learn(fitted, matrix):
    ratios = fitted.ratios[:N]
    for target in (0.5, 0.8, 0.9, 0.99):
        expected = SkPCA(n_components=target, svd_solver="full").fit(matrix.astype(np.float64)).n_components_
        assert pca_ops.choose_k(ratios, target) == expected, target


@pytest.mark.parametrize(
    ("ratios", "target", "k"),
    [([0.6, 0.3, 0.1], 0.5, 1), ([0.6, 0.3, 0.1], 0.9, 2), ([0.6, 0.3, 0.1], 1.0, 3), ([0.5, 0.5], 0.99, 2)],
)
def test_choose_k(ratios, target, k):
    assert pca_ops.choose_k(ratios, target) == k


@pytest.mark.parametrize("target", [0, -0.1, 1.5])
def test_choose_k_refuses_impossible_targets(target):
    with pytest.raises(ValueError, match="target explained variance"):
        pca_ops.choose_k([1.0], target)


def test_validate_k_names_the_limit():
    pca_ops.validate_k(40, 40, 1280)
    with pytest.raises(ValueError, match=r"pca_k=41 .* min\(images, features\) = 40"):
        pca_ops.validate_k(41, 40, 1280)
    with pytest.raises(ValueError, match="at least 2 featurized images"):
        pca_ops.validate_k(1, 1, 1280)


def test_summary_lists_variance_and_columns():
    doc = pca_ops.summary([0.5, 0.3, 0.2], 2, 0.8, 10)
    assert doc["k"] == 2
    assert doc["explained_variance_ratio"] == [0.5, 0.3]
    assert doc["cumulative_variance_ratio"] == [0.5, 0.8]
    assert doc["variance_kept"] == pytest.approx(0.8)
    assert doc["columns"] == ["path", "label", "pc_1", "pc_2"]


def test_csv_parts_merge_into_one_quoted_sorted_table(spark, tmp_path):
    names = [
        ("Apple Golden 1/r_1.jpg", "Apple Golden 1"),
        ('odd/quote"and,comma.jpg', "odd"),
        ("odd/new\nline.png", "odd"),
        ("Äpfel/grün 1.jpg", "Äpfel"),
        ("Banana/b.jpg", "Banana"),
    ]
    rows = [(p, lbl, [float(i), -0.5 * i, 1e-12 * i]) for i, (p, lbl) in enumerate(names)]
    df = spark.createDataFrame(rows, "path string, label string, pca array<double>")
    parts = tmp_path / "parts"
    # Several part files, as a large table gives: stop AQE from merging these few rows into one.
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    try:
        pca_ops.write_csv_parts(pca_ops.flatten(df, 3), f"file://{parts}")
    finally:
        spark.conf.unset("spark.sql.adaptive.coalescePartitions.enabled")
    assert len([p for p in parts.glob("part-*") if p.stat().st_size]) > 1

    out = tmp_path / "pcaFeatures.csv"
    Lake.local().merge_csv(pca_ops.csv_columns(3), f"file://{parts}", f"file://{out}")
    table = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))

    assert table[0] == ["path", "label", "pc_1", "pc_2", "pc_3"]
    assert [r[0] for r in table[1:]] == sorted(p for p, _ in names)
    by_path = {r[0]: r for r in table[1:]}
    for i, (path, label) in enumerate(names):
        assert by_path[path][1] == label
        assert [float(v) for v in by_path[path][2:]] == [float(i), -0.5 * i, 1e-12 * i]


def test_tied_eigenvalues_give_scikit_learns_subspace(spark, tmp_path):
    """With exactly equal variances the components of a pair are any rotation of each other: compare
    the subspaces they span (principal angles), and the variances, not the vectors."""
    from scipy.linalg import subspace_angles

    rng = np.random.default_rng(3)
    n = 60
    scores = rng.normal(size=(n, 4))
    scores -= scores.mean(axis=0)
    scores = np.linalg.qr(scores)[0] * np.array([10.0, 10.0, 3.0, 3.0])  # two tied pairs
    directions = np.linalg.qr(rng.normal(size=(D, 4)))[0]
    x = (scores @ directions.T + rng.normal(4, 1, size=D)).astype(np.float32)
    rows = [(f"c/img_{i:03d}.jpg", "c", row.tolist()) for i, row in enumerate(x)]
    fitted = pca_ops.fit(spark, write_features(spark, rows, tmp_path / "features", 3))

    reference = SkPCA(n_components=4, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(fitted.variances[:4], reference.explained_variance_, rtol=1e-5)
    assert fitted.variances[0] == pytest.approx(fitted.variances[1], rel=1e-5)  # the tie is real
    for pair in (slice(0, 2), slice(2, 4)):
        got, expected = fitted.components[:, pair], reference.components_[pair].T
        assert np.degrees(subspace_angles(got, expected)).max() < 0.01
        assert np.degrees(subspace_angles(got, directions[:, pair])).max() < 0.01


def test_an_index_into_the_cache_reads_as_the_features_it_names(spark, matrix, features_uri, tmp_path):
    """A run's index (path, label, sha256, segment) into cache files gives the fit and the scores of
    the features it names: a content listed under two paths counts twice, a content stored twice or
    in a file the index does not name counts once, a cached content no image uses not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = tmp_path / "cache"
    (cache / "model=abc").mkdir(parents=True)
    shas = [f"{i:064x}" for i in range(N)]
    vector = pa.list_(pa.float32())

    def segment(name: str, rows: list[int], extra: int = 0) -> None:
        table = pa.table(
            {
                "sha256": [shas[i] for i in rows] + [f"{9999 + j:064x}" for j in range(extra)],
                "features": pa.array(
                    [matrix[i].tolist() for i in rows] + [matrix[0].tolist()] * extra, vector
                ),
            }
        )
        pq.write_table(table, cache / "model=abc" / name)

    half = N // 2
    segment("part-a.parquet", [*range(half), 3], extra=2)  # a duplicated row, two rows no image uses
    segment("part-b.parquet", list(range(half, N)))
    segment("part-c.parquet", list(range(N)))  # the same contents again, in a file the index never names
    index = [
        (
            f"class {i % 3}/img_{i:03d}.jpg",
            f"class {i % 3}",
            shas[i],
            f"model=abc/part-{'a' if i < half else 'b'}.parquet",
        )
        for i in range(N)
    ]
    index.append(("copies/img_007.jpg", "copies", shas[7], "model=abc/part-a.parquet"))  # same content
    index_uri = f"file://{tmp_path}/index"
    spark.createDataFrame(index, "path string, label string, sha256 string, segment string").write.parquet(
        index_uri
    )
    source = pca_ops.Features(index_uri, f"file://{cache}")

    plain = [(p, lab, matrix[int(p[-7:-4])].tolist()) for p, lab, _, _ in index]
    plain_uri = write_features(spark, plain, tmp_path / "plain", 2)
    got, expected = pca_ops.fit(spark, source), pca_ops.fit(spark, plain_uri)
    assert got.n == expected.n == N + 1
    np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-9)
    np.testing.assert_allclose(got.variances[:6], expected.variances[:6], rtol=1e-7)
    scores = {r.path: r.pca for r in pca_ops.scores(spark, source, got, 4).collect()}
    reference = {r.path: r.pca for r in pca_ops.scores(spark, plain_uri, got, 4).collect()}
    assert scores.keys() == reference.keys() and len(scores) == N + 1
    assert all(scores[p] == reference[p] for p in scores)  # projected alone: the very same numbers
    assert scores["copies/img_007.jpg"] == scores["class 1/img_007.jpg"]

    # An index naming a content the cache no longer holds (erased) is refused, not fitted short.
    erased = f"file://{tmp_path}/index-erased"
    missing = [*index, ("Kiwi/gone.jpg", "Kiwi", "f" * 64, "model=abc/part-b.parquet")]
    spark.createDataFrame(missing, "path string, label string, sha256 string, segment string").write.parquet(
        erased
    )
    with pytest.raises(ValueError, match=r"lists 82 images, the cache holds features for 81"):
        pca_ops.fit(spark, pca_ops.Features(erased, f"file://{cache}"))


def test_signs_align_to_the_previous_basis_and_a_basis_reloads(spark, fitted, tmp_path):
    signs = np.array([-1, 1, -1] + [1] * (D - 3))
    flipped = pca_ops.FittedPca(fitted.n, fitted.mean, fitted.components * signs, fitted.variances)
    aligned = pca_ops.align_signs(flipped, fitted)
    np.testing.assert_array_equal(aligned.components, fitted.components)

    uri = f"file://{tmp_path}/model"
    pca_ops.pipeline_model(spark, fitted, 5).write().save(uri)
    basis = pca_ops.load_basis(uri)
    np.testing.assert_array_equal(basis.mean, fitted.mean)
    np.testing.assert_array_equal(basis.components, fitted.components[:, :5])
    # Fewer components in the reference: the rest keep their signs.
    assert pca_ops.align_signs(flipped, basis).components[0, 5] == flipped.components[0, 5]


def test_a_published_basis_on_new_features_keeps_its_axes(spark, fitted, matrix, features_uri, tmp_path):
    uri = f"file://{tmp_path}/model"
    pca_ops.pipeline_model(spark, fitted, 6).write().save(uri)
    basis = pca_ops.load_basis(uri)
    stats = pca_ops.moments(spark, features_uri)
    applied, ratios = pca_ops.basis_on(stats, basis)
    # On the data it was fitted on, the basis holds the fit's own shares of the variance.
    np.testing.assert_allclose(ratios, fitted.ratios[:6], rtol=1e-9)
    np.testing.assert_array_equal(applied.mean, fitted.mean)
    assert applied.n == N
