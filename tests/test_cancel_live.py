"""A cancelled emr run, live: Airflow's four services (orchard.dev.ui, as `make ui` starts them) against moto.

The run is triggered through the REST API and marked failed through it (PATCH of the run's state,
what the UI's "Mark as failed" sends) while `wait_featurize` is deferred to the triggerer. moto
never runs a step by itself (no stand-in here), so the featurize step stays RUNNING and the sensor
stays deferred until the run is cancelled. The teardown `terminate_cluster` must still run, and the
cluster must end TERMINATED in moto: without the teardown it would stay WAITING (the spec keeps the
cluster alive with no steps), and this test would fail.

The run must also end failed. Airflow keeps a run marked failed open while a teardown is to run,
then gives it the state of its last tasks, which the cancel skipped: before the DAG's
`check_outcome` teardown, this very run ended *success*.

And someone is told: the DAG's failure callback runs where Airflow runs it in production (the
dag-processor, which reads the task states and the cluster id through the API server) and sends one
e-mail to a real SMTP server on loopback, naming the run, its failed tasks and the terminated cluster.
"""

from __future__ import annotations

import json
import time

import pytest

from orchard.dev.ui import Airflow, airflow_services, wait_for
from orchard.samples import generate
from tests.conftest import mail_body
from tests.emr_moto import SECRETS, clusters

pytestmark = pytest.mark.e2e

DAG_ID = "fruits_pipeline"
ALIVE = {"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"}
STOPPED = {"failed", "upstream_failed", "removed"}


def task_states(airflow: Airflow, run_id: str) -> dict[str, str | None]:
    answer = airflow.api("GET", f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    return {ti["task_id"]: ti["state"] for ti in answer["task_instances"]}


def task_log_tails(airflow: Airflow, run_id: str, task_ids, chars: int = 3000) -> str:
    """The end of the given tasks' log files (what the UI shows), for a failure message."""
    parts = []
    for task_id in task_ids:
        for log in (airflow.home / "logs").rglob(f"task_id={task_id}/attempt=*.log"):
            if f"run_id={run_id}" in str(log):
                parts.append(f"--- {task_id}: {log.name} ---\n{log.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def notify_by_mail(port: int) -> dict[str, str]:
    """The settings and SMTP connection that send the failure e-mail to the server on loopback."""
    smtp = {"conn_type": "smtp", "host": "127.0.0.1", "port": port}
    smtp["extra"] = json.dumps({"disable_ssl": True, "disable_tls": True})
    return {
        "ORCHARD_NOTIFY_EMAIL": "oncall@example.org",
        "ORCHARD_NOTIFY_FROM": "orchard@example.org",
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp),
    }


def cancelled_cleanly(after: dict[str, str | None], run_state: str, cluster_state: str) -> None:
    """The teardown terminated the cluster, the verdict failed the run, nothing after the cancel ran."""
    assert after["terminate_cluster"] == "success", after
    assert cluster_state == "TERMINATED"
    assert run_state == "failed"
    # The cancel failed the deferred sensor and skipped everything after it but the teardowns; the
    # verdict failed the run.
    assert after["wait_featurize"] == "failed", after
    assert after["check_outcome"] == "failed", after
    for task_id in ("add_pca_step", "wait_pca", "export_csv", "report"):
        assert after[task_id] == "skipped", after
    for task_id in ("check_aws", "stage_artifacts", "upload_images", "convert_model", "plan",
                    "create_cluster", "add_featurize_step"):  # fmt: skip
        assert after[task_id] == "success", after


def one_failure_mail(inbox, run_id: str, cluster_id: str) -> None:
    """One e-mail, naming the run, its failed tasks and the cluster the teardown terminated."""
    (_, recipients, message), *others = inbox.messages
    assert not others and recipients == ["oncall@example.org"]
    assert message["Subject"] == f"Orchard: {DAG_ID} run {run_id} failed"
    body = mail_body(message)
    assert "Failed tasks: check_outcome, wait_featurize" in body, body
    assert f"EMR cluster {cluster_id} was terminated by terminate_cluster." in body, body


@pytest.mark.backs("a cancelled run (marked failed in the UI) while `wait_featurize` is deferred")
def test_marking_the_run_failed_while_the_step_waits_still_terminates_the_cluster(
    moto_server, smtp_server, tmp_path
):
    started = time.monotonic()
    smtp_port, inbox = smtp_server
    source = tmp_path / "images"
    generate(source, per_class=2, seed=1)
    # moto_server put the emr target's settings and the aws_default connection (its endpoint) in
    # this process's environment; the services inherit them.
    env = {"ORCHARD_SCHEDULE": "none", **notify_by_mail(smtp_port)}  # the only run is the test's
    with airflow_services(tmp_path / "airflow", env, start_timeout=120) as airflow:

        def parsed():
            try:
                return airflow.api("GET", f"dags/{DAG_ID}")
            except RuntimeError:  # 404 until the dag-processor has parsed the file
                return None

        dag = wait_for(f"the dag-processor to parse {DAG_ID}", parsed, timeout=60, every=2)
        assert "emr" in [tag["name"] for tag in dag["tags"]]
        assert not dag["is_paused"]
        run = airflow.api(
            "POST",
            f"dags/{DAG_ID}/dagRuns",
            {"logical_date": None, "conf": {"source": str(source), "weights": "random:3"}},
        )
        run_id = run["dag_run_id"]

        def deferred():
            states = task_states(airflow, run_id)
            stopped = {t: s for t, s in states.items() if s in STOPPED}
            if stopped:
                raise AssertionError(
                    f"tasks stopped before wait_featurize deferred: {stopped}\n{states}\n"
                    + task_log_tails(airflow, run_id, stopped)
                )
            return states if states.get("wait_featurize") == "deferred" else None

        try:
            before = wait_for("wait_featurize to be deferred", deferred, timeout=180, every=2)
        except TimeoutError as exc:
            states = task_states(airflow, run_id)
            raise TimeoutError(
                f"{exc}; task states: {states}\n"
                + task_log_tails(airflow, run_id, [t for t, s in states.items() if s])
                + "\n"
                + airflow.log_tails()
            ) from None
        assert before["terminate_cluster"] is None, before  # not yet scheduled: the pipeline is waiting
        (cluster,) = clusters().values()
        assert cluster.state in ALIVE, cluster.state
        assert [(s.name, s.state) for s in cluster.steps] == [("orchard-featurize", "RUNNING")]
        deferred_at = time.monotonic()

        # What a user's "Mark as failed" sends.
        airflow.api("PATCH", f"dags/{DAG_ID}/dagRuns/{run_id}", {"state": "failed"})

        def finished():
            # A run marked failed stays running until its teardowns have run: it ends after them.
            state = airflow.api("GET", f"dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            return (task_states(airflow, run_id), state) if state not in {"queued", "running"} else None

        try:
            after, run_state = wait_for("the run to finish after the cancel", finished, timeout=90)
        except TimeoutError as exc:
            states = task_states(airflow, run_id)
            raise TimeoutError(
                f"{exc}; task states: {states}, cluster {cluster.state}\n"
                + task_log_tails(airflow, run_id, ["wait_featurize", "terminate_cluster"])
                + "\n"
                + airflow.log_tails()
            ) from None
        cancelled_in = time.monotonic() - deferred_at
        # The dag-processor runs the failure callback after the run has ended.
        wait_for("the failure e-mail", lambda: inbox.messages or None, timeout=120, every=2)

    cancelled_cleanly(after, run_state, cluster.state)
    one_failure_mail(inbox, run_id, cluster.id)
    # No credential in any log of the services or the tasks (the triggerer's included).
    logs = list((tmp_path / "airflow").rglob("*.log"))
    assert any("task_id=wait_featurize" in str(log) for log in logs), logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not any(secret in text for secret in SECRETS), log
    print(f"cancelled run cleaned up in {cancelled_in:.1f} s; test {time.monotonic() - started:.1f} s")
