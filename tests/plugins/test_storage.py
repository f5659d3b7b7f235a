"""The image sync into the lake and the CSV assembly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchard.storage.files import check_source, is_hidden, list_source
from orchard.storage.sync import sync_folder


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "source"
    for rel, data in {
        "Apple Golden 1/a.jpg": b"a" * 10,
        "Apple Golden 1/b.jpg": b"b" * 20,
        "Kiwi/k.png": b"k" * 30,
        "top.jpg": b"t" * 5,
        ".DS_Store": b"x",
        "_tmp/skip.jpg": b"y",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src


def test_listing_is_sorted_and_recursive(source):
    assert list(list_source(source)) == [
        ".DS_Store",
        "Apple Golden 1/a.jpg",
        "Apple Golden 1/b.jpg",
        "Kiwi/k.png",
        "_tmp/skip.jpg",
        "top.jpg",
    ]


def test_hidden_names_at_any_depth():
    assert is_hidden(".DS_Store")
    assert is_hidden("_tmp/a.jpg")
    assert is_hidden("Kiwi/.a.jpg")
    assert not is_hidden("Kiwi/a_b.jpg")


def test_first_sync_copies_everything_and_reports_hidden_names(source, tmp_path):
    dest = tmp_path / "lake"
    report = sync_folder(source, dest)
    assert (report.uploaded, report.skipped, report.failed) == (4, 0, {})
    assert report.bytes_uploaded == 65
    assert report.ignored == [".DS_Store", "_tmp/skip.jpg"]
    assert (dest / "Apple Golden 1" / "b.jpg").read_bytes() == b"b" * 20
    assert not (dest / ".DS_Store").exists()


def test_second_sync_skips_unchanged_and_recopies_changed(source, tmp_path):
    dest = tmp_path / "lake"
    sync_folder(source, dest)
    assert sync_folder(source, dest).as_dict()["uploaded"] == 0

    (source / "Kiwi" / "k.png").write_bytes(b"changed, and longer")
    report = sync_folder(source, dest)
    assert (report.uploaded, report.skipped) == (1, 3)
    assert (dest / "Kiwi" / "k.png").read_bytes() == b"changed, and longer"


def test_same_size_new_content_is_recopied_and_a_touched_file_is_not(source, tmp_path):
    dest = tmp_path / "lake"
    sync_folder(source, dest)
    target = source / "top.jpg"
    before = target.stat()
    assert len(target.read_bytes()) == 5 and target.read_bytes() != b"T" * 5
    target.write_bytes(b"T" * 5)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same time: new bytes
    assert sync_folder(source, dest).uploaded == 1
    assert (dest / "top.jpg").read_bytes() == b"T" * 5
    os.utime(target, (1_900_000_000, 1_900_000_000))  # touched: the same bytes
    assert (sync_folder(source, dest).uploaded, sync_folder(source, dest).skipped) == (0, 4)


def test_limit_takes_the_first_files(source, tmp_path):
    report = sync_folder(source, tmp_path / "lake", limit=2)
    assert report.files == 2
    assert sorted(p.name for p in (tmp_path / "lake").rglob("*") if p.is_file()) == ["a.jpg", "b.jpg"]


@pytest.mark.backs("missing source folder", "empty source folder")
def test_missing_or_empty_source_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_source(tmp_path / "nope")
    (tmp_path / "empty" / "Kiwi").mkdir(parents=True)
    with pytest.raises(ValueError, match="contains no files"):
        sync_folder(tmp_path / "empty", tmp_path / "lake")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        check_source(tmp_path / "file.jpg")
