"""A run's plan, made before any cluster or Spark step exists: the work, the machines, the predicted
durations and cost, each figure with its basis; and `sizing=auto`'s choice of core nodes.

The model (docs/performance.md, "The plan"): a step takes a fixed part (Spark's session, the model,
the listing, the writes; on EMR the step's YARN start too) plus its images over the cluster's rate.
The featurize rate is per task slot and scales with the slots; its serial parts do not (Amdahl).
Its inputs are measured, never invented: the lake's history (`history/`, one record per finished
attempt: its phases and rates, on which machine) or, without history, the engine's per-core rate
that `make bench` recorded with its CPU model (bench/engine-profile.json). A phase nothing
measured is left out of the total and named in `unknown`, never guessed; a part of a phase taken
as 0 for want of a measurement is named in `assumed`; either makes the total a lower bound. The
cluster's start alone has a default, with its source.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from orchard.aws.sizing import vcpus_needed
from orchard.layout import LakeLayout

if TYPE_CHECKING:
    from orchard.layout import RunLayout
    from orchard.storage.lake import Lake

log = logging.getLogger(__name__)

# Without history, EMR's start (provisioning the nodes, then the bootstrap action) is not measured
# here. AWS documents no typical figure; boto3's ClusterRunning waiter allows 30 min (30 s x 60,
# https://docs.aws.amazon.com/boto3/latest/reference/services/emr/waiter/ClusterRunning.html) and a
# user report puts provisioning at about 10 min (https://www.leadfeeder.com/blog/emr-data-processing/).
DEFAULT_CLUSTER_START = 600.0
DEFAULT_CLUSTER_START_BASIS = (
    "default, not measured: about 10 min to provision an EMR cluster, as a user reports "
    "(https://www.leadfeeder.com/blog/emr-data-processing/); the first run on this instance type measures it"
)
# The newest records of the same machine that calibrate a plan: recent enough to follow upgrades.
HISTORY_USED = 10


@dataclass(frozen=True)
class Work:
    """What the run has to do: its inputs, and how many of them the features cache already holds."""

    inputs: int
    featurize_now: int
    from_cache: int
    basis: str


@dataclass(frozen=True)
class Machine:
    """Where the steps run: `key` is what history is matched on (the CPU model locally, the
    instance type on EMR), `slots` the task slots per node."""

    target: str
    key: str
    nodes: int
    vcpu: int
    slots: int
    memory_gb: float | None = None
    instance_type: str | None = None
    cpu: str | None = None

    @property
    def total_slots(self) -> int:
        return self.nodes * self.slots

    def with_nodes(self, nodes: int) -> Machine:
        return Machine(**{**asdict(self), "nodes": nodes})


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str


@dataclass(frozen=True)
class Rates:
    """What predicts a run on one machine: each figure with where it was measured (None: unknown)."""

    slot_rate: Estimate | None  # featurize: images per second per task slot (its workers' busy time)
    featurize_fixed: Estimate | None  # featurize: the rest of the step (session, start-ups, writes)
    pca_fixed: Estimate | None
    pca_per_image: Estimate | None
    cluster_start: Estimate | None = None  # EMR: created -> ready (provisioning and bootstrap)
    finish: Estimate | None = None  # EMR: last step's end -> terminated (export, then shut-down)
    between_steps: Estimate | None = None  # EMR: ready -> first step, and between the steps
    history: tuple[str, ...] = ()  # the records used: "<run id>#<attempt>"


def cpu_model() -> str:
    """This machine's CPU model (Linux), the key of a local plan's history and the bench's profile."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def count_work(listed: Sequence[str | None], cached: set[str]) -> Work:
    """The run's inputs (their SHA-256 from the upload's listing) against the cache's contents."""
    hits = sum(1 for digest in listed if digest is not None and digest in cached)
    unknown = sum(1 for digest in listed if digest is None)
    basis = "the upload's SHA-256 of each input against the features cache of this model"
    if unknown:
        basis += f" ({unknown} inputs without a SHA-256, counted as to featurize)"
    return Work(len(listed), len(listed) - hits, hits, basis)


# -- calibration ---------------------------------------------------------------------------------


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def _runs(records: Sequence[object]) -> str:
    return f"{len(records)} earlier run{'s' if len(records) != 1 else ''} on this machine"


def _featurize_rates(record: Mapping[str, Any]) -> tuple[float, float] | None:
    """(images per second per task slot, the step's other seconds) of one record's featurize step.

    With the workers' busy time (decoding and inference, summed over workers) the rate is the
    workers' own and everything else (session, listing, worker and model start-up, writes) is the
    fixed part; records without it divide the images by the whole job.
    """
    phases, now, slots = record["phases"], record["work"]["featurize_now"], record["machine"]["total_slots"]
    if not now or phases.get("featurize") is None:
        return None
    if phases.get("featurize_busy"):
        return now / phases["featurize_busy"], phases["featurize"] - phases["featurize_busy"] / slots
    if phases.get("featurize_job"):
        return now / (phases["featurize_job"] * slots), phases["featurize"] - phases["featurize_job"]
    return None


def calibrate(
    records: Sequence[Mapping[str, Any]], machine: Machine, profile: Mapping[str, Any] | None = None
) -> Rates:
    """The rates of `machine` from history records (newest first) of the same machine key, else the
    engine profile `make bench` wrote (its per-core rate: the Spark steps' own time stays unknown).

    Locally the profile counts only when it was measured on this CPU model; on EMR, where no bench
    ran on the nodes, it is used with its CPU named in the basis (the first run on a type replaces it).
    """
    same = [r for r in records if r.get("machine", {}).get("key") == machine.key][:HISTORY_USED]
    used = tuple(f"{r['run_id']}#{r['attempt']}" for r in same)

    measured = [rates for rates in map(_featurize_rates, same) if rates]
    slot_rate = featurize_fixed = None
    if measured:
        slot_rate = Estimate(_median(r for r, _ in measured), f"featurize of {_runs(measured)}")
        featurize_fixed = Estimate(
            _median(max(f, 0.0) for _, f in measured), f"the rest of {_runs(measured)}"
        )
    elif profile and profile.get("rates") and (machine.target == "emr" or profile.get("cpu") == machine.cpu):
        cores = sorted(int(c) for c in profile["rates"])
        usable = max([c for c in cores if c <= machine.slots] or cores[:1])
        rate = float(profile["rates"][str(usable)]) / usable
        other = " (not the nodes' CPU)" if machine.target == "emr" else ""
        slot_rate = Estimate(
            rate,
            f"engine only (decode + inference, no Spark), {usable} process(es) on {profile.get('cpu')}{other}"
            f", make bench on {profile.get('measured')}",
        )

    pca_fixed, pca_per_image = _linear(
        [(r["work"]["inputs"], r["phases"]["pca"]) for r in same if r["phases"].get("pca") is not None]
    )
    cluster_start = finish = between = None
    if machine.target == "emr":
        # A start of 0 s is no cluster's (moto's clusters are ready when created): not a measurement.
        cluster_start = _clusters_median(same, "cluster_start", above=0.0) or Estimate(
            DEFAULT_CLUSTER_START, DEFAULT_CLUSTER_START_BASIS
        )
        finish = _clusters_median(same, "finish")
        between = _clusters_median(same, "between_steps")
    return Rates(slot_rate, featurize_fixed, pca_fixed, pca_per_image, cluster_start, finish, between, used)


def _clusters_median(
    records: Sequence[Mapping[str, Any]], phase: str, above: float | None = None
) -> Estimate | None:
    """The median of an EMR phase over the records that have it (and exceed `above`), or None."""
    seen = [
        r["phases"][phase]
        for r in records
        if r["phases"].get(phase) is not None and (above is None or r["phases"][phase] > above)
    ]
    if not seen:
        return None
    return Estimate(_median(seen), f"median of {len(seen)} earlier clusters of this type")


def _linear(points: Sequence[tuple[int, float]]) -> tuple[Estimate | None, Estimate | None]:
    """seconds = a + b x images, by least squares over runs of at least two sizes; one size: its
    median time as the fixed part, the part per image unknown until a run of another size."""
    if not points:
        return None, None
    sizes = {n for n, _ in points}
    if len(sizes) < 2:
        return Estimate(_median(s for _, s in points), f"{_runs(points)} of {points[0][0]} images"), None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_s = sum(s for _, s in points) / len(points)
    slope = sum((n - mean_n) * (s - mean_s) for n, s in points) / sum((n - mean_n) ** 2 for n, _ in points)
    slope = max(slope, 0.0)
    fixed = max(mean_s - slope * mean_n, 0.0)
    basis = f"least squares over {_runs(points)} of {min(sizes)}-{max(sizes)} images"
    return Estimate(fixed, basis), Estimate(slope, basis)


# -- prediction ----------------------------------------------------------------------------------


def predict(work: Work, machine: Machine, rates: Rates) -> dict[str, Any]:
    """Each phase's predicted seconds with its basis, their total, what could not be predicted
    (`unknown`: left out of the total) and what was taken as 0 for want of a measurement (`assumed`):
    with either, the total is a lower bound (`complete` False)."""
    phases: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    assumed: list[str] = []

    def add(name: str, estimate: Estimate | None, missing: str = "no earlier run on this machine") -> None:
        if estimate is None:
            unknown.append(f"{name}: {missing}")
        else:
            phases[name] = {"seconds": round(estimate.seconds, 1), "basis": estimate.basis}

    if machine.target == "emr":
        add("cluster_start", rates.cluster_start)
    if work.featurize_now and rates.slot_rate is None:
        add(
            "featurize",
            None,
            "no measured rate (no earlier run on this machine, no bench profile of its CPU)",
        )
    else:
        job = work.featurize_now / (rates.slot_rate.seconds * machine.total_slots) if rates.slot_rate else 0.0
        parts = []
        if rates.slot_rate:
            parts.append(
                f"{work.featurize_now} images / ({rates.slot_rate.seconds:.2f} img/s"
                f" x {machine.total_slots} slots) [{rates.slot_rate.basis}]"
            )
        fixed = rates.featurize_fixed.seconds if rates.featurize_fixed else 0.0
        if rates.featurize_fixed:
            parts.append(f"{fixed:.0f} s fixed [{rates.featurize_fixed.basis}]")
        else:
            assumed.append("featurize: the step's fixed part (session, workers, writes), not measured yet")
        add("featurize", Estimate(fixed + job, " + ".join(parts) or "nothing to featurize"))
    if machine.target == "emr":
        add("between_steps", rates.between_steps)
    if rates.pca_fixed is not None:
        per = rates.pca_per_image.seconds if rates.pca_per_image else 0.0
        if rates.pca_per_image is None:
            assumed.append("pca: its part per image (runs of one size only)")
        add("pca", Estimate(rates.pca_fixed.seconds + per * work.inputs, rates.pca_fixed.basis))
    else:
        add("pca", None)
    if machine.target == "emr":
        add("finish", rates.finish)
    total = round(sum(p["seconds"] for p in phases.values()), 1)
    return {
        "phases": phases,
        "total_seconds": total,
        "unknown": unknown,
        "assumed": assumed,
        "complete": not unknown and not assumed,
    }


def cost(
    machine: Machine, seconds: float, price: float | None, complete: bool = True
) -> dict[str, Any] | None:
    """Instances (the primary and the core nodes) x predicted lifetime x price per instance-hour
    (`lower_bound` when the lifetime is one)."""
    if machine.target != "emr" or price is None:
        return None
    instances = 1 + machine.nodes
    return {
        "cost": round(instances * seconds / 3600 * price, 4),
        "lower_bound": not complete,
        "instances": instances,
        "basis": f"{instances} x {machine.instance_type} x {seconds / 3600:.2f} h"
        f" x {price} per instance-hour "
        "(ORCHARD_EMR_PRICES or ORCHARD_EMR_PRICE_PER_HOUR)",
    }


@dataclass(frozen=True)
class SizingLimits:
    """What `sizing=auto` may use: a target duration, a maximum of core nodes, the vCPU quota left
    (by market: 'on-demand', 'spot'; None when unknown) and whether core nodes are Spot."""

    target_seconds: float
    max_nodes: int
    quota_left: Mapping[str, int | None]
    core_spot: bool = False


def choose_nodes(
    work: Work, machine: Machine, rates: Rates, limits: SizingLimits, price: float | None
) -> dict[str, Any]:
    """`sizing=auto`: of the core node counts predicted to meet the target, the one of the lowest
    predicted cost (without a price, or on a tie, the fewest), within the quota left and the
    maximum; when none meets it, the fastest allowed, and the reason why."""
    if work.featurize_now and rates.slot_rate is None:
        raise ValueError(
            "sizing=auto needs a measured featurize rate: no earlier run on this instance type, "
            "no bench profile"
        )
    candidates = []
    predictions = {}
    for nodes in range(1, limits.max_nodes + 1):
        sized = machine.with_nodes(nodes)
        predicted = predictions[nodes] = predict(work, sized, rates)
        needed = vcpus_needed(machine.vcpu, nodes, limits.core_spot)
        short = [
            f"{need} {kind} vCPUs needed, {limits.quota_left[kind]} left"
            for kind, need in needed.items()
            if limits.quota_left.get(kind) is not None and need > (limits.quota_left[kind] or 0)
        ]
        priced = cost(sized, predicted["total_seconds"], price, predicted["complete"])
        candidates.append(
            {
                "nodes": nodes,
                "seconds": predicted["total_seconds"],
                "cost": priced["cost"] if priced else None,
                "fits_quota": not short,
                "quota": "; ".join(short) or None,
            }
        )
    allowed = [c for c in candidates if c["fits_quota"]]
    if not allowed:
        raise ValueError(
            f"sizing=auto: not even 1 core node fits the vCPU quota left ({candidates[0]['quota']})"
        )
    target = f"{limits.target_seconds / 60:.0f} min"
    meeting = [c for c in allowed if c["seconds"] <= limits.target_seconds]
    if meeting:
        best = min(meeting, key=lambda c: (c["cost"] or 0, c["nodes"]))
        which = "the cheapest predicted of those meeting" if price is not None else "the fewest meeting"
        reason = (
            f"{best['nodes']} core node(s), {which} the target of {target} ({best['seconds'] / 60:.1f} min)"
        )
    else:
        best = min(allowed, key=lambda c: (c["seconds"], c["nodes"]))
        bound = (
            f"the vCPU quota left ({next(c['quota'] for c in candidates if not c['fits_quota'])})"
            if len(allowed) < len(candidates)
            else f"the maximum of {limits.max_nodes} (ORCHARD_EMR_MAX_CORE_INSTANCES)"
        )
        reason = (
            f"target of {target} not met: {best['nodes']} core node(s), the fastest within {bound}, "
            f"are predicted to take {best['seconds'] / 60:.1f} min"
        )
    partial = predictions[best["nodes"]]
    if not partial["complete"]:
        missing = [u.split(":")[0] for u in partial["unknown"] + partial["assumed"]]
        reason += f"; a lower bound, without {', '.join(missing)}"
    return {"nodes": best["nodes"], "met": bool(meeting), "reason": reason, "candidates": candidates}


def make_plan(
    work: Work,
    machine: Machine,
    rates: Rates,
    price: float | None = None,
    sizing: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The plan.json document: what the run will do, where, for how long and at what cost."""
    predicted = predict(work, machine, rates)
    return {
        "made_at": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        "target": machine.target,
        "work": asdict(work),
        "machine": {**asdict(machine), "total_slots": machine.total_slots},
        "sizing": dict(sizing) if sizing else {"mode": "fixed"},
        **predicted,
        "cost": cost(machine, predicted["total_seconds"], price, predicted["complete"]),
        "history_used": list(rates.history),
    }


def describe(plan: Mapping[str, Any]) -> str:
    """The plan in a few log lines."""
    work, machine = plan["work"], plan["machine"]
    lines = [
        f"plan: {work['inputs']} images, {work['featurize_now']} to featurize now, {work['from_cache']} "
        "from the cache",
        f"plan: {machine['nodes']} x {machine.get('instance_type') or machine['key']} "
        f"({machine['vcpu']} vCPU, {machine['slots']} slots each)",
    ]
    lines += [f"plan: {name} {p['seconds']:.0f} s [{p['basis']}]" for name, p in plan["phases"].items()]
    lines += [f"plan: not predicted: {what}" for what in plan["unknown"]]
    lines += [f"plan: taken as 0 (not measured yet): {what}" for what in plan.get("assumed", [])]
    total = f"plan: total {plan['total_seconds']:.0f} s"
    if not plan.get("complete", True):
        total += " (a lower bound)"
    if plan.get("cost"):
        total += f", cost {plan['cost']['cost']:.2f} ({plan['cost']['basis']})"
    lines.append(total)
    if plan["sizing"].get("reason"):
        lines.append(f"plan: sizing {plan['sizing']['mode']}: {plan['sizing']['reason']}")
    return "\n".join(lines)


# -- what happened -------------------------------------------------------------------------------


def local_actuals(featurize: Mapping[str, Any], pca: Mapping[str, Any]) -> dict[str, float | None]:
    """A local run's phases from its steps' summaries: each step's Spark session and its own time."""
    fphases = featurize.get("phases_seconds", {})
    return {
        "featurize": (fphases.get("session") or 0) + featurize["seconds"],
        **featurize_work(featurize),
        "pca": (pca.get("session_seconds") or 0) + pca["seconds"],
    }


def featurize_work(featurize: Mapping[str, Any]) -> dict[str, float | None]:
    """The featurize job's time and its workers' busy time (worker-seconds), from its summary."""
    fphases = featurize.get("phases_seconds", {})
    return {"featurize_job": fphases.get("featurize"), "featurize_busy": fphases.get("busy")}


def compare(plan: Mapping[str, Any], actual: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Each predicted phase beside what happened, and predicted / actual; the total last."""
    rows = []
    for name, predicted in plan.get("phases", {}).items():
        happened = actual.get(name)
        rows.append(_row(name, predicted["seconds"], happened))
    known = [actual.get(name) for name in plan.get("phases", {})]
    # A total only of what the plan covers entirely: a phase it could not predict has no share in it.
    if rows and not plan.get("unknown") and all(v is not None for v in known):
        rows.append(_row("total", plan["total_seconds"], sum(v for v in known if v is not None)))
    return rows


def _row(name: str, predicted: float, actual: float | None) -> dict[str, Any]:
    ratio = round(predicted / actual, 2) if actual else None
    return {"phase": name, "predicted": predicted, "actual": None if actual is None else round(actual, 1),
            "ratio": ratio}  # fmt: skip


def history_record(
    plan: Mapping[str, Any],
    manifest: Mapping[str, Any],
    actual: Mapping[str, float | None],
    slots: int | None = None,
) -> dict[str, Any]:
    """What a finished attempt adds to the lake's history: its machine (with the task slots the
    featurize step had, `slots`, when it said), its work and its phases."""
    counts = manifest["counts"]
    machine = dict(plan["machine"])
    if slots:
        machine["total_slots"] = slots
    return {
        "run_id": manifest["run_id"],
        "attempt": manifest["run"]["attempt"],
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "work": {
            "inputs": counts["inputs"],
            "featurize_now": counts["featurized_now"] + counts["quarantined"],
        },
        "phases": {k: v for k, v in actual.items() if v is not None},
    }


# -- the lake's side: the run's work, the history, the bench's profile ------------------------------

# The history keeps this many records (the newest): the plans read the newest of each machine.
HISTORY_KEPT = 200
_LOCAL_MASTER = re.compile(r"local(?:\[(\*|[0-9]+)(?:,[0-9]+)?\])?")


def local_machine(master: str | None) -> Machine:
    """This machine under a Spark master `local[N]`, `local[*]` or `local` (task slots: N, the
    cores, 1); another master's slots are taken as this machine's cores."""
    cores = os.cpu_count() or 1
    match = _LOCAL_MASTER.fullmatch((master or "").strip())
    slots = cores
    if match:
        slots = 1 if match.group(0) == "local" else cores if match.group(1) == "*" else int(match.group(1))
    cpu = cpu_model()
    return Machine("local", f"local: {cpu} x {cores}", 1, cores, slots, cpu=cpu)


def read_work(lake: Lake, run: RunLayout, model_sha256: str) -> Work:
    """The run's inputs (the upload's listing) against the features cache of the run's model."""
    listed = lake.read_column(run.inputs_file, "sha256")
    cached = set(lake.read_column(LakeLayout(run.lake).feature_cache(model_sha256), "sha256"))
    return count_work(listed, cached)


def read_profile(path: str) -> dict[str, Any] | None:
    """The engine profile `make bench` wrote (None when there is none, or no path is set)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            profile: dict[str, Any] = json.load(handle)
            return profile
    except FileNotFoundError:
        return None


def read_history(lake: Lake, lake_uri: str) -> list[dict[str, Any]]:
    """The lake's history records, newest first (a record that does not parse is skipped, said)."""
    records = []
    for uri in reversed(lake.list_files(LakeLayout(lake_uri).history)):
        if not uri.endswith(".json"):
            continue
        try:
            records.append(lake.read_json(uri))
        except (ValueError, FileNotFoundError) as exc:
            log.warning("history record %s skipped: %s", uri, exc)
    return records


def write_history(lake: Lake, lake_uri: str, record: Mapping[str, Any]) -> str:
    """Add a finished attempt's record (replacing one of the same attempt); the oldest beyond
    HISTORY_KEPT go."""
    stamp = dt.datetime.fromisoformat(record["finished_at"]).strftime("%Y%m%dT%H%M%SZ")
    layout = LakeLayout(lake_uri)
    uri = layout.history_record(stamp, record["run_id"], record["attempt"])
    # One record per attempt: a report run again (a retry, a cleared task) replaces its earlier one.
    name = uri.rsplit("/", 1)[1]
    for earlier in lake.list_files(layout.history):
        if earlier != uri and earlier.rsplit("/", 1)[1][len(stamp) :] == name[len(stamp) :]:
            lake.delete(earlier)
    lake.write_json(uri, record)
    records = [u for u in lake.list_files(layout.history) if u.endswith(".json")]
    for old in records[: max(len(records) - HISTORY_KEPT, 0)]:
        lake.delete(old)
    return uri
