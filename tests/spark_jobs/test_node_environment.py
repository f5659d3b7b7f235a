"""The Spark jobs' tests run with the cluster nodes' own pins (make test-spark35: EMR's Spark line)."""

from __future__ import annotations

import re

import numpy
import pyspark
import pytest

from tests.conftest import ROOT

MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def node_pin(name: str) -> str:
    """The version bootstrap/requirements.txt pins for `name`."""
    for line in (ROOT / "bootstrap" / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==", 1)[1].split("#")[0].strip()
    raise AssertionError(f"{name} is not pinned in bootstrap/requirements.txt")


@pytest.mark.skipif(
    not pyspark.__version__.startswith("3."), reason="runs in make test-spark35 (pyspark 3.5)"
)
def test_emr_spark_line_runs_with_the_nodes_numpy():
    # pyspark 3.5 declares numpy<2 for its extras, the nodes pin NumPy 2: this run proves the jobs'
    # tests pass on that pairing, not on whatever NumPy pip would have picked for pyspark.
    emr_pyspark = re.search(r"^EMR_PYSPARK := (\S+)", MAKEFILE, re.M).group(1)
    assert pyspark.__version__ == emr_pyspark
    assert numpy.__version__ == node_pin("numpy")
    assert numpy.__version__.startswith("2.")
