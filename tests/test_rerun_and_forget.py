"""Re-running on the same inputs, and erasing images, end to end on the local target."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchard.samples import generate
from orchard.uris import local_path
from tests.conftest import ROOT
from tests.imagefactory import truncated_jpeg

pytestmark = pytest.mark.e2e

ODD_NAME = 'Kiwi/kiwi, «ripe» \'n "sweet" é.jpg'


@pytest.fixture(scope="module")
def dags(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    lake = tmp_path_factory.mktemp("lake")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORCHARD_LAKE", str(lake))
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags, lake


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("src") / "orchard photos"
    generate(folder, per_class=4, seed=5)  # 24 images
    (folder / "Kiwi" / "broken.jpg").write_bytes(truncated_jpeg())
    (folder / ODD_NAME).write_bytes((folder / "Kiwi" / "0_100.jpg").read_bytes())
    return folder


def latest_manifest(lake: Path) -> dict:
    latest = json.loads((lake / "latest.json").read_text())
    return json.loads(local_path(latest["manifest"]).read_text())


def csv_rows(manifest: dict) -> list[list[str]]:
    with local_path(manifest["outputs"]["csv"]).open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def two_runs(airflow_db, dags, source):
    bags, lake = dags
    conf = {"source": str(source), "weights": "random:3", "pca_k": 4}
    first = bags["fruits_pipeline"].test(run_conf=conf)
    assert first.state == "success"
    manifest_1 = latest_manifest(lake)
    second = bags["fruits_pipeline"].test(run_conf=conf)
    assert second.state == "success"
    return manifest_1, latest_manifest(lake)


@pytest.mark.backs("names with spaces, quotes, commas, non-ASCII, emoji", "the same inputs again (a new run)")
def test_running_again_on_the_same_inputs_recomputes_and_uploads_nothing(two_runs):
    first, second = two_runs
    assert first["run_id"] != second["run_id"]
    assert first["counts"]["featurized_now"] == 25 and first["counts"]["uploaded"] == 26
    counts = second["counts"]
    assert counts["uploaded"] == 0 and counts["upload_skipped_unchanged"] == 26
    assert counts["featurized_now"] == 0 and counts["from_cache"] == 25 and counts["model_builds"] == 0
    assert (counts["inputs"], counts["featurized"], counts["quarantined"]) == (26, 25, 1)
    # Same outputs (Spark's PCA sums in a nondeterministic order: equal to ~1e-12 relative), no
    # duplicate rows.
    table_1, table_2 = csv_rows(first), csv_rows(second)
    assert [r[:2] for r in table_1] == [r[:2] for r in table_2]
    values_1, values_2 = (np.array([r[2:] for r in t[1:]], dtype=float) for t in (table_1, table_2))
    np.testing.assert_allclose(values_2, values_1, rtol=1e-9, atol=1e-9 * np.abs(values_1).max())
    paths = [row[0] for row in table_2[1:]]
    assert len(paths) == len(set(paths)) == 25
    assert ODD_NAME in paths


@pytest.mark.backs("`forget_images` for 2 images and 1 quarantined file after two runs")
def test_forget_images_erases_images_cache_rows_and_outputs(two_runs, dags, source):
    bags, lake = dags
    forget = ["Plum/0_100.jpg", ODD_NAME, "Kiwi/broken.jpg"]
    images = lake / "images" / "orchard_photos"
    cache_before = pd.read_parquet(lake / "cache" / "features")
    run = bags["forget_images"].test(
        run_conf={"dataset": source.name, "paths": forget, "reason": "ticket-42"}
    )
    assert run.state == "success"

    for rel in forget:
        assert not (images / rel).exists()
    assert (images / "Kiwi" / "0_100.jpg").exists()  # same content as ODD_NAME, other path: kept
    # The cache loses the contents of the erased images only: ODD_NAME's content is also
    # Kiwi/0_100.jpg's, so that cached row goes too (it is recomputed next run).
    cache_after = pd.read_parquet(lake / "cache" / "features")
    assert len(cache_before) - len(cache_after) == 2

    for before in two_runs:
        manifest_path = local_path(before["outputs"]["csv"]).with_name("manifest.json")
        manifest = json.loads(manifest_path.read_text())
        outputs = {k: local_path(v) for k, v in manifest["outputs"].items()}
        for name in ("features", "pca", "quarantine"):
            assert not set(pd.read_parquet(outputs[name]).path) & set(forget), name
        rows = csv_rows(manifest)
        assert len(rows) == 1 + 23 and not {r[0] for r in rows} & set(forget)
        assert (manifest["counts"]["featurized"], manifest["counts"]["quarantined"]) == (23, 0)
        report = outputs["report"].read_text(encoding="utf-8")
        assert '<td id="featurized">23</td>' in report and "broken.jpg" not in report

    records = list((lake / "erasures").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert (record["images_requested"], record["images_deleted"]) == (3, 3)
    assert record["rows_removed"]["csv"] == 4  # two rows in each of the two runs
    assert record["reason"] == "ticket-42"
    text = records[0].read_text(encoding="utf-8")
    assert "Plum" not in text and "broken" not in text  # digests, not names
