"""The steps' small-file access through Hadoop's FileSystem."""

from __future__ import annotations

import os

import pytest
from py4j.protocol import Py4JJavaError

from orchard_jobs import hadoop_files

pytestmark = pytest.mark.spark


def test_read_bytes_returns_every_byte_and_leaves_no_copy(spark, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch space"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where the local copy goes
    # Written as the steps are given their URIs (file:// and the path); spaces on both sides.
    folder = tmp_path / "a lake, with spaces"
    folder.mkdir()
    content = os.urandom(3 * 2**20) + bytes(range(256))
    (folder / "model.onnx").write_bytes(content)
    hadoop_files.write_json(spark, f"file://{folder}/doc.json", {"k": [1, "é"]})
    before = sorted(p.name for p in folder.iterdir())
    assert hadoop_files.read_bytes(spark, f"file://{folder}/model.onnx") == content
    assert hadoop_files.read_json(spark, f"file://{folder}/doc.json") == {"k": [1, "é"]}
    # Reading leaves nothing behind: no local copy, no checksum file beside the source.
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in folder.iterdir()) == before


def test_read_bytes_of_a_missing_file_fails(spark, tmp_path):
    with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
        hadoop_files.read_bytes(spark, f"file://{tmp_path}/missing.onnx")
