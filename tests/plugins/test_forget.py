"""Erasure requests: which paths are accepted (the erasure itself: tests/test_rerun_and_forget.py)."""

from __future__ import annotations

import pytest

from orchard.erasure import clean_paths, collect_paths


def test_paths_come_from_the_request_and_a_file_of_lines_or_json(tmp_path):
    lines = tmp_path / "paths.txt"
    lines.write_text("# request 42\nKiwi/a.jpg\n\n./Plum/b c.jpg\n")
    listed = tmp_path / "paths.json"
    listed.write_text('["Kiwi/é, \\"q\\".jpg"]')
    assert clean_paths(collect_paths(["Kiwi/a.jpg"], lines)) == ["Kiwi/a.jpg", "Plum/b c.jpg"]
    assert collect_paths([], listed) == ['Kiwi/é, "q".jpg']


@pytest.mark.parametrize("bad", ["/etc/passwd", "../other/x.jpg", "Kiwi/../../x.jpg", "  "])
def test_paths_outside_the_dataset_folder_are_refused(bad):
    with pytest.raises(ValueError, match="relative to the dataset folder"):
        clean_paths([bad])


def test_an_empty_request_is_refused():
    with pytest.raises(ValueError, match="no image paths given"):
        clean_paths([])
