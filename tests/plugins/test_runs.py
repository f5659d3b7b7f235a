"""A run's export: the accounting guard that fails a run whose outputs do not cover its inputs."""

from __future__ import annotations

import pytest

from orchard import runs
from orchard.layout import LakeLayout, RunLayout
from orchard.storage.lake import Lake

SYNC = {"files": 3, "uploaded": 3, "skipped": 0, "failed": {}, "ignored": [], "source": "/src"}
PCA = {"k": 2, "target_variance": 0.9, "variance_kept": 0.95, "columns": ["path", "label", "pc_1", "pc_2"],
       "n_images": 2}  # fmt: skip


def step_outputs(tmp_path, featurized: int, quarantined: int) -> tuple[Lake, RunLayout]:
    """What the two Spark steps leave for the export: their summaries and the CSV's part."""
    lake, run = Lake.local(), LakeLayout(f"file://{tmp_path}/lake").run("src", "r1")
    counts = {"inputs": featurized + quarantined, "featurized": featurized, "quarantined": quarantined}
    lake.write_json(run.featurize_summary, {"counts": counts, "weights": {"used": "random:1"}})
    lake.write_json(run.pca_summary, PCA)
    lake.write_bytes(f"{run.csv_parts}/part-00000.csv", b"a.jpg,x,1,2\nb.jpg,x,3,4\n")
    return lake, run


def test_outputs_that_cover_every_input_are_exported(tmp_path):
    lake, run = step_outputs(tmp_path, featurized=2, quarantined=1)
    manifest = runs.export_run(lake, run, SYNC)
    assert manifest["counts"]["accounted"] is True
    assert lake.read_json(run.manifest) == manifest


def test_an_input_missing_from_both_outputs_fails_the_export_before_the_manifest(tmp_path):
    """One listed file neither featurized nor quarantined: the run fails, and no manifest is written."""
    lake, run = step_outputs(tmp_path, featurized=2, quarantined=0)
    with pytest.raises(RuntimeError, match=r"accounting failed: the source listed 3 files.*2 featurized"):
        runs.export_run(lake, run, SYNC)
    assert not lake.exists(run.manifest)
