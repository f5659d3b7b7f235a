"""The plan's model: calibration from history or the bench's profile, predictions, sizing=auto."""

from __future__ import annotations

import dataclasses

import pytest

from orchard import planning
from orchard.planning import Machine, SizingLimits, Work

EMR = Machine("emr", "emr: m5.xlarge", 2, 4, 4, 16.0, "m5.xlarge")


def record(run_id: str, machine: Machine, *, inputs: int, now: int, phases: dict, attempt: int = 1) -> dict:
    """A history record as planning.history_record writes it."""
    return {
        "run_id": run_id,
        "attempt": attempt,
        "finished_at": "2026-12-01T00:00:00+00:00",
        "machine": {**dataclasses.asdict(machine), "total_slots": machine.total_slots},
        "work": {"inputs": inputs, "featurize_now": now},
        "phases": phases,
    }


def emr_history() -> list[dict]:
    # 2 nodes x 4 slots featurized 8,000 images in a 500 s job: 2 img/s per slot; 40 s outside it.
    names = ("cluster_start", "featurize", "featurize_job", "pca", "finish", "between_steps")
    r2 = dict(zip(names, (420.0, 540.0, 500.0, 90.0, 100.0, 60.0), strict=True))
    r1 = dict(zip(names, (480.0, 165.0, 125.0, 45.0, 140.0, 80.0), strict=True))
    return [
        record("r2", EMR, inputs=8000, now=8000, phases=r2),
        record("r1", EMR, inputs=2000, now=2000, phases=r1),
    ]


def test_history_calibrates_every_phase_and_the_total_adds_them_up():
    rates = planning.calibrate(emr_history(), EMR)
    assert rates.slot_rate.seconds == pytest.approx(2.0)
    assert rates.featurize_fixed.seconds == pytest.approx(40.0)
    assert rates.cluster_start.seconds == pytest.approx(450.0)  # the median of 420 and 480
    # Two sizes: 45 s at 2,000 and 90 s at 8,000 are 30 s + 0.0075 s per image.
    assert (rates.pca_fixed.seconds, rates.pca_per_image.seconds) == pytest.approx((30.0, 0.0075))
    work = Work(inputs=16000, featurize_now=12000, from_cache=4000, basis="test")
    plan = planning.make_plan(work, EMR.with_nodes(4), rates, price=0.262)
    phases = {name: p["seconds"] for name, p in plan["phases"].items()}
    # 12,000 images over 16 slots at 2 img/s is 375 s, plus the fixed 40 s.
    assert phases == pytest.approx(
        {"cluster_start": 450.0, "featurize": 415.0, "between_steps": 70.0, "pca": 150.0, "finish": 120.0}
    )
    assert plan["total_seconds"] == pytest.approx(1205.0)
    assert (plan["unknown"], plan["assumed"], plan["complete"]) == ([], [], True)
    # 1 primary + 4 core nodes for the predicted lifetime.
    assert plan["cost"]["cost"] == pytest.approx(5 * 1205 / 3600 * 0.262, rel=1e-3)
    assert not plan["cost"]["lower_bound"]
    assert plan["history_used"] == ["r2#1", "r1#1"]


def test_other_machines_history_is_not_used_and_defaults_say_where_they_come_from():
    other = Machine("emr", "emr: c5.xlarge", 2, 4, 2, 8.0, "c5.xlarge")
    rates = planning.calibrate(emr_history(), other)
    assert rates.slot_rate is None and rates.history == ()
    assert rates.cluster_start.seconds == planning.DEFAULT_CLUSTER_START
    assert "not measured" in rates.cluster_start.basis
    plan = planning.predict(Work(100, 100, 0, "test"), other, rates)
    # Nothing measured the featurize rate, the PCA or the finish: left out and named, never guessed.
    assert set(plan["phases"]) == {"cluster_start"}
    assert [u.split(":")[0] for u in plan["unknown"]] == ["featurize", "between_steps", "pca", "finish"]
    assert not plan["complete"]


def test_the_bench_profile_gives_a_rate_without_history_and_says_it_is_a_lower_bound():
    profile = {"cpu": "AMD EPYC", "measured": "2026-12-07", "rates": {"1": 30.0, "2": 50.0}}
    rates = planning.calibrate([], EMR, profile)
    assert rates.slot_rate.seconds == pytest.approx(25.0)  # 2 processes: 50 img/s, 25 per core
    assert "AMD EPYC" in rates.slot_rate.basis and "no Spark" in rates.slot_rate.basis
    assert "not the nodes' CPU" in rates.slot_rate.basis
    plan = planning.predict(Work(1000, 1000, 0, "test"), EMR, rates)
    assert plan["phases"]["featurize"]["seconds"] == pytest.approx(1000 / (25 * 8), abs=0.1)
    # Spark's own part of the step is not in an engine-only rate: taken as 0, and said.
    assert plan["assumed"][0].startswith("featurize: the step's fixed part") and not plan["complete"]
    # Locally the profile counts only on the CPU it was measured on.
    here = Machine("local", "local: other x 2", 1, 2, 2, cpu="Other CPU")
    assert planning.calibrate([], here, profile).slot_rate is None
    there = Machine("local", "local: AMD EPYC x 2", 1, 2, 2, cpu="AMD EPYC")
    assert planning.calibrate([], there, profile).slot_rate.seconds == pytest.approx(25.0)


def test_the_workers_busy_time_separates_the_rate_from_the_start_up():
    local = Machine("local", "local: cpu x 2", 1, 2, 2, cpu="cpu")
    # 600 images: a 7 s job of which the workers were busy 6 s in all (3 s each); 15 s in the step.
    rec = record("r", local, inputs=600, now=600,
                 phases={"featurize": 15.0, "featurize_job": 7.0, "featurize_busy": 6.0})  # fmt: skip
    rates = planning.calibrate([rec], local)
    assert rates.slot_rate.seconds == pytest.approx(100.0)  # 600 images in 6 worker-seconds
    assert rates.featurize_fixed.seconds == pytest.approx(12.0)  # 15 s less 3 s of each worker's work
    plan = planning.predict(Work(8000, 8000, 0, "test"), local, rates)
    assert plan["phases"]["featurize"]["seconds"] == pytest.approx(12 + 8000 / 200)


def test_a_run_whose_images_are_all_cached_is_predicted_its_fixed_part_only():
    rates = planning.calibrate(emr_history(), EMR)
    plan = planning.predict(Work(2000, 0, 2000, "test"), EMR, rates)
    assert plan["phases"]["featurize"]["seconds"] == pytest.approx(40.0)


def test_one_size_of_history_gives_the_pca_a_fixed_part_only():
    only = emr_history()[:1]
    rates = planning.calibrate(only, EMR)
    assert rates.pca_fixed.seconds == pytest.approx(90.0) and rates.pca_per_image is None


def test_work_counts_cache_hits_by_content():
    work = planning.count_work(["a", "b", "a", None, "c"], {"a", "c", "z"})
    assert (work.inputs, work.featurize_now, work.from_cache) == (5, 2, 3)
    assert "1 inputs without a SHA-256" in work.basis


@pytest.mark.parametrize(
    ("master", "slots"),
    [("local[2,3]", 2), ("local[1]", 1), ("local", 1), ("local[*]", None), ("yarn", None)],
)
def test_local_slots_come_from_the_master(master, slots, monkeypatch):
    monkeypatch.setattr(planning.os, "cpu_count", lambda: 8)
    machine = planning.local_machine(master)
    assert machine.slots == (slots or 8) and machine.nodes == 1 and machine.key.endswith("x 8")


# sizing=auto ---------------------------------------------------------------------------------------

WORK = Work(inputs=40000, featurize_now=40000, from_cache=0, basis="test")


def auto(target_minutes: float, max_nodes: int = 10, quota: int | None = 64, spot: bool = False) -> dict:
    limits = SizingLimits(target_minutes * 60, max_nodes, {"on-demand": quota, "spot": quota}, spot)
    return planning.choose_nodes(WORK, EMR, planning.calibrate(emr_history(), EMR), limits, price=0.262)


def test_auto_picks_the_fewest_nodes_that_meet_the_target():
    # Fixed 450 + 40 + 70 + 330 + 120 = 1,010 s; featurize 40,000 / (8 n) s: n=4 -> 2,260 s, n=3 -> 2,677 s.
    chosen = auto(target_minutes=38)
    assert chosen["met"] and chosen["nodes"] == 4
    assert "the cheapest predicted of those meeting the target of 38 min" in chosen["reason"]
    seconds = {c["nodes"]: c["seconds"] for c in chosen["candidates"]}
    assert seconds[4] <= 38 * 60 < seconds[3]
    # Of the sizes meeting it, the cheapest (every node pays for the fixed parts too).
    meeting = [c for c in chosen["candidates"] if c["seconds"] <= 38 * 60]
    assert chosen["nodes"] == min(meeting, key=lambda c: c["cost"])["nodes"]


def test_auto_stays_within_the_maximum_and_says_the_target_is_not_met():
    chosen = auto(target_minutes=20, max_nodes=3)
    assert not chosen["met"] and chosen["nodes"] == 3
    assert "target of 20 min not met" in chosen["reason"] and "maximum of 3" in chosen["reason"]


def test_auto_stays_within_the_vcpu_quota_left():
    # 4 vCPUs per node, the primary too: 24 vCPUs left fit 5 nodes (24), not 6 (28).
    chosen = auto(target_minutes=10, quota=24)
    assert chosen["nodes"] == 5 and not chosen["met"]
    assert "vCPU quota left (28 on-demand vCPUs needed, 24 left)" in chosen["reason"]
    assert [c["fits_quota"] for c in chosen["candidates"]][4:6] == [True, False]


def test_auto_counts_spot_core_nodes_against_the_spot_quota():
    limits = SizingLimits(600, 10, {"on-demand": 4, "spot": 8}, core_spot=True)
    chosen = planning.choose_nodes(WORK, EMR, planning.calibrate(emr_history(), EMR), limits, None)
    assert chosen["nodes"] == 2  # 2 x 4 spot vCPUs; the primary's 4 on-demand


def test_auto_refuses_when_not_one_node_fits_or_nothing_measured_a_rate():
    with pytest.raises(ValueError, match="not even 1 core node fits"):
        auto(target_minutes=60, quota=4)
    limits = SizingLimits(600, 4, {"on-demand": None})
    with pytest.raises(ValueError, match="needs a measured featurize rate"):
        planning.choose_nodes(WORK, EMR, planning.calibrate([], EMR), limits, None)
    # Nothing to featurize: no rate needed, and one node does it; what is unknown is said.
    cached = Work(500, 0, 500, "test")
    chosen = planning.choose_nodes(cached, EMR, planning.calibrate([], EMR), limits, None)
    assert chosen["nodes"] == 1 and "a lower bound, without between_steps, pca, finish" in chosen["reason"]


def test_one_history_record_per_attempt(tmp_path):
    from orchard.storage.lake import Lake

    lake, uri = Lake.local(), f"file://{tmp_path}"
    first = {**emr_history()[0], "run_id": "manual_1", "finished_at": "2026-12-07T01:00:00+00:00"}
    other = {**first, "run_id": "x-manual_1"}  # a run whose name ends like the first's
    planning.write_history(lake, uri, first)
    planning.write_history(lake, uri, other)
    planning.write_history(
        lake, uri, {**first, "finished_at": "2026-12-07T02:00:00+00:00"}
    )  # the report again
    names = sorted(p.name for p in (tmp_path / "history").iterdir())
    assert names == ["20261207T010000Z-x-manual_1-attempt-1.json", "20261207T020000Z-manual_1-attempt-1.json"]
    assert [r["run_id"] for r in planning.read_history(lake, uri)] == ["manual_1", "x-manual_1"]


def test_a_history_record_feeds_the_next_plan():
    local = Machine("local", "local: cpu x 2", 1, 2, 2, cpu="cpu")
    plan = planning.make_plan(Work(600, 600, 0, "test"), local, planning.calibrate([], local))
    featurize = {"seconds": 40.0, "phases_seconds": {"session": 5.0, "featurize": 30.0}}
    actual = planning.local_actuals(featurize, {"seconds": 8.0, "session_seconds": 4.0})
    assert actual == {"featurize": 45.0, "featurize_job": 30.0, "featurize_busy": None, "pca": 12.0}
    manifest = {"run_id": "r", "run": {"attempt": 2},
                "counts": {"inputs": 600, "featurized_now": 590, "quarantined": 10}}  # fmt: skip
    rec = planning.history_record(plan, manifest, actual)
    rates = planning.calibrate([rec], local)
    assert rates.slot_rate.seconds == pytest.approx(600 / (30 * 2))
    assert rates.featurize_fixed.seconds == pytest.approx(15.0)
    later = planning.make_plan(Work(1200, 1200, 0, "test"), local, rates)
    assert later["phases"]["featurize"]["seconds"] == pytest.approx(15 + 60)
    comparison = planning.compare(later, {"featurize": 60.0, "pca": 15.0})
    assert comparison[0] == {"phase": "featurize", "predicted": 75.0, "actual": 60.0, "ratio": 1.25}
    assert comparison[-1]["phase"] == "total" and comparison[-1]["ratio"] == pytest.approx(87 / 75, abs=0.01)
