"""A step's end: session.stop stops the JVM's SparkContext, and the process then exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

JOBS = ROOT / "spark_jobs"

# A step in miniature: a Python function's tasks (so the JVM holds a connection to pyspark's
# accumulator server, as after the steps' UDFs), then session.stop, as the steps' main() ends.
STEP = """
from pyspark.sql import SparkSession
from orchard_jobs import session

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
context = spark.sparkContext._jsc.sc()
rows = spark.range(8).mapInArrow(lambda batches: batches, "id long").collect()
assert len(rows) == 8, rows
print("before:", "stopped" if context.isStopped() else "running")
session.stop(spark)
print("after:", "stopped" if context.isStopped() else "running")
"""


def test_stop_stops_the_jvm_context_and_the_process_exits(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP, encoding="utf-8")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(JOBS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("before:", "after:"))]
    assert lines == ["before: running", "after: stopped"], done.stdout
