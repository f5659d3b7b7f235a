"""The whole DAG with dag.test(): real spark-submits in local mode, a temporary lake."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from orchard.samples import generate
from orchard.uris import local_path
from tests.conftest import ROOT
from tests.features_table import read_features
from tests.imagefactory import truncated_jpeg

pytestmark = pytest.mark.e2e


def load_dag(lake: Path, monkeypatch):
    """The DAG as the scheduler would parse it, with this test's lake configured."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("ORCHARD_LAKE", str(lake))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["fruits_pipeline"]


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def check_run(lake: Path, source: Path) -> dict:
    """Every input in exactly one output; the CSV equals the pca output. Returns the manifest."""
    latest = json.loads((lake / "latest.json").read_text())
    manifest = json.loads(local_path(latest["manifest"]).read_text())
    outputs = {k: local_path(v) for k, v in manifest["outputs"].items()}

    feats = read_features(outputs["features"], lake / "cache" / "features")
    quarantine = pd.read_parquet(outputs["quarantine"])
    assert set(feats.path).isdisjoint(quarantine.path)
    assert sorted([*feats.path, *quarantine.path]) == sorted(files_below(source))
    assert all(len(v) == 1280 for v in feats.features)
    assert (feats.label == feats.path.str.rsplit("/", n=2).str[-2]).all()
    assert quarantine.reason.str.len().gt(0).all()

    pca = pd.read_parquet(outputs["pca"]).sort_values("path").reset_index(drop=True)
    k = manifest["pca"]["k"]
    with outputs["csv"].open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["path", "label", *[f"pc_{i}" for i in range(1, k + 1)]]
    rows = table[1:]
    assert [r[0] for r in rows] == list(pca.path) == sorted(feats.path)
    assert [r[1] for r in rows] == list(pca.label)
    np.testing.assert_array_equal(np.array([r[2:] for r in rows], dtype=float), np.stack(pca.pca))

    counts = manifest["counts"]
    assert counts["inputs"] == len(files_below(source)) == counts["featurized"] + counts["quarantined"]
    assert counts["featurized"] == len(feats)
    assert counts["accounted"]
    weights = manifest["weights"]
    if weights["used"].startswith("random"):
        assert not weights["meaningful"]
    if weights["requested"] == "imagenet" and weights["used"] != "imagenet":
        # No network here: the fallback must be loud and on record.
        assert any("no visual meaning" in w for w in manifest["warnings"])
    return manifest


def test_generated_images_with_broken_files(airflow_db, tmp_path, monkeypatch, caplog):
    source = tmp_path / "my images"
    generate(source, per_class=7, seed=3)  # 42 images, 6 classes
    (source / "Kiwi" / "truncated.jpg").write_bytes(truncated_jpeg())
    (source / "Kiwi" / "readme.jpg").write_text("a text file with an image's name")
    (source / "Plum" / "empty.png").write_bytes(b"")
    (source / "Plum" / "notes.txt").write_text("not an image at all")
    (source / "Apple Red 2" / 'quote"d, name.jpg').write_bytes(
        (source / "Apple Red 2" / "0_100.jpg").read_bytes()
    )
    lake = tmp_path / "lake"

    dag = load_dag(lake, monkeypatch)
    run = dag.test(run_conf={"source": str(source), "weights": "imagenet", "pca_variance": 0.95})

    assert run.state == "success"
    manifest = check_run(lake, source)
    assert manifest["counts"]["featurized"] == 43
    assert manifest["counts"]["quarantined"] == 4
    assert manifest["counts"]["uploaded"] == 47
    quarantine = pd.read_parquet(local_path(manifest["outputs"]["quarantine"])).set_index("path").reason
    assert quarantine["Plum/empty.png"] == "empty file (0 bytes)"
    assert quarantine["Plum/notes.txt"] == "not an image (unrecognised format)"
    assert quarantine["Kiwi/truncated.jpg"].startswith("truncated JPEG")
    assert quarantine["Kiwi/readme.jpg"] == "not an image (unrecognised format)"
    assert manifest["pca"]["variance_kept"] >= 0.95
    # The plan was made before the steps (plan.json, merged into the manifest), then compared.
    plan = json.loads(local_path(manifest["outputs"]["plan"]).read_text())
    assert plan["work"] == {
        "inputs": 47, "featurize_now": 47, "from_cache": 0, "basis": manifest["plan"]["work"]["basis"]
    }  # fmt: skip
    assert plan["machine"]["target"] == "local" and plan["machine"]["slots"] == 2  # local[2,3]
    assert {k: v for k, v in manifest["plan"].items() if k not in {"actual", "comparison"}} == plan
    actual = manifest["plan"]["actual"]
    assert actual["featurize"] > actual["featurize_job"] > 0 and actual["pca"] > 0
    (record,) = (lake / "history").glob("*.json")
    assert json.loads(record.read_text())["work"] == {"inputs": 47, "featurize_now": 47}
    page = local_path(manifest["outputs"]["report"]).read_text(encoding="utf-8")
    assert "Plan and what happened" in page and "47 images: 47 to featurize, 0 from the cache" in page
    # The report task logs where the report is (the featurize step's progress lines reach the
    # task log through spark-submit's output: checked on real log files by tests/browser).
    assert f"run report: {manifest['outputs']['report']}" in caplog.text


@pytest.mark.backs("missing source folder")
def test_missing_source_fails_before_any_spark_step(airflow_db, tmp_path, monkeypatch):
    dag = load_dag(tmp_path / "lake", monkeypatch)
    run = dag.test(run_conf={"source": str(tmp_path / "does not exist"), "weights": "random"})

    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["upload_images"] == "failed"
    assert states["featurize"] == states["pca"] == states["export_csv"] == "upstream_failed"
    assert not (tmp_path / "lake" / "runs").exists()


@pytest.mark.backs("real Fruits-360 photos, upscaled to 1500x1100, plus a corrupt JPEG and a text file")
def test_real_fruits360_images_larger_sizes_and_bad_files(airflow_db, shared_sample, tmp_path, monkeypatch):
    """Real photos (three classes, some upscaled far beyond 100x100) plus a corrupt and a text file."""
    source = tmp_path / "fruits"
    classes = sorted(p for p in shared_sample.iterdir() if p.is_dir())[:3]
    for folder in classes:
        shutil.copytree(folder, source / folder.name)
    big = sorted((source / classes[0].name).iterdir())[:3]
    for n, path in enumerate(big):
        with Image.open(path) as image:
            image.convert("RGB").resize((900 + 300 * n, 700 + 200 * n)).save(path.with_name(f"big_{n}.jpg"))
    (source / classes[1].name / "corrupt.jpg").write_bytes(truncated_jpeg())
    (source / classes[1].name / "notes.txt").write_text("not an image")
    lake = tmp_path / "lake"

    dag = load_dag(lake, monkeypatch)
    run = dag.test(run_conf={"source": str(source), "weights": "random:1", "pca_k": 5})

    assert run.state == "success"
    manifest = check_run(lake, source)
    images = len(files_below(source)) - 2
    assert manifest["counts"]["featurized"] == images
    assert manifest["counts"]["quarantined"] == 2
    assert manifest["pca"]["k"] == 5
