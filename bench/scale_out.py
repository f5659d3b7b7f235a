"""R9, R10: the real featurize and PCA steps on a Spark standalone cluster, 1 worker against 2.

A master and one-core workers run as separate processes (pyspark's own `spark-class`, as the EMR
stand-in tests start them), each worker pinned to its own core with `taskset`, so its executor and
Python workers stay there too. The same images, the same partitions and the same prepared model go
to a 1-worker and a 2-worker cluster, in alternating order, several times:

R9  throughput of the featurize job on 2 workers ÷ on 1 (images ÷ the job's own seconds, from the
    step's summary), beside the engine-only ceiling measured the same way without Spark (1 and 2
    pinned processes decoding and featurizing their share); task skew and executor start-up from
    the executors' own logs
R10 the PCA step's time on 1 worker ÷ on 2 (reported; no target)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY_LINE = re.compile(r"orchard: featurized (\d+) files in python worker pid=(\d+) \((\d+\.\d+) s\)")
# The featurize step's partitions on both clusters: a multiple of 1 and 2 workers, ~150 images each.
PARTITIONS = 8

ENGINE_SHARE = """
import sys, time, numpy as np
from pathlib import Path
from orchard_jobs.engine import OnnxFeaturizer
from orchard_jobs.images import decode_image
model, listing = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_text().split("\\n")
featurizer = OnnxFeaturizer(model, threads=1)
featurizer(np.stack([decode_image(Path(listing[0]).read_bytes())]))  # the session's first run, untimed
started = time.perf_counter()
for i in range(0, len(listing), 64):
    featurizer(np.stack([decode_image(Path(p).read_bytes()) for p in listing[i:i + 64]]))
print(time.perf_counter() - started)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


@contextmanager
def standalone(work: Path, cores: list[int]) -> Generator[str]:
    """A master and one one-core worker per entry of `cores`, each pinned there; yields the master URL."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {
        "SPARK_HOME": str(_spark_class().parents[1]),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_NO_DAEMONIZE": "1",
    }
    procs: list[subprocess.Popen] = []

    def start(name: str, prefix: list[str], args: list[str]) -> Path:
        log = work / f"{name}.log"
        with log.open("w") as out:
            procs.append(
                subprocess.Popen([*prefix, str(_spark_class()), *args], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            )  # fmt: skip
        return log

    try:
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]
        start("master", [], [*master, "--webui-port", str(_free_port())])
        worker = [
            "org.apache.spark.deploy.worker.Worker",
            url,
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            "2g",
        ]
        logs = [
            start(f"worker-{core}", ["taskset", "-c", str(core)],
                  [*worker, "--webui-port", str(_free_port()), "--work-dir", str(work / f"work-{core}")])
            for core in cores
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while not all("Successfully registered with master" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(
                    "the standalone workers did not register:\n" + logs[-1].read_text()[-2000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def submit(
    master: str, workers: int, script: str, args: list[str], conf: dict[str, str]
) -> tuple[float, str]:
    """spark-submit of a step to the standalone master, on `workers` one-core executors: (wall, output)."""
    command = [
        str(_spark_class().parent / "spark-submit"), "--master", master,
        "--total-executor-cores", str(workers), "--executor-cores", "1", "--executor-memory", "1g",
        "--conf", f"spark.pyspark.python={sys.executable}",
        "--conf", f"spark.executorEnv.PYTHONPATH={ROOT / 'spark_jobs'}",
        *[a for key, value in conf.items() for a in ("--conf", f"{key}={value}")],
        str(ROOT / "spark_jobs" / script), *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "spark_jobs"), "SPARK_HOME": str(_spark_class().parents[1])}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{script} on {workers} workers failed:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return wall, result.stdout + result.stderr


def executor_busy(work: Path, since: float) -> list[float]:
    """Seconds each executor's Python workers spent featurizing (its stderr lines), for apps after `since`."""
    busy = []
    for stderr in work.glob("work-*/app-*/*/stderr"):
        if stderr.stat().st_mtime < since:
            continue
        seconds = [float(m.group(3)) for m in BUSY_LINE.finditer(stderr.read_text(errors="replace"))]
        if seconds:
            busy.append(sum(seconds))
    return busy


def engine_rate(model: Path, paths: list[Path], cores: list[int], work: Path) -> float:
    """Images/s of 1 or 2 pinned processes featurizing their shares (decode + ONNX Runtime, one thread)."""
    procs = []
    for n, core in enumerate(cores):
        listing = work / f"share-{len(cores)}-{n}.txt"
        listing.write_text("\n".join(str(p) for p in paths[n :: len(cores)]))
        command = ["taskset", "-c", str(core), sys.executable, "-c", ENGINE_SHARE, str(model), str(listing)]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    seconds = [float(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    return len(paths) / max(seconds)


def scale_out(args_for, pca_args_for, conf: dict[str, str], model: Path, paths: list[Path], work: Path,
              reps: int = 3) -> dict:  # fmt: skip
    """R9 and R10: `args_for(out)` / `pca_args_for(features, out)` give the steps' arguments."""
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return {"skipped": f"needs 2 cores and taskset (cores: {os.cpu_count()})"}
    runs: dict[int, list[dict]] = {1: [], 2: []}
    engine: dict[int, list[float]] = {1: [], 2: []}
    with standalone(work / "one", [0]) as one, standalone(work / "two", [0, 1]) as two:
        masters = {1: (one, work / "one"), 2: (two, work / "two")}
        for rep in range(reps):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                master, folder = masters[workers]
                out = work / f"out-{workers}-{rep}"
                since = time.time()
                wall, _ = submit(master, workers, "featurize.py", args_for(out), conf)
                summary = json.loads((out / "featurize.json").read_text())
                pca_wall, _ = submit(
                    master, workers, "pca.py", pca_args_for(out / "features", out / "pca"), conf
                )
                pca = json.loads((out / "pca" / "pca.json").read_text())
                runs[workers].append(
                    {
                        "wall_s": wall,
                        "job_s": summary["phases_seconds"]["featurize"],
                        "phases_s": summary["phases_seconds"],
                        "images": summary["counts"]["featurized"],
                        "busy_s": executor_busy(folder, since),
                        "pca_wall_s": pca_wall,
                        "pca_s": pca["seconds"],
                    }
                )
                engine[workers].append(engine_rate(model, paths, [0] if workers == 1 else [0, 1], work))
    rates = {n: [r["images"] / r["job_s"] for r in runs[n]] for n in runs}
    return {
        "images": runs[1][0]["images"],
        "partitions": PARTITIONS,
        "runs": runs,
        "rate": rates,
        "r9": [b / a for a, b in zip(rates[1], rates[2], strict=True)],
        "r9_wall": [r1["wall_s"] / r2["wall_s"] for r1, r2 in zip(runs[1], runs[2], strict=True)],
        "ceiling": [b / a for a, b in zip(engine[1], engine[2], strict=True)],
        "engine_rate": engine,
        "r10": [r1["pca_s"] / r2["pca_s"] for r1, r2 in zip(runs[1], runs[2], strict=True)],
    }


def lines(result: dict) -> list[tuple[str, str, str]]:
    """The bench table's rows for R9 and R10."""
    if "skipped" in result:
        return [("R9, R10: scale-out", "not run", result["skipped"])]
    med = statistics.median
    two = result["runs"][2]
    skew = [max(r["busy_s"]) / statistics.mean(r["busy_s"]) for r in two if len(r["busy_s"]) == 2]
    busy = [statistics.mean(r["busy_s"]) for r in two if r["busy_s"]]
    startup = [r["phases_s"]["session"] or 0.0 for r in two]
    return [
        (
            "R9: featurize job, 2 workers ÷ 1 (throughput)",
            f"{med(result['r9']):.2f}",
            f"{result['images']} images, {result['partitions']} partitions, workers pinned one per core: "
            f"1 worker {med(result['rate'][1]):.1f} img/s, 2 workers {med(result['rate'][2]):.1f} img/s "
            f"(pairs {min(result['r9']):.2f}-{max(result['r9']):.2f}); engine alone, 1 ÷ 2 pinned processes: "
            f"ceiling {med(result['ceiling']):.2f} ({med(result['engine_rate'][1]):.1f} -> "
            f"{med(result['engine_rate'][2]):.1f} img/s); whole step wall 1 ÷ 2: "
            f"{med(result['r9_wall']):.2f}; "
            f"on 2 workers each executor's Python busy {med(busy) if busy else 0:.1f} s of a "
            f"{med([r['job_s'] for r in two]):.1f} s job, skew max/mean {med(skew) if skew else 0:.2f}, "
            f"session start {med(startup):.1f} s",
        ),
        (
            "R10: PCA step, 1 worker ÷ 2 (time)",
            f"{med(result['r10']):.2f}",
            f"step seconds 1 worker {med([r['pca_s'] for r in result['runs'][1]]):.1f}, "
            f"2 workers {med([r['pca_s'] for r in two]):.1f}",
        ),
    ]
