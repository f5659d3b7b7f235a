"""R13: a run's plan against what happened, on this machine's local Spark (the local target's plan).

The engine profile first: the engine alone (decode + ONNX Runtime, one thread per process) on 1 and
2 pinned processes, written with the CPU model to ORCHARD_ENGINE_PROFILE (bench/engine-profile.json),
which plans use until the lake's history has a run on the machine. Then the real featurize and PCA
steps (spark-submit, local[2], as the DAG runs them) on `small` images give one history record; the
plan for `large` images is made from it by orchard.planning (the plan task's own code), and compared
with the `large` run: predicted ÷ actual, per phase and in total. The uncalibrated plan (the engine
profile alone, no history) is compared too.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

import scale_out  # bench/scale_out.py: the engine-only rate of pinned processes

from orchard import planning

MASTER = "local[2]"


def engine_profile(model: Path, paths: list[Path], work: Path, reps: int = 3) -> dict:
    """The engine's images/s on 1 and 2 pinned processes (medians of `reps`), with the CPU model."""
    if shutil.which("taskset") is None:
        return {}
    rates = {
        n: statistics.median(scale_out.engine_rate(model, paths, list(range(n)), work) for _ in range(reps))
        for n in (1, 2)
    }
    return {
        "cpu": planning.cpu_model(),
        "measured": dt.date.today().isoformat(),
        "command": "make bench (bench/plan_check.py)",
        "images": len(paths),
        "rates": {str(n): round(rate, 2) for n, rate in rates.items()},
    }


def run_steps(featurize: Callable[[int, Path], dict], pca: Callable[[Path], dict], n: int, out: Path) -> dict:
    """The two steps on the set of `n` images; their summaries' phases (as the report reads them)."""
    step = featurize(n, out)
    fitted = pca(out)
    counts = step["summary"]["counts"]
    return {
        "counts": counts,
        "actual": planning.local_actuals(step["summary"], fitted["summary"]),
        "walls": {"featurize": round(step["wall_s"], 1), "pca": round(fitted["wall_s"], 1)},
    }


def plan_check(
    featurize: Callable[[int, Path], dict],
    pca: Callable[[Path], dict],
    small: int,
    large: int,
    profile: dict,
    work: Path,
) -> dict:
    """R13: `featurize(n, out)` / `pca(out)` run the steps on the set of n images, into `out`; the plan
    for `large` from the `small` run's record, and from the profile alone."""
    machine = planning.local_machine(MASTER)
    calibration = run_steps(featurize, pca, small, work / f"plan-{small}")
    counts = calibration["counts"]
    manifest = {
        "run_id": f"bench-{small}",
        "run": {"attempt": 1},
        "counts": {**counts, "featurized_now": counts["featurized"] - counts.get("from_cache", 0)},
    }
    first = planning.make_plan(
        planning.Work(small, small, 0, "bench"), machine, planning.calibrate([], machine)
    )
    record = planning.history_record(first, manifest, calibration["actual"])
    work_large = planning.Work(large, large, 0, "bench: no cache")
    calibrated = planning.make_plan(work_large, machine, planning.calibrate([record], machine, profile))
    uncalibrated = planning.make_plan(work_large, machine, planning.calibrate([], machine, profile or None))
    outcome = run_steps(featurize, pca, large, work / f"plan-{large}")
    return {
        "small": small,
        "large": large,
        "machine": machine.key,
        "calibration": calibration,
        "outcome": outcome,
        "calibrated": planning.compare(calibrated, outcome["actual"]),
        "uncalibrated": planning.compare(uncalibrated, outcome["actual"]),
        "uncalibrated_unknown": uncalibrated["unknown"],
        "profile": profile,
    }


def lines(result: dict) -> list[tuple[str, str, str]]:
    """The bench table's row for R13."""

    def phases(rows: list[dict]) -> str:
        return ", ".join(
            f"{r['phase']} {r['predicted']:.0f}/{r['actual']:.0f} s = {r['ratio']:.2f}" for r in rows
        )

    total = next((r for r in result["calibrated"] if r["phase"] == "total"), None)
    profile = result["profile"]
    rates = profile.get("rates", {})
    return [
        (
            f"R13: plan ÷ actual, {result['large']} images, calibrated on {result['small']}",
            f"{total['ratio']:.2f}" if total else "n/a",
            f"calibrated: {phases(result['calibrated'])}; uncalibrated (engine profile only, no Spark): "
            f"{phases(result['uncalibrated']) or 'nothing predicted'} (not predicted: "
            f"{'; '.join(u.split(':')[0] for u in result['uncalibrated_unknown']) or 'none'}); "
            f"engine profile {rates} img/s on 1/2 processes, {profile.get('cpu')}; "
            f"spark-submit walls {result['calibration']['walls']} ({result['small']}), "
            f"{result['outcome']['walls']} ({result['large']})",
        )
    ]


def write_profile(profile: dict, path: str) -> None:
    """The engine profile where plans read it (ORCHARD_ENGINE_PROFILE)."""
    if profile and path:
        Path(path).write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
