"""Daily runs: the whole DAG four times on one lake (dag.test, real spark-submits, generated images).

An unchanged re-run adds nothing but its own attempt (no features vectors: the cache is not
touched) and gives exactly the coordinates of the run before; runs with pca_mode=reuse on
overlapping image sets give the shared images exactly the same coordinates; retention keeps the
newest ORCHARD_RETAIN_ATTEMPTS attempts, latest's, and every erasure record.
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchard.erasure import forget_images
from orchard.layout import slug
from orchard.samples import generate
from orchard.storage.lake import Lake
from orchard.uris import local_path
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

DAY = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)


def files(folder: Path) -> dict[str, int]:
    """Size of every file below `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def attempt_folders(lake: Path) -> set[str]:
    return {p.relative_to(lake / "runs").as_posix() for p in (lake / "runs").glob("*/attempt-*")}


def latest(lake: Path) -> tuple[dict, dict[str, list[str]]]:
    """latest's manifest, and its CSV rows by path."""
    pointer = json.loads((lake / "latest.json").read_text())
    manifest = json.loads(local_path(pointer["manifest"]).read_text())
    with local_path(manifest["outputs"]["csv"]).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    return manifest, {row[0]: row[2:] for row in rows}


def add_images(source: Path, seed: int, prefix: str) -> list[str]:
    """One new image per class, named `<prefix>_<n>`: the paths added, relative to the source."""
    fresh = generate(source.parent / f"fresh-{seed}", per_class=1, seed=seed)
    added = []
    for path in fresh:
        target = source / path.parent.name / f"{prefix}_{path.name}"
        shutil.copy(path, target)
        added.append(target.relative_to(source).as_posix())
    return added


def only_its_attempt_was_added(before: dict[str, int], after: dict[str, int], manifest: dict) -> None:
    """An unchanged re-run: new files in its own attempt only (and latest.json, its history record),
    the cache as it was."""
    new_attempt = f"runs/{slug(manifest['run']['run_id'])}/"
    grown = {p for p in after if after[p] != before.get(p)}
    record = f"{slug(manifest['run']['run_id'])}-attempt-1.json"
    outside = {p for p in grown if not p.startswith(new_attempt)}
    assert {p for p in outside if not (p.startswith("history/") and p.endswith(record))} <= {"latest.json"}
    assert {p: s for p, s in after.items() if p.startswith("cache/")} == {
        p: s for p, s in before.items() if p.startswith("cache/")
    }
    assert not any("csv_parts" in p for p in after)  # assembled into the CSV, then removed
    assert manifest["counts"]["featurized_now"] == 0


def planned_from_history(manifest: dict, earlier: dict) -> None:
    """Day 2's plan knew every image was cached, and predicted from day 1's record in the history."""
    plan = manifest["plan"]
    assert (plan["work"]["featurize_now"], plan["work"]["from_cache"]) == (0, 30)
    assert plan["history_used"] == [f"{earlier['run']['run_id']}#1"]
    assert {"featurize", "pca"} <= set(plan["phases"]) and plan["unknown"] == []
    assert [row["phase"] for row in plan["comparison"]] == ["featurize", "pca", "total"]
    assert all(row["actual"] > 0 and row["ratio"] > 0 for row in plan["comparison"])


@pytest.mark.backs("daily runs: an unchanged re-run, reuse on overlapping sets, an erasure, retention")
def test_daily_runs_retention_reuse_and_an_unchanged_rerun(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    lake = tmp_path / "lake"
    monkeypatch.setenv("ORCHARD_LAKE", str(lake))
    monkeypatch.setenv("ORCHARD_RETAIN_ATTEMPTS", "2")
    monkeypatch.setenv("ORCHARD_RETAIN_DAYS", "0")
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["fruits_pipeline"]
    source = tmp_path / "photos"
    generate(source, per_class=5, seed=4)  # 30 images
    conf = {"source": str(source), "weights": "random:3", "pca_k": 4}

    def run(day: int, **extra) -> tuple[dict, dict[str, list[str]]]:
        when = DAY + timedelta(days=day)
        assert dag.test(run_after=when, logical_date=when, run_conf={**conf, **extra}).state == "success"
        return latest(lake)

    # Day 1, then day 2 on unchanged images: the re-run adds its own attempt and nothing else, and
    # its refit (signs aligned to day 1's basis) gives exactly day 1's coordinates.
    first, first_rows = run(0)
    after_first = files(lake)
    second, second_rows = run(1)
    only_its_attempt_was_added(after_first, files(lake), second)
    assert second_rows == first_rows  # the same strings: bit-identical coordinates
    planned_from_history(second, first)
    assert second["pca"]["basis"]["mode"] == "refit"
    assert second["pca"]["basis"]["signs_aligned_to"].endswith(
        f"{slug(first['run']['run_id'])}/attempt-1/pca_model"
    )

    # Day 3, overlapping images (two gone, six new), pca_mode=reuse: day 2's basis, unchanged
    # coordinates for every image both days share.
    for gone in ("Kiwi/0_100.jpg", "Plum/1_100.jpg"):
        (source / gone).unlink()
    added = add_images(source, seed=31, prefix="day3")
    third, third_rows = run(2, pca_mode="reuse")
    assert (third["plan"]["work"]["featurize_now"], third["plan"]["work"]["from_cache"]) == (6, 28)
    shared = set(second_rows) & set(third_rows)
    assert len(shared) == 28 and set(added) <= set(third_rows)
    assert {p: third_rows[p] for p in shared} == {p: second_rows[p] for p in shared}
    assert third["pca"]["basis"]["mode"] == "reuse"
    assert third["pca"]["basis"]["fitted_in"] == second["pca"]["basis"]["fitted_in"]
    assert third["pca"]["basis"]["fitted_at"] == second["pca"]["basis"]["fitted_at"]
    page = local_path(third["outputs"]["report"]).read_text(encoding="utf-8")
    assert "reused (pca_mode=reuse)" in page and third["pca"]["basis"]["fitted_in"] in page
    # Retention (2 attempts): day 1's attempt is gone, days 2 and 3 stay.
    assert len(attempt_folders(lake)) == 2

    # An erasure, then day 4 (reuse again) on another overlapping set.
    forgotten = "Apple Red 2/2_100.jpg"
    forget_images(Lake.local(), f"file://{lake}", "photos", [forgotten], reason="a user's request")
    (source / forgotten).unlink()
    records = sorted((lake / "erasures").glob("*.json"))
    assert len(records) == 1
    (source / "Plum/3_100.jpg").unlink()
    add_images(source, seed=32, prefix="day4")
    fourth, fourth_rows = run(3, pca_mode="reuse")
    shared = set(third_rows) & set(fourth_rows)
    assert forgotten not in fourth_rows and len(shared) == len(third_rows) - 2
    assert {p: fourth_rows[p] for p in shared} == {p: third_rows[p] for p in shared}
    assert fourth["pca"]["basis"]["fitted_in"] == second["pca"]["basis"]["fitted_in"]

    # Retention kept the newest two attempts (days 3 and 4; day 4 is latest) and the erasure record.
    kept = attempt_folders(lake)
    assert kept == {f"{slug(m['run']['run_id'])}/attempt-1" for m in (third, fourth)}
    assert sorted((lake / "erasures").glob("*.json")) == records
    assert latest(lake)[0]["run"] == fourth["run"]
