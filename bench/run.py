"""Orchard benchmarks: ratios measured side by side in one run, with the raw figures behind them.

    python bench/run.py [--images 600] [--reps 5] [--sizes 500,2000,8000] [--json FILE]

Run it with `make bench`. Nothing here is a pass/fail test: it prints what it measured. Variants
that are compared are run in the same process or back to back, interleaved, several times, and the
medians are compared, so a machine that is busy or throttled slows both sides alike.

R1  Spark featurization (ONNX Runtime) ÷ plain in-process Keras, the peers' way (same images,
    weights, batch size, cores), steady and including start-up (both from weights prepared on disk)
R1b Spark featurization ÷ the same engine in one plain process with the same threads: Spark's own cost
R1c the featurize step without ÷ with the JVM class archive
R2  model builds (engine sessions opened) ÷ Python workers in a featurize run
R3  featurizations executed ÷ images over a whole `airflow dags test` run
R4  decode+resize time ÷ inference time; R4b one image per engine call ÷ 64 (and the outputs' diff);
    R4c opening a Keras model ÷ an ONNX Runtime session
R5  engine images/s × 0.6 GFLOP ÷ measured float32 matmul GFLOP/s; R5b the engine with random:42's
    calibrated weights ÷ Keras's fresh initialisation (does the activations' scale change the speed?)
R6  Spark PCA fit ÷ numpy covariance+eigh on the same matrix (and whether they agree)
R7  `airflow dags test` wall time ÷ the sum of the Spark steps' wall times
R8  throughput and peak memory at growing image counts; R8b peak memory with G1 ÷ the serial collector
R12 the lake's growth for an unchanged re-run ÷ the lake after the first run (every prefix counted;
    also without the ONNX model, a fixed ~9 MB that small lakes are mostly made of)
R9  the featurize job on a Spark standalone cluster of 2 one-core workers ÷ 1 (throughput), beside the
    engine's own ceiling; R10 the PCA step's time on 1 ÷ 2 workers (bench/scale_out.py)
R13 a run's plan for 8,000 images (orchard.planning, calibrated on a 600-image run) ÷ what the run
    took, per phase; also uncalibrated (the engine profile alone); writes the engine profile
    (bench/plan_check.py)
R11 re-upload of an unchanged folder: the sync's rule (same size and SHA-256) ÷ rsync's (same size and
    modification time), the cost of one rule on every backend

`--scale N` instead runs the real featurize and PCA steps on N generated images (make bench-scale).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "spark_jobs"), str(ROOT / "bench")]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# spark-submit and airflow come from the same environment as this Python.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

import numpy as np
import plan_check  # bench/plan_check.py: R13 and the engine profile
import psutil
import scale_out  # bench/scale_out.py: R9 and R10

from orchard.config import Settings
from orchard.samples import generate
from orchard.spark import steps

BATCH = steps.ARROW_BATCH
GFLOP_PER_IMAGE = 0.6  # MobileNetV2 at 224x224: ~300 M multiply-adds
WEIGHTS_SEED = 42
# bench-scale: runs of each size below the largest (their median wall is the reference rate).
SCALE_REPS = 3
PEAKS = ("peak_rss_gib", "peak_python_worker_gib", "peak_python_workers_gib", "peak_driver_gib")
# Python worker daemons (Spark's own, and the one the steps configure): they and their forks are
# the Python workers.
DAEMONS = (["-m", "pyspark.daemon"], ["-m", "orchard_jobs.daemon"])
FEATURIZED_LINE = re.compile(r"orchard: featurized (\d+) files in python worker pid=(\d+)")


def log(message: str) -> None:
    """Progress of the bench itself, on stderr (the results go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine ---------------------------------------------------------------------------------


def fingerprint() -> dict:
    """CPU model and the flags that matter for inference, cores, memory and library versions."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
    except (OSError, AttributeError):
        pass
    wanted = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]
    import keras
    import onnxruntime
    import pandas
    import pyarrow
    import pyspark
    import tensorflow as tf

    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    return {
        "cpu": cpu,
        "cpu_flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "java": (java.splitlines() or ["?"])[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pyspark": pyspark.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
    }


def matmul_gflops(n: int = 2048, reps: int = 5) -> dict:
    """Best float32 matrix-multiply rate of numpy (BLAS) and TensorFlow on all cores."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    ta, tb = tf.constant(a), tf.constant(b)
    rates = {}
    for name, multiply in (
        ("numpy", lambda: a @ b),
        ("tensorflow", lambda: tf.linalg.matmul(ta, tb).numpy()),
    ):
        multiply()
        best = min(timed(multiply)[0] for _ in range(reps))
        rates[name] = round(flops / best / 1e9, 1)
    return rates


# --- helpers ---------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _executables(procs: list[psutil.Process]) -> dict[int, str]:
    """Each process's executable, read now (psutil keeps the first it read: spark-submit's bash)."""
    found = {}
    for proc in procs:
        try:
            found[proc.pid] = os.readlink(f"/proc/{proc.pid}/exe")
        except OSError:
            pass
    return found


def _jvm_spawning(proc: psutil.Process, exes: dict[int, str]) -> bool:
    """A JVM's child that is still the JVM's own image: the moment between clone and exec.

    The JVM starts every child (the Python daemon, Hadoop's `chmod` on local files: ~50 per
    featurize step) with posix_spawn, whose child shares the JVM's memory (CLONE_VM) until it
    execs. Its RSS is the JVM's, counted a second time: it put transient +1.3 GiB peaks in a
    "driver" the JVM's own samples never showed.
    """
    exe = exes.get(proc.pid, "")
    return Path(exe).name == "java" and exes.get(proc.ppid()) == exe


class PeakRss:
    """Peak resident memory of a process and all its children, sampled every 0.2 s."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0
        self.peak_python_worker = 0
        self.peak_workers = 0
        self.peak_driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            total, workers = 0, []
            try:
                procs = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                continue
            exes = _executables(procs)
            for proc in procs:
                try:
                    if _jvm_spawning(proc, exes):
                        continue
                    rss = proc.memory_info().rss
                    total += rss
                    if proc.cmdline()[1:3] in DAEMONS:  # python -m DAEMON: the daemon and its workers
                        workers.append(rss)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.peak_python_worker = max([self.peak_python_worker, *workers])
            self.peak_workers = max(self.peak_workers, sum(workers))
            self.peak_driver = max(self.peak_driver, total - sum(workers))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss_gib": round(self.peak / 2**30, 2),
            "peak_python_worker_gib": round(self.peak_python_worker / 2**30, 2),
            "peak_python_workers_gib": round(self.peak_workers / 2**30, 2),
            "peak_driver_gib": round(self.peak_driver / 2**30, 2),
        }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def image_set(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` generated 100x100 fruit images (like Fruits-360's) in class folders."""
    per_class = -(-count // 6)
    paths = sorted(generate(folder, per_class=per_class, seed=seed))
    for extra in paths[count:]:
        extra.unlink()
    return paths[:count]


def submit_env(settings: Settings) -> dict:
    return {**os.environ, **steps.local_env(settings), "PYTHONPATH": str(ROOT / "spark_jobs")}


def model_document(work: Path) -> Path:
    """The run's model document for random:42 weights, converted once as convert_model does."""
    from orchard.model_cache import prepare_model
    from orchard.storage.lake import Lake

    doc = prepare_model(Lake.local(), f"file://{work}/models", f"random:{WEIGHTS_SEED}", "fail")
    path = work / "inference_model.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def submit_command(settings: Settings, script: str, args: list[str], master: str = "local[2]") -> list[str]:
    """spark-submit of a step exactly as the DAG's local target runs it."""
    return [
        "spark-submit", "--master", master, "--driver-memory", settings.spark_driver_memory,
        *[a for key, value in steps.local_spark_conf(settings).items() for a in ("--conf", f"{key}={value}")],
        str(ROOT / "spark_jobs" / script), *args,
    ]  # fmt: skip


def measured(command: list[str], settings: Settings) -> tuple[float, str, dict]:
    """Run a spark-submit: (wall seconds, its output, peak memory of its process tree)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, env=submit_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    memory = PeakRss(proc.pid)
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    peaks = memory.stop()
    if proc.returncode != 0:
        script = next(Path(arg).name for arg in command if arg.endswith(".py"))
        raise RuntimeError(f"{script} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, output, peaks


_UPLOADED: dict[Path, tuple[Path, Path]] = {}


def uploaded(images: Path) -> tuple[Path, Path]:
    """`images` mirrored into a lake folder by the upload's own code, and the input listing it wrote.

    Done once per folder, outside the timings: what the DAG's upload task hands the featurize step.
    """
    if images not in _UPLOADED:
        from orchard.storage.sync import listing_parquet, sync_folder

        lake = images.parent / f"{images.name}-lake"
        report = sync_folder(images, lake / "images")
        (lake / "inputs.parquet").write_bytes(listing_parquet(report.inputs))
        _UPLOADED[images] = (lake / "images", lake / "inputs.parquet")
    return _UPLOADED[images]


def step_paths(out: Path, *, images: str = "", inputs: str = "", model: Path | None = None,
               features: str = "") -> steps.StepPaths:  # fmt: skip
    """The steps' paths under `out` (no features cache: every rep featurizes every image)."""
    return steps.StepPaths(
        images=images, inputs=inputs, features=features or f"file://{out}/features",
        quarantine=f"file://{out}/quarantine", featurize_summary=f"file://{out}/featurize.json",
        inference_model=f"file://{model}", pca=f"file://{out}/pca", model=f"file://{out}/model",
        pca_summary=f"file://{out}/pca.json", csv_parts=f"file://{out}/csv_parts",
    )  # fmt: skip


def spark_submit(settings: Settings, images: Path, out: Path, model: Path, master: str = "local[2]") -> dict:
    """The featurize step exactly as the DAG submits it (cold JVM and workers): wall time, memory.

    Like the DAG's, it reads the upload's input listing (--inputs).
    """
    images, inputs = uploaded(images)
    args = steps.featurize_args(
        step_paths(out, images=f"file://{images}", inputs=f"file://{inputs}", model=model)
    )
    wall, output, peaks = measured(submit_command(settings, "featurize.py", args, master), settings)
    summary = json.loads((out / "featurize.json").read_text())
    executed = sum(int(m.group(1)) for m in FEATURIZED_LINE.finditer(output))
    return {"wall_s": wall, "summary": summary, "executed": executed, **peaks}


def pca_submit(settings: Settings, features_dir: Path, out: Path, k: int = 50) -> dict:
    """The PCA step exactly as the DAG submits it: wall time, memory."""
    args = steps.pca_args(step_paths(out, features=f"file://{features_dir}"), k=k)
    wall, _, peaks = measured(submit_command(settings, "pca.py", args), settings)
    return {"wall_s": wall, "summary": json.loads((out / "pca.json").read_text()), **peaks}


PLAIN_COLD = """
import sys, numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from orchard_jobs.images import decode_image
from orchard_jobs.model import Featurizer
paths = sorted(p for p in Path(sys.argv[1]).rglob('*') if p.is_file())
with np.load(sys.argv[3]) as prepared:
    featurizer = Featurizer([prepared[f"w{i}"] for i in range(len(prepared.files))])
for i in range(0, len(paths), int(sys.argv[4])):
    featurizer(np.stack([decode_image(p.read_bytes()) for p in paths[i:i + int(sys.argv[4])]]))
"""


def prepared_weights(work: Path) -> Path:
    """random:42's arrays in a file: the plain process's counterpart of the step's converted model.

    Both sides of R1 incl. start-up then start from weights prepared on disk (as a re-run does),
    so neither times a conversion or a calibration the other does not.
    """
    from orchard_jobs.model import random_weights

    path = work / "weights.npz"
    np.savez(path, **{f"w{i}": array for i, array in enumerate(random_weights(WEIGHTS_SEED))})
    return path


def plain_cold(images: Path, weights: Path) -> float:
    """Wall time of a fresh Python process doing the same featurization with plain Keras."""
    command = [sys.executable, "-c", PLAIN_COLD, str(images), str(ROOT / "spark_jobs"), str(weights)]
    wall, result = timed(lambda: subprocess.run([*command, str(BATCH)], capture_output=True, check=False))
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-3000:])
    return wall


# --- the measurements ------------------------------------------------------------------------


def plain_loop(featurizer: Callable[[np.ndarray], np.ndarray], paths: list[Path]) -> Callable[[], np.ndarray]:
    """Read, decode and featurize `paths` in batches in this process, the plain way."""
    from orchard_jobs.images import decode_image

    def pipeline() -> np.ndarray:
        out = []
        for i in range(0, len(paths), BATCH):
            out.append(featurizer(np.stack([decode_image(p.read_bytes()) for p in paths[i : i + BATCH]])))
        return np.concatenate(out)

    return pipeline


def steady_state(settings: Settings, images: Path, paths: list[Path], reps: int, model_doc: Path) -> dict:
    """R1, R1b (steady), R4, R5: a warm Spark session, warm in-process Keras and engine, interleaved."""
    from pyspark.sql import SparkSession

    from orchard_jobs import features
    from orchard_jobs.engine import OnnxFeaturizer
    from orchard_jobs.images import decode_image
    from orchard_jobs.model import Featurizer, random_weights

    model = Path(
        json.loads(model_doc.read_text(encoding="utf-8"))["model"].removeprefix("file://")
    ).read_bytes()
    threads = os.cpu_count() or 1  # the same threads as Spark's local[N] workers, one each
    engine_plain = OnnxFeaturizer(model, threads=threads)
    # Keras with TensorFlow's default threads (all cores): how the peers featurize.
    plain_keras = plain_loop(Featurizer(random_weights(WEIGHTS_SEED)), paths)
    plain_engine = plain_loop(engine_plain, paths)
    decoded = np.stack([decode_image(p.read_bytes()) for p in paths])

    def decode_only() -> None:
        for p in paths:
            decode_image(p.read_bytes())

    def infer_only() -> None:
        for i in range(0, len(decoded), BATCH):
            engine_plain(decoded[i : i + BATCH])

    builder = SparkSession.builder.master(f"local[{threads}]").appName("orchard-bench")
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    # The local target's configuration, as the DAG's spark-submit of a step has it.
    for key, value in steps.local_spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    broadcast = spark.sparkContext.broadcast(model)
    # What the featurize step reads in a DAG run: the lake's copy and the upload's input listing.
    lake_images, inputs = uploaded(images)
    uri, listing = f"file://{lake_images}", f"file://{inputs}"
    slots = spark.sparkContext.defaultParallelism
    partitions = features.plan_partitions(len(paths), slots)

    def spark_pipeline() -> None:
        files, _ = features.read_images(spark, uri, listing)
        results = features.featurize(files, broadcast, partitions, threads=1)
        # Spark's benchmark sink: the whole plan runs on every row and the rows are dropped, as the
        # plain loops keep theirs in memory. (Summing the features' lengths instead took one more
        # job and a shuffle of its own: ~0.2 s of 1.9.)
        results.write.format("noop").mode("overwrite").save()

    expected = plain_keras()  # warm-up, and the reference features
    plain_engine()
    spark_pipeline()  # warm-up: Python workers start, sessions open
    rows = {"keras": [], "engine": [], "spark": [], "decode": [], "infer": []}
    for rep in range(reps):
        rows["keras"].append(timed(plain_keras)[0])
        rows["spark"].append(timed(spark_pipeline)[0])
        rows["engine"].append(timed(plain_engine)[0])
        rows["decode"].append(timed(decode_only)[0])
        rows["infer"].append(timed(infer_only)[0])
        log(f"steady rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()))

    # The Spark path (ONNX Runtime in the workers) computes the same numbers as plain Keras.
    files, _ = features.read_images(spark, uri, listing)
    got = features.featurize(files, broadcast, partitions, threads=1).select("path", "features")
    by_path = {r.path: r.features for r in got.collect()}
    order = [p.relative_to(images).as_posix() for p in paths]
    spark_features = np.array([by_path[p] for p in order], dtype=np.float32)
    scale = float(np.abs(expected).max())
    max_rel_diff = float(np.abs(spark_features - expected).max() / scale)
    spark.stop()
    n = len(paths)
    return {
        **engine_variants(model, decoded[:ENGINE_IMAGES], reps),
        "images": n,
        "partitions": partitions,
        "threads": threads,
        "keras_img_s": n / median(rows["keras"]),
        "engine_img_s": n / median(rows["engine"]),
        "spark_img_s": n / median(rows["spark"]),
        "decode_s": median(rows["decode"]),
        "infer_s": median(rows["infer"]),
        "infer_img_s": n / median(rows["infer"]),
        "max_rel_diff": max_rel_diff,
        "raw_seconds": {k: [round(x, 3) for x in v] for k, v in rows.items()},
    }


ENGINE_IMAGES = 256  # images for the engine's own variants (one thread, decoded in memory)
TF_IMPORT = "import time; t = time.perf_counter(); import tensorflow; print(time.perf_counter() - t)"


def engine_variants(model: bytes, decoded: np.ndarray, reps: int) -> dict:
    """The engine alone, one thread, interleaved: one image per call against 64 (and whether the
    outputs are identical), random:42's calibrated weights against Keras's fresh initialisation
    (whether the activations' scale changes the speed), and what opening a model costs: an ONNX
    Runtime session against a Keras model's build and trace (and TensorFlow's import, in a fresh
    process)."""
    import keras

    from orchard_jobs.engine import INPUT_NAME, OUTPUT_NAME, OnnxFeaturizer
    from orchard_jobs.model import Featurizer, build_model, random_weights, to_onnx

    keras.utils.set_random_seed(WEIGHTS_SEED)
    fresh_model = to_onnx(build_model(None).get_weights())  # features ~1e-11: vanishing activations
    calibrated, fresh = OnnxFeaturizer(model, threads=1), OnnxFeaturizer(fresh_model, threads=1)

    def per_call(featurizer: OnnxFeaturizer, size: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            return np.concatenate([
                featurizer.session.run([OUTPUT_NAME], {INPUT_NAME: decoded[i : i + size]})[0]
                for i in range(0, len(decoded), size)
            ])  # fmt: skip

        return run

    variants = {"one_per_call": per_call(calibrated, 1), "64_per_call": per_call(calibrated, BATCH),
                "fresh_weights": per_call(fresh, 1)}  # fmt: skip
    outputs = {name: run() for name, run in variants.items()}  # warm-up
    rows: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            rows[name].append(timed(run)[0])
    weights = random_weights(WEIGHTS_SEED)
    keras_open = [timed(lambda: Featurizer(weights)(decoded[:1]))[0] for _ in range(3)]
    onnx_open = [timed(lambda: OnnxFeaturizer(model, threads=1))[0] for _ in range(5)]
    tf_import = [
        float(
            subprocess.run(
                [sys.executable, "-c", TF_IMPORT], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    return {
        "engine_images": len(decoded),
        "engine_seconds": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "per_call_max_abs_diff": float(np.abs(outputs["one_per_call"] - outputs["64_per_call"]).max()),
        "feature_scale": {
            "calibrated": float(np.abs(outputs["one_per_call"]).max()),
            "fresh": float(np.abs(outputs["fresh_weights"]).max()),
        },
        "open_s": {
            "onnx_session": [round(x, 3) for x in onnx_open],
            "keras_build_trace": [round(x, 2) for x in keras_open],
            "tensorflow_import": [round(x, 2) for x in tf_import],
        },
    }


def cold_start(settings: Settings, images: Path, work: Path, reps: int, model_doc: Path) -> dict:
    """R1 including start-up, R2, and the class archive's worth: the real featurize step vs a fresh
    plain-Keras process, and the step again without the JVM class archive; order rotated per rep.

    Both sides use every core (Spark local[N], TensorFlow's default threads) and start from weights
    prepared on disk (`prepared_weights`).
    """
    weights = prepared_weights(work)
    master = f"local[{os.cpu_count() or 1}]"
    bare = settings.model_copy(update={"spark_class_archive": ""})
    archive_used = bool(steps.local_java_options(settings) != steps.local_java_options(bare))
    runs: dict[str, list] = {"spark": [], "plain": [], "no_archive": []}
    variants = {
        "spark": lambda out: spark_submit(settings, images, out, model_doc, master),
        "plain": lambda _out: plain_cold(images, weights),
        "no_archive": lambda out: spark_submit(bare, images, out, model_doc, master),
    }
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % 3 :] + names[: rep % 3]:
            out = work / f"cold-{rep}-{name}"
            runs[name].append(variants[name](out))
            shutil.rmtree(out, ignore_errors=True)
        log(
            f"cold rep {rep + 1}/{reps}: spark-submit {runs['spark'][-1]['wall_s']:.1f} s, "
            f"plain {runs['plain'][-1]:.1f} s, "
            f"without the class archive {runs['no_archive'][-1]['wall_s']:.1f} s"
        )
    counts = [r["summary"]["counts"] for r in runs["spark"]]
    seconds = {
        "spark_submit": [round(r["wall_s"], 2) for r in runs["spark"]],
        "plain": [round(x, 2) for x in runs["plain"]],
        "no_archive": [round(r["wall_s"], 2) for r in runs["no_archive"]],
    }
    return {
        "master": master,
        "archive_used": archive_used,
        "spark_wall_s": median(seconds["spark_submit"]),
        "spark_job_s": median([r["summary"]["seconds"] for r in runs["spark"]]),
        "phases": runs["spark"][-1]["summary"]["phases_seconds"],
        "plain_wall_s": median(seconds["plain"]),
        "no_archive_wall_s": median(seconds["no_archive"]),
        "model_builds": [c["model_builds"] for c in counts],
        "python_workers": [c["python_workers"] for c in counts],
        "raw_seconds": seconds,
    }


def jvm_collectors(settings: Settings, images: Path, work: Path, reps: int, model_doc: Path) -> dict:
    """The local steps' serial collector against G1 (the JVM's default): the featurize step's peak
    memory (whole process tree) and wall time on the same images, order alternated per rep."""
    serial = steps.LOCAL_JVM
    variants = {"serial": serial, "g1": serial.replace("-XX:+UseSerialGC", "-XX:+UseG1GC")}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for rep in range(reps):
            for name in list(variants) if rep % 2 == 0 else list(variants)[::-1]:
                steps.LOCAL_JVM = variants[name]  # read by local_java_options at each submit
                out = work / f"gc-{name}"
                runs[name].append(spark_submit(settings, images, out, model_doc))
                shutil.rmtree(out, ignore_errors=True)
            log(
                f"collectors rep {rep + 1}/{reps}: "
                + ", ".join(
                    f"{n} {r[-1]['wall_s']:.1f} s {r[-1]['peak_rss_gib']} GiB" for n, r in runs.items()
                )
            )
    finally:
        steps.LOCAL_JVM = serial
    return {
        "images": sum(1 for p in images.rglob("*") if p.is_file()),
        "raw_wall_s": {n: [round(r["wall_s"], 1) for r in v] for n, v in runs.items()},
        "raw_peak_gib": {n: [r["peak_rss_gib"] for r in v] for n, v in runs.items()},
    }


def pca_agreement(features_dir: Path, k: int, reps: int) -> dict:
    """R6: orchard's Spark PCA fit (what the pca step runs) vs numpy covariance + eigh, same features."""
    import pandas as pd
    from pyspark.sql import SparkSession

    from orchard_jobs import pca

    matrix = np.stack(pd.read_parquet(features_dir).features.to_numpy()).astype(np.float32)
    builder = SparkSession.builder.master("local[2]").appName("orchard-bench-pca")
    for key, value in pca.SPARK_CONF.items():  # as the pca step runs its fit
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    uri = f"file://{features_dir}"

    def numpy_fit():
        centred = matrix.astype(np.float64) - matrix.mean(axis=0)
        values, vectors = np.linalg.eigh(centred.T @ centred / (len(matrix) - 1))
        order = np.argsort(values)[::-1]
        return values[order], vectors[:, order[:k]]

    spark_s, numpy_s = [], []
    pca.fit(spark, uri)  # warm-up: Python workers start
    for _ in range(reps):
        seconds, fitted = timed(lambda: pca.fit(spark, uri))
        spark_s.append(seconds)
        seconds, (values, vectors) = timed(numpy_fit)
        numpy_s.append(seconds)
    spark_ratios = np.array(fitted.ratios[:k])
    numpy_ratios = values[:k] / values.sum()
    # Components agree up to sign: |cosine| of each pair close to 1 (top components only: the
    # trailing ones of a near-degenerate spectrum may rotate within their eigenspace).
    top = min(k, 10)
    cosines = np.abs(np.sum(fitted.components[:, :top] * vectors[:, :top], axis=0))
    spark.stop()
    return {
        "matrix": list(matrix.shape),
        "k": k,
        "spark_fit_s": median(spark_s),
        "numpy_fit_s": median(numpy_s),
        "variance_max_abs_diff": float(np.abs(spark_ratios - numpy_ratios).max()),
        "top_component_min_abs_cosine": float(cosines.min()),
        "raw_seconds": {"spark": [round(x, 3) for x in spark_s], "numpy": [round(x, 3) for x in numpy_s]},
    }


def lake_bytes(lake: Path) -> dict[str, int]:
    """Bytes below each of the lake's prefixes (`images`, `cache/features`, `cache/models`, `runs`, ...)."""
    sizes: dict[str, int] = {}
    for path in lake.rglob("*"):
        if path.is_file():
            parts = path.relative_to(lake).parts
            prefix = "/".join(parts[:2]) if parts[0] == "cache" else parts[0]
            sizes[prefix] = sizes.get(prefix, 0) + path.stat().st_size
    return sizes


def dag_run(settings: Settings, images: Path, work: Path, rerun: bool = False, pca_k: int = 0) -> dict:
    """R3, R7: one `airflow dags test` of fruits_pipeline, from a fresh metadata DB and lake.

    `rerun`: R12, the same run again on the unchanged images, and what it added to the lake.
    """
    home, lake = work / "airflow", work / "lake"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_ORCHARD_SPARK": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "ORCHARD_LAKE": str(lake),
    }
    home.mkdir(parents=True)
    subprocess.run(["airflow", "db", "migrate"], env=env, capture_output=True, check=True)
    conf = {"source": str(images), "weights": f"random:{WEIGHTS_SEED}", **({"pca_k": pca_k} if pca_k else {})}
    command = ["airflow", "dags", "test", "fruits_pipeline", "--conf", json.dumps(conf)]
    wall, result = timed(
        lambda: subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"airflow dags test failed:\n{output[-4000:]}")
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())
    executed = sum(int(m.group(1)) for m in FEATURIZED_LINE.finditer(logs or output))
    with sqlite3.connect(home / "airflow.db") as db:
        durations = dict(db.execute("select task_id, duration from task_instance").fetchall())
    manifest_ref = json.loads((lake / "latest.json").read_text())["manifest"]
    manifest = json.loads(Path(manifest_ref.removeprefix("file://")).read_text(encoding="utf-8"))
    figures = {
        "wall_s": wall,
        "task_seconds": {k: round(v, 2) for k, v in durations.items() if v is not None},
        "spark_steps_s": durations["featurize"] + durations["pca"],
        "images": manifest["counts"]["featurized"],
        "executed": executed,
    }
    if rerun:
        before = lake_bytes(lake)
        again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if again.returncode != 0:
            raise RuntimeError(f"airflow dags test (re-run) failed:\n{(again.stdout + again.stderr)[-4000:]}")
        after = lake_bytes(lake)
        latest = json.loads((lake / "latest.json").read_text())["manifest"]
        rerun_manifest = json.loads(Path(latest.removeprefix("file://")).read_text(encoding="utf-8"))
        figures["growth"] = {
            "first_bytes": before,
            "added_bytes": {k: after.get(k, 0) - before.get(k, 0) for k in sorted({*before, *after})},
            "k": rerun_manifest["pca"]["k"],
            "attempt_bytes": {
                entry.name: sum(f.stat().st_size for f in [entry, *entry.rglob("*")] if f.is_file())
                for entry in Path(latest.removeprefix("file://")).parent.iterdir()
            },
            "featurized_now": rerun_manifest["counts"]["featurized_now"],
        }
    return figures


def scaling(
    settings: Settings,
    root: Path,
    sizes: list[int],
    work: Path,
    model_doc: Path,
    reps: int = 1,
    largest_reps: int = 1,
) -> list[dict]:
    """R8: the real featurize step at growing image counts: throughput and peak memory.

    With `reps` > 1, every size but the largest runs `reps` times, the sizes in turn (2,000,
    8,000, 2,000, 8,000, ... then the largest `largest_reps` times): their median walls, so that
    one slow start does not set the reference rate the largest size is compared with.
    """
    order = [size for _ in range(reps) for size in sizes[:-1]] + sizes[-1:] * largest_reps
    runs: dict[int, list[dict]] = {}
    for size in order:
        out = work / f"scale-{size}"
        shutil.rmtree(out, ignore_errors=True)  # the last run's output stays (the pca runs read it)
        run = spark_submit(settings, root / f"n{size}", out, model_doc)
        runs.setdefault(size, []).append(run)
        rate = size / run["wall_s"]
        log(f"scaling {size}: {run['wall_s']:.1f} s, {rate:.1f} img/s, {run['peak_rss_gib']} GiB")
    rows = []
    for size in sizes:
        done, summary = runs[size], runs[size][-1]["summary"]
        wall = median([r["wall_s"] for r in done])
        rows.append(
            {
                "images": size,
                "wall_s": round(wall, 1),
                "raw_wall_s": [round(r["wall_s"], 1) for r in done],
                "job_s": summary["seconds"],
                "img_s": size / wall,
                "partitions": summary["partitions"],
                "model_builds": summary["counts"]["model_builds"],
                "python_workers": summary["counts"]["python_workers"],
                "executed": done[-1]["executed"],
                **{key: max(r[key] for r in done) for key in PEAKS},
                "driver": summary.get("driver", {}),
            }
        )
    return rows


# --- report ----------------------------------------------------------------------------------


def paired(seconds: dict[str, list[float]], other: str, spark: str) -> list[float]:
    """Spark's throughput ÷ `other`'s, rep by rep (each rep ran both, one after the other), sorted.

    The median of these pairs is the ratio: a rep that ran while the machine was slow slows both
    of its sides, where a ratio of two medians would compare different moments.
    """
    return sorted(o / s for o, s in zip(seconds[other], seconds[spark], strict=True))


def _pairs(ratios: list[float]) -> str:
    return f"rep by rep: median of {len(ratios)} pairs ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def ratios(results: dict) -> list[tuple[str, str, str]]:
    """(ratio, value, raw figures) rows of the table."""
    s, c, p = (results[k] for k in ("steady", "cold", "pca"))
    scale = results["scaling"]
    gflops = max(results["matmul_gflops"].values())
    model_gflops = s["infer_img_s"] * GFLOP_PER_IMAGE
    builds_per_worker = max(b / w for b, w in zip(c["model_builds"], c["python_workers"], strict=True))
    marginal = (scale[-1]["images"] - scale[0]["images"]) / (scale[-1]["wall_s"] - scale[0]["wall_s"])
    reps = len(s["raw_seconds"]["keras"])
    r1, r1b = paired(s["raw_seconds"], "keras", "spark"), paired(s["raw_seconds"], "engine", "spark")
    r = results["sync"]
    r11 = paired(r["raw_seconds"], "content", "rsync")
    r1_cold = paired(c["raw_seconds"], "plain", "spark_submit")
    r1c = paired(c["raw_seconds"], "no_archive", "spark_submit")
    e = s["engine_seconds"]
    r4b, r5b = paired(e, "64_per_call", "one_per_call"), paired(e, "fresh_weights", "one_per_call")
    opened = s["open_s"]
    gc = results["collectors"]
    r8b = sorted(g / c for g, c in zip(gc["raw_peak_gib"]["g1"], gc["raw_peak_gib"]["serial"], strict=True))
    dags = results["dag"]
    d = dags[-1]
    r7 = sorted(x["wall_s"] / x["spark_steps_s"] for x in dags)
    return [
        (
            "R1 steady: Spark ÷ plain Keras throughput",
            f"{median(r1):.2f}",
            f"Spark {s['spark_img_s']:.1f} img/s ({s['partitions']} partitions, ONNX Runtime, 1 thread per "
            f"task) vs plain Keras {s['keras_img_s']:.1f} img/s (read+decode+infer, TF on all cores); "
            f"{s['images']} images, medians of {reps}; {_pairs(r1)}, ratio of the medians "
            f"{s['spark_img_s'] / s['keras_img_s']:.2f}; same features as Keras (max rel. diff "
            f"{s['max_rel_diff']:.1e})",
        ),
        (
            "R1b steady: Spark ÷ the same engine in one process",
            f"{median(r1b):.2f}",
            f"Spark {s['spark_img_s']:.1f} img/s vs plain ONNX Runtime {s['engine_img_s']:.1f} img/s "
            f"(read+decode+infer, {s['threads']} intra-op threads = Spark's {s['threads']} workers × 1); "
            f"{_pairs(r1b)}, ratio of the medians {s['spark_img_s'] / s['engine_img_s']:.2f}; "
            f"per image beyond a job's fixed cost (R8's marginal rate, {marginal:.1f} img/s): "
            f"{marginal / s['engine_img_s']:.2f}",
        ),
        (
            "R1 incl. start-up: Spark ÷ plain Keras throughput",
            f"{median(r1_cold):.2f}",
            f"spark-submit featurize.py ({c['master']}) {c['spark_wall_s']:.1f} s (inside the step "
            f"{c['spark_job_s']:.1f} s; phases {c['phases']}) vs a fresh plain-Keras process "
            f"{c['plain_wall_s']:.1f} s for the same {s['images']} images, both from weights prepared on "
            f"disk; medians of {len(r1_cold)}; {_pairs(r1_cold)}",
        ),
        (
            "R1c: featurize step without ÷ with the JVM class archive (wall)",
            f"{median(r1c):.2f}" if c["archive_used"] else "n/a",
            (
                f"{c['no_archive_wall_s']:.1f} s vs {c['spark_wall_s']:.1f} s "
                f"(saves {c['no_archive_wall_s'] - c['spark_wall_s']:.1f} s per step); {_pairs(r1c)}"
            )
            if c["archive_used"]
            else "no class archive built (make bench builds it)",
        ),
        (
            "R2: model builds ÷ Python workers",
            f"{builds_per_worker:.2f}",
            f"sessions opened {c['model_builds']}, workers {c['python_workers']} (start-up runs); R8 runs: "
            f"{[r['model_builds'] for r in scale]}, workers {[r['python_workers'] for r in scale]}",
        ),
        (
            "R3: featurizations ÷ images, whole DAG run",
            ", ".join(f"{x['executed'] / x['images']:.2f}" for x in dags),
            f"model featurizations (worker log lines in all task logs) ÷ images, in each of {len(dags)} "
            f"`airflow dags test` runs from a fresh metadata DB: {[x['executed'] for x in dags]} for "
            f"{d['images']} images",
        ),
        (
            "R4: decode+resize ÷ inference time",
            f"{s['decode_s'] / s['infer_s']:.3f}",
            f"decode {s['decode_s']:.2f} s, inference {s['infer_s']:.2f} s ({s['infer_img_s']:.1f} img/s, "
            "ONNX Runtime)",
        ),
        (
            "R4b: engine, one image per call ÷ 64 per call (rate)",
            f"{median(r4b):.2f}",
            f"one thread, {s['engine_images']} decoded images: {_pairs(r4b)}; outputs max abs diff "
            f"{s['per_call_max_abs_diff']:.1e}",
        ),
        (
            "R4c: opening the model: Keras build+trace ÷ ONNX Runtime session",
            f"{median(opened['keras_build_trace']) / median(opened['onnx_session']):.0f}",
            f"session {median(opened['onnx_session']):.3f} s (median of {len(opened['onnx_session'])}), "
            f"Keras build+trace+first call {median(opened['keras_build_trace']):.2f} s with TensorFlow "
            f"imported, which takes {median(opened['tensorflow_import']):.2f} s in a fresh process",
        ),
        (
            "R5: model FLOP rate ÷ matmul FLOP rate",
            f"{model_gflops / gflops:.2f}",
            f"{s['infer_img_s']:.1f} img/s × {GFLOP_PER_IMAGE} GFLOP = {model_gflops:.1f} GFLOP/s vs "
            f"float32 matmul {results['matmul_gflops']} GFLOP/s",
        ),
        (
            "R5b: engine, random:42 (calibrated) ÷ fresh-init weights (rate)",
            f"{median(r5b):.2f}",
            f"features' max {s['feature_scale']['calibrated']:.2f} vs {s['feature_scale']['fresh']:.1e}; "
            f"one thread, one image per call; {_pairs(r5b)}",
        ),
        (
            "R6: Spark PCA fit ÷ numpy cov+eigh",
            f"{p['spark_fit_s'] / p['numpy_fit_s']:.1f}",
            f"Spark {p['spark_fit_s']:.2f} s vs numpy {p['numpy_fit_s']:.2f} s on "
            f"{p['matrix'][0]}×{p['matrix'][1]} features (all components; k={p['k']} compared); explained "
            f"variance max diff {p['variance_max_abs_diff']:.1e}, top-10 components min abs cosine "
            f"{p['top_component_min_abs_cosine']:.6f}",
        ),
        (
            "R7: `airflow dags test` ÷ Spark steps wall",
            f"{median(r7):.2f}",
            f"dags test {[round(x['wall_s'], 1) for x in dags]} s, featurize+pca tasks "
            f"{[round(x['spark_steps_s'], 1) for x in dags]} s ({d['images']} images); run by run "
            f"{[round(x, 2) for x in r7]}; the last run's tasks {d['task_seconds']}",
        ),
        (
            "R8: throughput by image count",
            ", ".join(f"{r['images']}: {r['img_s']:.1f} img/s" for r in scale),
            f"spark-submit walls {[r['wall_s'] for r in scale]} s incl. start-up; marginal rate "
            f"{marginal:.1f} img/s from {scale[0]['images']} to {scale[-1]['images']} images",
        ),
        (
            "R8: peak memory by image count",
            ", ".join(f"{r['images']}: {r['peak_rss_gib']} GiB" for r in scale),
            "whole process tree (driver JVM + Python workers); driver "
            f"{[r['peak_driver_gib'] for r in scale]} GiB, all Python workers "
            f"{[r['peak_python_workers_gib'] for r in scale]} GiB, one Python worker at most "
            f"{max(r['peak_python_worker_gib'] for r in scale)} GiB",
        ),
        (
            "R8b: featurize step's peak memory, G1 ÷ serial collector",
            f"{median(r8b):.2f}",
            f"{gc['images']} images, whole process tree: serial {gc['raw_peak_gib']['serial']} GiB in "
            f"{gc['raw_wall_s']['serial']} s, G1 {gc['raw_peak_gib']['g1']} GiB in "
            f"{gc['raw_wall_s']['g1']} s; "
            f"{_pairs(r8b)}",
        ),
        *[_growth_line(run["growth"]) for run in results["dag"]],
        *scale_out.lines(results["scale_out"]),
        *plan_check.lines(results["plan"]),
        (
            "R11: unchanged re-upload, content rule ÷ rsync's",
            f"{median(r11):.2f}",
            f"{r['images']} unchanged images re-synced: same size and SHA-256 (the sync's rule) "
            f"{median(r['raw_seconds']['content']):.2f} s vs same size and mtime "
            f"{median(r['raw_seconds']['rsync']):.2f} s, medians of {len(r11)}; {_pairs(r11)}",
        ),
    ]


def _print_only(results: dict, rows: list[tuple[str, str, str]], to: Path | None) -> int:
    """Print some rows of the table alone (and every figure to `to`)."""
    print("\n".join(" | ".join(row) for row in rows))
    if to:
        to.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


def scale_out_run(settings: Settings, work: Path, model_doc: Path, count: int, reps: int) -> dict:
    """R9, R10: the real steps on 1 and 2 pinned standalone workers (bench/scale_out.py)."""
    paths = image_set(work / "scale-out-images", count, seed=3)
    images, inputs = uploaded(work / "scale-out-images")
    model = Path(json.loads(model_doc.read_text(encoding="utf-8"))["model"].removeprefix("file://"))

    def featurize(out: Path) -> list[str]:
        found = step_paths(out, images=f"file://{images}", inputs=f"file://{inputs}", model=model_doc)
        return steps.featurize_args(found, partitions=scale_out.PARTITIONS)

    def pca(features: Path, out: Path) -> list[str]:
        return steps.pca_args(step_paths(out, features=f"file://{features}"), k=50)

    log(f"scale-out: {count} images, 1 and 2 standalone workers, {reps} alternated reps")
    return scale_out.scale_out(featurize, pca, steps.spark_conf(), model, paths, work / "scale-out", reps)


def plan_run(settings: Settings, work: Path, model_doc: Path, small: int, large: int) -> dict:
    """R13 (bench/plan_check.py): the engine profile, then the plan for `large` images calibrated on
    `small`, against the `large` run; the profile is written where plans read it."""
    sets = {n: work / f"plan-images-{n}" for n in (small, large)}
    paths = {n: image_set(folder, n, seed=5 + i) for i, (n, folder) in enumerate(sets.items())}
    model = Path(json.loads(model_doc.read_text(encoding="utf-8"))["model"].removeprefix("file://"))
    log(f"plan: engine profile on {small} images, then the steps on {small} and {large} images")
    profile = plan_check.engine_profile(model, paths[small], work)
    plan_check.write_profile(profile, settings.engine_profile)

    def featurize(n: int, out: Path) -> dict:
        return spark_submit(settings, sets[n], out, model_doc)

    def pca(out: Path) -> dict:
        return pca_submit(settings, out / "features", out / "pca")

    return plan_check.plan_check(featurize, pca, small, large, profile, work)


def _growth_line(growth: dict) -> tuple[str, str, str]:
    """R12: what an unchanged re-run adds to the lake, against the lake after the first run."""
    first, added = growth["first_bytes"], growth["added_bytes"]
    total, grown = sum(first.values()), sum(added.values())
    no_model = total - first.get("cache/models", 0)
    parts = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(first.items()))
    growth_parts = ", ".join(f"{k} {v / 1e6:+.2f} MB" for k, v in added.items() if v)
    largest = sorted(growth.get("attempt_bytes", {}).items(), key=lambda item: -item[1])[:4]
    growth_parts += "; of which " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in largest)
    return (
        f"R12 (k={growth['k']}): unchanged re-run's lake growth ÷ first run's lake",
        f"{grown / total:.3f}",
        f"first run {total / 1e6:.2f} MB ({parts}); the re-run added {grown / 1e6:.2f} MB ({growth_parts}; "
        f"k={growth['k']}, {growth['featurized_now']} images featurized again); without the ONNX model "
        f"{grown / no_model:.3f}",
    )


def _rsync_copy(src: Path, dest: Path, size: int, digest: str) -> str:
    """The yardstick of R9: unchanged means the same size and modification time (rsync's rule)."""
    try:
        info = dest.stat()
    except FileNotFoundError:
        info = None
    if info is not None and info.st_size == size and int(info.st_mtime) == int(src.stat().st_mtime):
        return "skipped"
    shutil.copy2(src, dest)
    return "uploaded"


def unchanged_rule(source: Path, work: Path, reps: int = 5) -> dict:
    """R11: the upload of a folder the lake already holds, with the sync's content rule and with rsync's.

    Both hash every source file (the run's input listing needs its SHA-256); the content rule also
    reads the lake's copy. Interleaved, rep by rep, each into its own copy of the lake.
    """
    from orchard.storage import sync

    lakes = {"content": work / "r11-content", "rsync": work / "r11-rsync"}
    for lake in lakes.values():
        sync.sync_folder(source, lake)
    content_copy = sync._copy
    seconds: dict[str, list[float]] = {"content": [], "rsync": []}
    for _ in range(reps):
        for rule, lake in lakes.items():
            sync._copy = content_copy if rule == "content" else _rsync_copy
            try:
                wall, report = timed(lambda lake=lake: sync.sync_folder(source, lake))
            finally:
                sync._copy = content_copy
            assert report.uploaded == 0, report.as_dict()
            seconds[rule].append(wall)
    files = sum(1 for p in source.rglob("*") if p.is_file())
    return {"images": files, "raw_seconds": seconds}


def subset(paths: list[Path], root: Path, size: int, folder: Path) -> None:
    """`size` images of a generated set, hard-linked into their class folders under `folder`.

    Taken from every class in turn, so that each size holds the same mix of classes as the whole
    set (one of them is PNG): the first `size` paths in name order would be one or two classes only.
    """
    by_class: dict[Path, list[Path]] = {}
    for path in paths:
        by_class.setdefault(path.parent, []).append(path)
    mixed = [path for turn in itertools.zip_longest(*by_class.values()) for path in turn if path is not None]
    for path in mixed[:size]:
        target = folder / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)


def scale_run(settings: Settings, work: Path, n: int, model_doc: Path) -> dict:
    """make bench-scale: the real featurize and PCA steps at 2,000, 8,000 and `n` images."""
    sizes = sorted({2000, 8000, n})
    everything = image_set(work / "all", sizes[-1], seed=2)
    for size in sizes:
        subset(everything, work / "all", size, work / f"n{size}")
    os.sync()  # the new images' writeback would otherwise slow the first runs' reads
    log(f"generated {n} images")
    featurize = scaling(settings, work, sizes, work, model_doc, reps=SCALE_REPS)
    pca = []
    for size in sizes[1:]:
        run = pca_submit(settings, work / f"scale-{size}" / "features", work / f"pca-{size}")
        pca.append({"images": size, **{k: v for k, v in run.items() if k != "summary"}})
        log(f"pca {size}: {run['wall_s']:.1f} s, {run['peak_rss_gib']} GiB")
    return {"featurize": featurize, "pca": pca}


def _runs(walls: list[float]) -> str:
    """The walls behind a median, when there were several runs."""
    return f" (median of {', '.join(f'{w}' for w in walls)})" if len(walls) > 1 else ""


def scale_report(scale: dict) -> str:
    """The scale run as Markdown: rates, marginal rates and memory by image count."""
    rows = scale["featurize"]
    lines = [
        "| images | featurize wall | img/s | marginal img/s | peak tree | driver | all workers | one worker "
        "| driver listing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for before, row in zip([None, *rows[:-1]], rows, strict=True):
        marginal = (
            f"{(row['images'] - before['images']) / (row['wall_s'] - before['wall_s']):.1f}"
            if before
            else "-"
        )
        driver = row["driver"]
        lines.append(
            f"| {row['images']} | {row['wall_s']} s{_runs(row.get('raw_wall_s', []))} "
            f"| {row['img_s']:.1f} | {marginal} "
            f"| {row['peak_rss_gib']} GiB "
            f"| {row['peak_driver_gib']} GiB | {row['peak_python_workers_gib']} GiB "
            f"| {row['peak_python_worker_gib']} GiB | {driver.get('listed_files')} paths "
            f"({'the upload listing' if driver.get('listing_from_upload') else 'listed by Spark'}) |"
        )
    lines += ["", "| images | pca wall | peak tree | driver | workers |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['images']} | {r['wall_s']:.1f} s | {r['peak_rss_gib']} GiB | {r['peak_driver_gib']} GiB "
        f"| {r['peak_python_workers_gib']} GiB |"
        for r in scale["pca"]
    ]
    return "\n".join(lines)


def report(results: dict) -> str:
    """The machine fingerprint and the table, as Markdown."""
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, {m['memory_gib']} GiB; "
        f"Python {m['python']}, {m['java']}",
        f"ONNX Runtime {m['onnxruntime']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"PySpark {m['pyspark']}, numpy {m['numpy']}, pandas {m['pandas']}, pyarrow {m['pyarrow']}",
        f"Batch {BATCH}, weights random:{WEIGHTS_SEED}, generated 100x100 fruit images. Spark "
        f"local[{results['steady']['threads']}] for R1/R1b steady and {results['cold']['master']} for R1 "
        "incl. start-up (as many as plain Keras's threads); the steps of R2, R8 and the DAG runs: local[2].",
        "",
        "| ratio | value | raw figures |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | **{value}** | {raw} |" for name, value, raw in ratios(results)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="images for R1, R4, R5, R7 (default 600)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the steady-state pair")
    parser.add_argument("--cold-reps", type=int, default=3, help="repetitions of the cold variants")
    parser.add_argument("--run-reps", type=int, default=2, help="repetitions of the DAG run, R8 and R8b")
    parser.add_argument("--sizes", default="500,2000,8000", help="image counts for R8")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep generated images and outputs here")
    parser.add_argument("--scale", type=int, default=0, help="only the scale run, on this many images")
    parser.add_argument("--scale-out-images", type=int, default=1200, help="images for R9 and R10")
    parser.add_argument("--only-scale-out", action="store_true", help="only R9 and R10")
    parser.add_argument("--plan-images", default="600,8000", help="R13: calibration and planned run sizes")
    parser.add_argument("--only-plan", action="store_true", help="only R13 (and the engine profile)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    settings = Settings.from_env()
    started = time.perf_counter()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="orchard-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results: dict = {"machine": fingerprint()}
        log(f"machine: {results['machine']}")
        if args.scale:
            results["scale"] = scale_run(settings, work, args.scale, model_document(work))
            results["total_s"] = round(time.perf_counter() - started, 1)
            print(scale_report(results["scale"]))
            print(f"\nbench-scale total: {results['total_s']} s")
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
            return 0
        if args.only_scale_out:
            result = scale_out_run(
                settings, work, model_document(work), args.scale_out_images, args.run_reps + 1
            )
            results["scale_out"] = result
            print("\n".join(" | ".join(row) for row in scale_out.lines(result)))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
            return 0
        small, large = (int(x) for x in args.plan_images.split(","))
        if args.only_plan:
            results["plan"] = plan_run(settings, work, model_document(work), small, large)
            return _print_only(results, plan_check.lines(results["plan"]), args.json)
        images = work / "images"
        paths = image_set(images, args.images, seed=1)
        for size in sizes:
            image_set(work / f"n{size}", size, seed=2)
        log(f"generated {args.images} + {sizes} images in {work}")
        model_doc = model_document(work)
        results["matmul_gflops"] = matmul_gflops()
        results["steady"] = steady_state(settings, images, paths, args.reps, model_doc)
        results["cold"] = cold_start(settings, images, work, args.cold_reps, model_doc)
        # Each rep is re-run on the unchanged images (R12): k chosen by variance, then k = 50.
        results["dag"] = [
            dag_run(settings, images, work / f"dag-{rep}", rerun=True, pca_k=50 if rep else 0)
            for rep in range(args.run_reps)
        ]
        results["scaling"] = scaling(
            settings, work, sizes, work, model_doc, reps=args.run_reps, largest_reps=args.run_reps
        )
        results["collectors"] = jvm_collectors(settings, work / f"n{sizes[1 if len(sizes) > 1 else 0]}",
                                               work, args.run_reps, model_doc)  # fmt: skip
        results["pca"] = pca_agreement(work / f"scale-{sizes[-1]}" / "features", k=50, reps=5)
        results["sync"] = unchanged_rule(work / f"n{sizes[-1]}", work)
        results["scale_out"] = scale_out_run(
            settings, work, model_doc, args.scale_out_images, args.run_reps + 1
        )
        results["plan"] = plan_run(settings, work, model_doc, small, large)
        results["total_s"] = round(time.perf_counter() - started, 1)
        print(report(results))
        print(f"\nbench total: {results['total_s']} s")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
