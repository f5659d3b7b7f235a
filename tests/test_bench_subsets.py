"""bench-scale's image subsets hold every class in the same share as the whole generated set."""

from __future__ import annotations

import importlib.util
from collections import Counter

from tests.conftest import ROOT


def bench_module():
    spec = importlib.util.spec_from_file_location("orchard_bench_run", ROOT / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_subset_takes_every_class_in_turn(tmp_path):
    root = tmp_path / "all"
    paths = []
    for name, count in (("Apple", 4), ("Kiwi", 4), ("Lemon", 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            path = root / name / f"{i}.jpg"
            path.write_bytes(f"{name} {i}".encode())
            paths.append(path)

    bench_module().subset(sorted(paths), root, 7, tmp_path / "n7")

    taken = sorted((tmp_path / "n7").rglob("*.jpg"))
    assert Counter(path.parent.name for path in taken) == {"Apple": 3, "Kiwi": 2, "Lemon": 2}
    # The first images of each class, hard-linked: the same files, not copies.
    assert {path.relative_to(tmp_path / "n7").as_posix() for path in taken} == {
        "Apple/0.jpg", "Apple/1.jpg", "Apple/2.jpg", "Kiwi/0.jpg", "Kiwi/1.jpg", "Lemon/0.jpg", "Lemon/1.jpg",
    }  # fmt: skip
    assert all(path.samefile(root / path.relative_to(tmp_path / "n7")) for path in taken)
