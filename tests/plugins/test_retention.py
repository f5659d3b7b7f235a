"""Retention on every backend (a folder, moto's S3, SeaweedFS): the newest N attempts and the last D
days stay, latest's attempt and every erasure record always stay, shared data is never touched."""

from __future__ import annotations

import datetime as dt

import pytest

from orchard import retention
from orchard.config import Settings
from orchard.layout import LakeLayout
from orchard.tasks import pipeline

ATTEMPTS = ["runs/r1/attempt-1", "runs/r2/attempt-1", "runs/r3/attempt-1", "runs/r3/attempt-2"]
SHARED = [
    "erasures/20260101T000000Z.json",
    "images/fruits/Kiwi/0_100.jpg",
    "cache/features/model=abc/part-00000.parquet",
    "cache/models/w1/mobilenet_v2.onnx",
    "state/source_watch.json",
]
OLD_LOGS = ["emr-logs/j-OLD/steps/s-1/stderr.gz", "emr-logs/j-OLD/node/i-1/bootstrap-actions/1/stderr.gz"]
ARTIFACTS = ["artifacts/aaaa/featurize.py", "artifacts/bbbb/featurize.py", "artifacts/wheelhouse/cccc/x.whl"]


def fill(store, root: str, latest: str) -> None:
    """Attempts written oldest first (the listing orders equal times by name, as here), shared data."""
    for attempt in ATTEMPTS:
        store.write_json(f"{root}/{attempt}/manifest.json", {"attempt": attempt})
        store.write_bytes(f"{root}/{attempt}/features/part-00000.parquet", b"x" * 100)
    for rel in [*SHARED, *OLD_LOGS, *ARTIFACTS]:
        store.write_bytes(f"{root}/{rel}", b"shared")
    store.write_json(f"{root}/latest.json", {"manifest": f"{root}/{latest}/manifest.json"})


def present(store, root: str) -> set[str]:
    return {uri[len(root) + 1 :] for uri in store.list_files(root)}


@pytest.mark.backs("retention on a folder, moto's S3 and SeaweedFS")
def test_the_newest_attempts_stay_and_latest_always(lake):
    store, root = lake
    fill(store, root, latest="runs/r1/attempt-1")  # latest points at the oldest attempt

    freed = sum(e.size for e in store.list_entries(f"{root}/runs/r2"))
    report = retention.apply(store, root, keep_attempts=2, keep_days=0)

    left = present(store, root)
    assert {f"{a}/manifest.json" for a in ATTEMPTS} & left == {
        "runs/r1/attempt-1/manifest.json",  # latest's, kept beyond the limit
        "runs/r3/attempt-1/manifest.json",
        "runs/r3/attempt-2/manifest.json",
    }
    assert report.removed == [f"{root}/runs/r2/attempt-1"]
    assert report.bytes_freed == freed > 100
    assert store.list_files(f"{root}/runs/r2") == []
    assert {*SHARED, *OLD_LOGS, *ARTIFACTS, "latest.json"} <= left  # days off: logs and artifacts stay


@pytest.mark.backs("retention on a folder, moto's S3 and SeaweedFS")
def test_after_the_days_only_latest_and_what_this_run_staged_stay(lake):
    store, root = lake
    fill(store, root, latest="runs/r3/attempt-2")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)

    retention.apply(store, root, keep_attempts=0, keep_days=30, now=later, staged=[f"{root}/artifacts/bbbb/"])

    left = present(store, root)
    assert {"/".join(a.split("/")[:3]) for a in left if a.startswith("runs/")} == {"runs/r3/attempt-2"}
    assert "artifacts/bbbb/featurize.py" in left  # staged by this run
    assert not {"artifacts/aaaa/featurize.py", "artifacts/wheelhouse/cccc/x.whl", *OLD_LOGS} & left
    assert {*SHARED, "latest.json"} <= left


@pytest.mark.backs("retention on a folder, moto's S3 and SeaweedFS")
def test_days_not_yet_passed_remove_nothing_and_both_limits_off_keep_everything(lake):
    store, root = lake
    fill(store, root, latest="runs/r3/attempt-2")
    before = present(store, root)
    assert retention.apply(store, root, keep_attempts=0, keep_days=30).removed == []
    assert retention.apply(store, root, keep_attempts=0, keep_days=0).removed == []
    assert present(store, root) == before


@pytest.mark.backs("retention on a folder, moto's S3 and SeaweedFS")
def test_the_task_keeps_latest_whatever_its_scheme(lake, monkeypatch):
    """The retention task body, on the lake the settings name; on S3, latest.json's URIs are the
    Spark steps' (s3a:// for a local Spark on S3), the listing the Airflow side's (s3://)."""
    store, root = lake
    fill(store, root, latest="runs/r1/attempt-1")
    latest_uri = f"{root.replace('s3://', 's3a://', 1)}/runs/r1/attempt-1/manifest.json"
    store.write_json(f"{root}/latest.json", {"manifest": latest_uri})
    monkeypatch.setattr(pipeline, "airflow_lake", lambda settings: store)
    settings = Settings.from_env(
        {"ORCHARD_LAKE": root, "ORCHARD_RETAIN_ATTEMPTS": "1", "ORCHARD_RETAIN_DAYS": "0"}
    )

    report = pipeline.retention(settings)

    assert sorted(report["removed"]) == [f"{root}/runs/r2/attempt-1", f"{root}/runs/r3/attempt-1"]
    assert store.exists(LakeLayout(root).run_folder("r1") + "/attempt-1/manifest.json")
