"""Faults injected into real runs: a Python worker killed mid-task is retried by Spark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from orchard.config import Settings
from orchard.samples import generate
from orchard.spark import steps
from tests.conftest import ROOT
from tests.models import model_document

pytestmark = pytest.mark.e2e


def is_daemon(proc: psutil.Process) -> bool:
    """A Python worker daemon (Spark's own or the steps' preloading one) or a worker forked from it."""
    command = proc.cmdline()[1:3]  # python -m MODULE (the JVM's own command line names it too)
    return command in (["-m", "pyspark.daemon"], ["-m", "orchard_jobs.daemon"])


def busy_workers(root_pid: int) -> list[psutil.Process]:
    """Forked pyspark workers (children of the pyspark daemon) below a process."""
    found = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            parent = proc.parent()
            if is_daemon(proc) and is_daemon(parent):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.backs("a Spark task fails (its Python worker killed with SIGKILL mid-run)")
def test_a_python_worker_killed_mid_run_is_retried_by_spark(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    generate(images, per_class=80, seed=8)  # 480 images: 4 Arrow batches per task
    settings = Settings.from_env()
    command = [
        "spark-submit", "--master", "local[2,3]",  # as the orchard_spark connection: 3 attempts per task
        *[a for k, v in steps.local_spark_conf(settings).items() for a in ("--conf", f"{k}={v}")],
        str(ROOT / "spark_jobs" / "featurize.py"),
        "--images", f"file://{images}", "--features", f"file://{out}/features",
        "--quarantine", f"file://{out}/quarantine", "--summary", f"file://{out}/featurize.json",
        "--model", model_document(out, "random:2"), "--partitions", "2",
    ]  # fmt: skip
    env = {
        **os.environ,
        **steps.local_env(settings),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    killed: list[int] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            # The first batch is done: models are built, tasks are mid-way. Kill one worker.
            if not killed and line.startswith("orchard: featurized"):
                victims = busy_workers(proc.pid)
                if victims:
                    killed.append(victims[0].pid)
                    os.kill(victims[0].pid, signal.SIGKILL)

    reader = threading.Thread(target=read)
    reader.start()
    assert proc.wait(timeout=600) == 0, "".join(lines[-60:])
    reader.join()
    output = "".join(lines)

    assert killed, "no worker was killed: the fault was not injected"
    assert "Lost task" in output  # Spark saw the task fail...
    summary = json.loads((out / "featurize.json").read_text())
    assert summary["counts"]["featurized"] == summary["counts"]["inputs"] == 480  # ...and retried it
