"""Clearing a finished run re-runs it under a new attempt prefix: what readers saw is never rewritten."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchard.samples import generate
from orchard.uris import local_path
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.backs("clearing a finished run (the same run again)")
def test_clearing_a_finished_run_writes_a_new_attempt_and_moves_latest_last(
    airflow_db, tmp_path, monkeypatch
):
    from airflow.dag_processing.dagbag import DagBag

    lake = tmp_path / "lake"
    monkeypatch.setenv("ORCHARD_LAKE", str(lake))
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["fruits_pipeline"]
    source = tmp_path / "photos"
    generate(source, per_class=2, seed=9)  # 12 images
    conf = {"source": str(source), "weights": "random:3", "pca_k": 3}
    when = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)

    first = dag.test(run_after=when, logical_date=when, run_conf=conf)
    assert first.state == "success"
    latest = json.loads((lake / "latest.json").read_text())
    first_root = local_path(latest["manifest"]).parent
    assert (latest["attempt"], first_root.name) == (1, "attempt-1")
    seen = digests(first_root)
    assert "pcaFeatures.csv" in seen and "report/report.html" in seen

    # The same run again (same logical date and run-after: the same run id): dag.test clears its
    # tasks and runs them again, as "Clear" on a finished run does in the UI.
    again = dag.test(run_after=when, logical_date=when, run_conf=conf)
    assert again.state == "success" and again.run_id == first.run_id
    latest = json.loads((lake / "latest.json").read_text())
    second_root = local_path(latest["manifest"]).parent
    assert (latest["attempt"], second_root) == (2, first_root.with_name("attempt-2"))
    assert digests(first_root) == seen  # the first attempt, as its readers saw it
    manifest = json.loads(local_path(latest["manifest"]).read_text())
    assert manifest["run"]["attempt"] == 2
    assert all(local_path(uri).is_relative_to(second_root) for uri in manifest["outputs"].values())
    assert manifest["counts"]["featurized"] == 12 and manifest["counts"]["from_cache"] == 12
