"""Features are cached by image content: a folder that gained images featurizes only those."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchard.samples import generate
from tests.conftest import ROOT
from tests.features_table import read_features
from tests.models import model_document

pytestmark = pytest.mark.spark


def featurize_step():
    """spark_jobs/featurize.py, the step's entry script, as a module."""
    spec = importlib.util.spec_from_file_location("featurize_step", ROOT / "spark_jobs" / "featurize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_argv(images: Path, out: Path, weights: str, cache: Path | None = None) -> list[str]:
    """Arguments of the featurize step with its outputs under `out`."""
    return [
        "--images", f"file://{images}", "--features", f"file://{out}/features",
        "--quarantine", f"file://{out}/quarantine", "--summary", f"file://{out}/featurize.json",
        "--model", model_document(out, weights),
        *(["--cache", f"file://{cache}"] if cache else []),
    ]  # fmt: skip


def run_step(
    spark, images: Path, out: Path, cache: Path | None, weights: str = "random:9"
) -> tuple[dict, pd.DataFrame]:
    step = featurize_step()
    summary = step.run(spark, step.parse_args(step_argv(images, out, weights, cache)))
    assert json.loads((out / "featurize.json").read_text()) == summary
    table = read_features(out / "features", cache)
    return summary, table.sort_values("path").reset_index(drop=True)


@pytest.mark.backs("a folder that gained 100 images (and a renamed file)", "a third run on the same inputs")
def test_a_folder_that_gained_images_featurizes_only_the_new_ones(spark, tmp_path):
    images, cache = tmp_path / "images", tmp_path / "cache"
    first_batch = generate(images, per_class=5, seed=1)  # 30 images
    first, first_features = run_step(spark, images, tmp_path / "run1", cache)
    assert (first["counts"]["featurized"], first["counts"]["from_cache"]) == (30, 0)

    # 100 new images land (a new class folder and more of the old classes), and one is renamed.
    generate(tmp_path / "new", per_class=17, seed=2)
    for path in sorted((tmp_path / "new").rglob("*.*"))[:100]:
        target = images / path.parent.name / f"new_{path.name}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
    first_batch[0].rename(first_batch[0].with_name("renamed.jpg"))

    second, second_features = run_step(spark, images, tmp_path / "run2", cache)
    counts = second["counts"]
    assert counts["inputs"] == counts["featurized"] == 130  # PCA gets every image...
    assert counts["featurized"] - counts["from_cache"] == 100  # ...the model saw only the new ones
    assert counts["from_cache"] == 30  # the renamed file's content was known

    # Cached features are the ones the model computes: a run without the cache agrees (up to the
    # float rounding of different batch compositions).
    _, fresh = run_step(spark, images, tmp_path / "fresh", cache=None)
    assert list(second_features.path) == list(fresh.path)
    got, expected = np.stack(second_features.features), np.stack(fresh.features)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert list(second_features.label) == list(fresh.label)

    # The same inputs again: nothing to compute, the same outputs, and nothing added to the cache:
    # the run's features output is an index into it (path, label, sha256, segment), no vectors.
    cached_before = sorted(p.relative_to(cache) for p in cache.rglob("*.parquet"))
    third, third_features = run_step(spark, images, tmp_path / "run3", cache)
    assert sorted(p.relative_to(cache) for p in cache.rglob("*.parquet")) == cached_before
    index = pd.read_parquet(tmp_path / "run3" / "features")
    assert list(index.columns) == ["path", "label", "sha256", "segment"] and len(index) == 130
    assert third["counts"]["from_cache"] == 130
    assert third["counts"]["model_builds"] == 0
    # The workers' busy time (what a run's plan takes its rate from): the model's work only, within
    # the job's time on every slot; none when the cache held everything.
    busy, job = second["phases_seconds"]["busy"], second["phases_seconds"]["featurize"]
    assert 0 < busy <= job * second["slots"] and third["phases_seconds"]["busy"] == 0
    pd.testing.assert_frame_equal(third_features, second_features)
    assert not any(first_features.path.duplicated()) and not any(third_features.path.duplicated())


@pytest.mark.backs("other weights")
def test_other_weights_do_not_share_the_cache(spark, tmp_path):
    images, cache = tmp_path / "images", tmp_path / "cache"
    generate(images, per_class=1, seed=3)
    run_step(spark, images, tmp_path / "a", cache)
    summary, _ = run_step(spark, images, tmp_path / "b", cache, weights="random:10")
    assert summary["counts"]["from_cache"] == 0
    assert len(list(cache.iterdir())) == 2  # one folder per model digest
