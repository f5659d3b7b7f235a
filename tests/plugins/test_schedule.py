"""Scheduling options and the source watch's change detection."""

from __future__ import annotations

import os

import pytest

from orchard.config import Settings
from orchard.storage.lake import Lake
from orchard.tasks.watch import ASSET_NAME, dag_schedule, detect_change, source_fingerprint


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"ORCHARD_LAKE": str(tmp_path / "lake"), "ORCHARD_SOURCE": str(tmp_path)})


@pytest.mark.parametrize(
    ("value", "expected"), [("@daily", "@daily"), ("0 3 * * *", "0 3 * * *"), ("none", None)]
)
def test_time_schedules(settings, value, expected):
    assert dag_schedule(settings.model_copy(update={"schedule": value})) == expected


def test_asset_schedule_names_the_source_folder(settings, tmp_path):
    asset = dag_schedule(settings.model_copy(update={"schedule": "asset"}))
    assert asset.name == ASSET_NAME
    assert asset.uri == tmp_path.resolve().as_uri()


def test_fingerprint_changes_when_images_land_change_or_go(tmp_path):
    (tmp_path / "Kiwi").mkdir()
    (tmp_path / "Kiwi" / "a.jpg").write_bytes(b"a" * 10)
    first = source_fingerprint(tmp_path)
    assert (first["files"], first["bytes"]) == (1, 10)
    assert source_fingerprint(tmp_path) == first
    (tmp_path / ".DS_Store").write_bytes(b"x")  # hidden: never an input
    assert source_fingerprint(tmp_path) == first
    (tmp_path / "Kiwi" / "b.jpg").write_bytes(b"b" * 5)
    second = source_fingerprint(tmp_path)
    assert (second["files"], second["bytes"]) == (2, 15)
    os.utime(tmp_path / "Kiwi" / "a.jpg", ns=(1, 1))  # same size, touched
    assert source_fingerprint(tmp_path) != second
    (tmp_path / "Kiwi" / "b.jpg").unlink()
    assert source_fingerprint(tmp_path)["files"] == 1


def test_detect_change_reports_once_per_change(tmp_path):
    source, state = tmp_path / "src", f"file://{tmp_path}/lake/state/watch.json"
    source.mkdir()
    (source / "a.jpg").write_bytes(b"a")
    lake = Lake.local()
    assert detect_change(lake, state, source)["files"] == 1  # first look: a run
    assert detect_change(lake, state, source) is None  # nothing new: no run
    (source / "b.jpg").write_bytes(b"b")
    assert detect_change(lake, state, source)["files"] == 2
    assert detect_change(lake, state, source) is None


def test_the_asset_of_an_s3_source_names_its_prefix(settings):
    asset = dag_schedule(settings.model_copy(update={"schedule": "asset", "default_source": "s3://up/app/"}))
    assert asset.uri == "s3://up/app"
