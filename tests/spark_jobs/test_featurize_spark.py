"""The featurize transform in Spark equals plain in-process inference, across partitions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from orchard.samples import generate
from orchard_jobs import features
from orchard_jobs.images import decode_image
from orchard_jobs.model import FEATURE_DIM, Featurizer, random_weights
from tests.imagefactory import truncated_jpeg
from tests.models import onnx_model

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    generate(root, per_class=4, seed=11)
    (root / "Kiwi" / "broken, truncated.jpg").write_bytes(truncated_jpeg())
    (root / "Kiwi" / "notes.txt").write_text("not an image")
    (root / "Plum" / "empty.JPG").write_bytes(b"")
    (root / "top level.png").write_bytes((root / "Plum" / "0_100.jpg").read_bytes())
    return root


@pytest.fixture(scope="module")
def outcome(spark, image_dir):
    uri = f"file://{image_dir}"
    files, listing = features.read_images(spark, uri)
    results = features.featurize(files, spark.sparkContext.broadcast(onnx_model(5)), partitions=3)
    results = results.withColumn("partition", F.spark_partition_id()).cache()
    rows = results.collect()
    every = features.outcomes(spark, results.drop("partition"), listing, uri).collect()
    return rows, [r.path for r in listing.collect()], every


def test_features_equal_in_process_keras_across_partitions(outcome, image_dir):
    rows, _, _ = outcome
    good = {r.path: r for r in rows if r.reason is None}
    assert len(good) == 24 + 1  # generated images plus the one in the root
    assert len({r.partition for r in good.values()}) == 3

    paths = sorted(good)
    images = np.stack([decode_image((image_dir / p).read_bytes()) for p in paths])
    # The reference: the same weights in Keras, in this process (the workers ran ONNX Runtime).
    expected = Featurizer(random_weights(5))(images)
    got = np.array([good[p].features for p in paths], dtype=np.float32)

    assert got.shape == (len(paths), FEATURE_DIM)
    scale = np.abs(expected).max()
    assert scale > 0.1  # features at a trained network's scale (random_weights), not ~1e-11
    assert np.abs(got - expected).max() <= 1e-4 * scale
    assert np.abs(got[0] - got[1]).max() > 1e-2 * scale  # the model does not ignore its input


def test_every_file_is_featurized_or_quarantined_with_a_reason(outcome, image_dir):
    _, listed, every = outcome
    on_disk = {p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*") if p.is_file()}
    assert sorted(r.path for r in every) == sorted(on_disk)
    assert len(listed) == len(on_disk)

    reasons = {r.path: r.reason for r in every if r.reason is not None}
    assert reasons == {
        "Kiwi/broken, truncated.jpg": reasons["Kiwi/broken, truncated.jpg"],
        "Kiwi/notes.txt": "not an image (unrecognised format)",
        "Plum/empty.JPG": "empty file (0 bytes)",
    }
    assert reasons["Kiwi/broken, truncated.jpg"].startswith("truncated JPEG")
    assert {r.label for r in every if r.path == "Plum/empty.JPG"} == {"Plum"}


def test_labels_are_folder_names(outcome):
    rows, _, _ = outcome
    labels = {r.path: r.label for r in rows}
    assert labels["Apple Golden 1/0_100.jpg"] == "Apple Golden 1"
    assert labels["Lemon Meyer/2_100.png"] == "Lemon Meyer"
    assert labels["top level.png"] == "_unlabelled"


def test_the_model_is_built_once_per_python_worker_not_per_task(spark, image_dir):
    uri = f"file://{image_dir}"
    files, _ = features.read_images(spark, uri)
    fresh = onnx_model(6)  # a model no worker has a session for yet
    results = features.featurize(files, spark.sparkContext.broadcast(fresh), partitions=6).cache()
    # Counted from the data: the model_built column is computed with the features themselves.
    assert results.select(F.spark_partition_id()).distinct().count() == 6  # six tasks ran...
    # ...on local[2]'s at most two reused Python workers: exactly one model each.
    counts = features.count_outcomes(results)
    assert 1 <= counts["model_builds"] <= 2
    assert counts["model_builds"] == counts["python_workers"]
    # Same model again: the workers' sessions are reused, none is opened.
    again = features.featurize(files, spark.sparkContext.broadcast(fresh), partitions=6).cache()
    assert features.count_outcomes(again)["model_builds"] == 0


def test_python_workers_never_import_tensorflow(spark, outcome):
    # After featurizing, ask the same reused (SQL) Python workers what they have imported.
    def probe(batches):
        import pandas as pd

        for _ in batches:
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "tf2onnx"})
            yield pd.DataFrame({"tf_modules": [len(loaded)], "engine": ["onnxruntime" in sys.modules]})

    rows = spark.range(4).repartition(4).mapInPandas(probe, "tf_modules int, engine boolean").collect()
    assert any(r.engine for r in rows)  # these are the workers that featurized
    assert all(r.tf_modules == 0 for r in rows), rows


def test_limit_takes_the_first_paths(spark, image_dir):
    uri = f"file://{image_dir}"
    files, listing = features.read_images(spark, uri, limit=5)
    listed = sorted(r.path for r in listing.collect())
    assert len(listed) == 5
    assert sorted(r.path for r in files.select("path").collect()) == listed


def test_outputs_split_by_reason(spark, outcome):
    """The three bad files land in the quarantine, with a reason each; the 25 images in the features."""
    _, _, every = outcome
    results = spark.createDataFrame(
        [tuple(r[name] for name in features.RESULT_TYPE.fieldNames()) for r in every], features.RESULT_TYPE
    )
    good = features.featurized(results).collect()
    bad = features.quarantined(results).collect()
    assert features.featurized(results).columns == ["path", "label", "features"]
    assert features.quarantined(results).columns == ["path", "label", "reason"]
    assert sorted(r.path for r in bad) == ["Kiwi/broken, truncated.jpg", "Kiwi/notes.txt", "Plum/empty.JPG"]
    assert all(r.reason for r in bad)
    assert len(good) == 25 and "top level.png" in {r.path for r in good}
    assert all(len(r.features) == FEATURE_DIM for r in good)
    counts = features.count_outcomes(results)
    assert (counts["inputs"], counts["featurized"], counts["quarantined"]) == (28, 25, 3)


def test_partitions_are_a_multiple_of_the_slots_with_bounded_tasks():
    assert features.plan_partitions(400, slots=2) == 2
    assert features.plan_partitions(0, slots=2) == 2
    assert features.plan_partitions(2001, slots=2, per_task=1000) == 4
    assert features.plan_partitions(100_000, slots=16, per_task=1000) == 112
    for images in (1, 999, 5_000, 22_688):
        parts = features.plan_partitions(images, slots=8, per_task=500)
        assert parts % 8 == 0
        assert images / parts <= 500
