"""Telling someone that a run failed: fruits_pipeline's `on_failure_callback`.

`failure_callbacks(settings)` is the DAG's `on_failure_callback`: empty unless configured, else one
`RunFailureNotice`, which gathers what a reader needs (the run, its failed tasks, what became of
the EMR cluster) and hands it to the providers' own notifiers: `SmtpNotifier` (e-mail, through
the Airflow SMTP connection) and `HttpNotifier` (a POST of `{"text": ...}` to the Airflow HTTP
connection's URL, the body a Slack or Teams incoming webhook takes). Nothing is sent when neither
`ORCHARD_NOTIFY_EMAIL` nor `ORCHARD_NOTIFY_WEBHOOK_CONN_ID` is set.

Airflow runs a DAG's callbacks in the DAG processor (which reaches the run's task states through
the API server, as tasks do), or, under `airflow dags test`, in the process that holds the
metadata database: `_read_run` reads whichever is there.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchard.config import Settings
from orchard.layout import RunLayout

log = logging.getLogger(__name__)

FACTS_KEY = "orchard_failure"
CLUSTER_TASK = "create_cluster"
UPLOAD_TASK = "upload_images"
# The XComs a message uses: the cluster's id, and the attempt the upload started.
WANTED = ((CLUSTER_TASK, "return_value"), (UPLOAD_TASK, "run"))
TERMINATE_TASK = "terminate_cluster"
FAILED = "failed"


@dataclass(frozen=True)
class RunFailure:
    """What a message about a failed run says."""

    dag_id: str
    run_id: str
    reason: str
    target: str
    states: Mapping[str, str | None]
    cluster_id: str | None = None
    idle_timeout: int = 0
    lake_root: str | None = None

    @property
    def failed_tasks(self) -> list[str]:
        """Tasks that failed themselves (not those that did not run because of them)."""
        return sorted(task for task, state in self.states.items() if state == FAILED)

    @property
    def not_run(self) -> list[str]:
        """Tasks that never ran: upstream failed, skipped, or left without a state."""
        return sorted(
            task
            for task, state in self.states.items()
            if state in {None, "upstream_failed", "skipped", "removed"}
        )

    @property
    def cluster_fate(self) -> str:
        """One sentence: was a cluster started, and did the run end it."""
        if self.target != "emr":
            return "No cluster: the steps ran with local Spark."
        created, terminated = self.states.get(CLUSTER_TASK), self.states.get(TERMINATE_TASK)
        if not self.cluster_id:
            return f"No EMR cluster was started ({CLUSTER_TASK}: {created or 'did not run'})."
        if terminated == "success":
            return f"EMR cluster {self.cluster_id} was terminated by {TERMINATE_TASK}."
        backstop = (
            f"it terminates itself after {self.idle_timeout} s idle (its auto-termination policy)"
            if self.idle_timeout
            else "it has no idle timeout"
        )
        return (
            f"EMR cluster {self.cluster_id} may still be running: {TERMINATE_TASK} "
            f"{terminated or 'did not run'}; {backstop}. Check it in the EMR console."
        )

    @property
    def subject(self) -> str:
        return f"Orchard: {self.dag_id} run {self.run_id} failed"

    def lines(self) -> list[str]:
        """The message, one statement per line."""
        lines = [
            f"Run: {self.dag_id} / {self.run_id}",
            f"Why Airflow ended it: {self.reason}",
            "Failed tasks: " + (", ".join(self.failed_tasks) or "none (the run was ended from outside)"),
        ]
        if self.not_run:
            lines.append("Did not run: " + ", ".join(self.not_run))
        lines.append("Cluster: " + self.cluster_fate)
        if self.lake_root:
            lines.append(f"The attempt's files: {self.lake_root}")
        return lines

    @property
    def text(self) -> str:
        return self.subject + "\n\n" + "\n".join(self.lines())

    @property
    def html(self) -> str:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines())
        return f"<p>{html.escape(self.subject)}</p><ul>{items}</ul>"


def _read_run(dag_id: str, run_id: str) -> tuple[dict[str, str | None], dict[tuple[str, str], Any]]:
    """(task id -> state, (task id, key) -> value of the WANTED XComs): wherever the callback runs."""
    from airflow.sdk.execution_time import task_runner  # ruff: ignore[import-outside-top-level] - Airflow's task SDK, at callback time only

    if getattr(task_runner, "SUPERVISOR_COMMS", None) is not None:
        # The DAG processor: its supervisor forwards GetTaskStates and GetXCom to the API server.
        from airflow.sdk.execution_time.xcom import XCom  # ruff: ignore[import-outside-top-level] - as above

        states = task_runner.RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id])
        by_task = dict(states.get(run_id, {}))
        values = {
            (task, key): XCom.get_one(key=key, dag_id=dag_id, task_id=task, run_id=run_id)
            for task, key in WANTED
            if task in by_task
        }
        return by_task, values
    # `airflow dags test`: the callback runs beside the metadata database, without a supervisor.
    from airflow.models.taskinstance import TaskInstance  # ruff: ignore[import-outside-top-level] - as above
    from airflow.models.xcom import XComModel  # ruff: ignore[import-outside-top-level] - as above
    from airflow.utils.session import create_session  # ruff: ignore[import-outside-top-level] - as above
    from sqlalchemy import select  # ruff: ignore[import-outside-top-level] - as above

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
            )
        )
        by_task = {task: None if state is None else str(state) for task, state in rows}
        stored = session.execute(
            select(XComModel.task_id, XComModel.key, XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id.in_([task for task, _ in WANTED]),
            )
        )
        values = {
            (task, key): json.loads(value) if isinstance(value, str) else value
            for task, key, value in stored
            if (task, key) in WANTED
        }
    return by_task, values


def _field(name: str) -> str:
    """A notifier field that renders to the RunFailure's attribute `name`."""
    return "{{ " + FACTS_KEY + "." + name + " }}"


class RunFailureNotice:
    """A DAG `on_failure_callback`: the run's failure, sent through each configured provider notifier."""

    def __init__(
        self,
        settings: Settings,
        read_run: Callable[[str, str], tuple[dict[str, str | None], dict[tuple[str, str], Any]]] = _read_run,
    ) -> None:
        self.settings = settings
        self.read_run = read_run
        self.__name__ = "orchard_failure_notice"  # Airflow logs a callback by its __name__

    def failure(self, context: Mapping[str, Any]) -> RunFailure:
        """The facts of the failed run of `context`."""
        dag = context.get("dag")
        dag_id = str(getattr(dag, "dag_id", "") or context.get("dag_id", ""))
        run_id = str(context["run_id"])
        states, values = self.read_run(dag_id, run_id)
        cluster = values.get((CLUSTER_TASK, "return_value"))
        run = values.get((UPLOAD_TASK, "run"))
        return RunFailure(
            dag_id=dag_id,
            run_id=run_id,
            reason=str(context.get("reason") or "failed"),
            target=self.settings.target,
            states=states,
            cluster_id=str(cluster) if cluster else None,
            idle_timeout=self.settings.emr_idle_timeout,
            lake_root=RunLayout.from_xcom(run).root if isinstance(run, Mapping) else None,
        )

    def notifiers(self) -> list[Any]:
        """New provider notifiers for one message (a notifier renders its fields in place, once)."""
        s = self.settings
        made: list[Any] = []
        if s.notify_email:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier  # ruff: ignore[import-outside-top-level] - at callback time only

            made.append(
                SmtpNotifier(
                    to=list(s.notify_email),
                    from_email=s.notify_from,
                    smtp_conn_id=s.notify_smtp_conn_id,
                    subject=_field("subject"),
                    html_content=_field("html"),
                )
            )
        if s.notify_webhook_conn_id:
            from airflow.providers.http.notifications.http import HttpNotifier  # ruff: ignore[import-outside-top-level] - at callback time only

            made.append(
                HttpNotifier(
                    http_conn_id=s.notify_webhook_conn_id,
                    method="POST",
                    json={"text": _field("text")},
                )
            )
        return made

    def __call__(self, context: Mapping[str, Any]) -> None:
        failure = self.failure(context)
        log.info("run %s failed; notifying: %s", failure.run_id, "; ".join(failure.lines()))
        enriched = {**context, FACTS_KEY: failure}
        if not hasattr(enriched.get("dag"), "get_template_env"):
            # `airflow dags test` hands DAG callbacks the scheduler's serialized DAG, which has no
            # template environment: the notifiers then render with Airflow's default one.
            enriched.pop("dag", None)
        errors = []
        for notifier in self.notifiers():
            try:
                notifier(enriched)
            except Exception as exc:  # one channel down must not silence the others
                errors.append(f"{type(notifier).__name__}: {exc}")
        if errors:
            raise RuntimeError("notifications failed: " + "; ".join(errors))


def failure_callbacks(settings: Settings) -> list[Callable[[Mapping[str, Any]], None]]:
    """fruits_pipeline's on_failure_callback: a notice when a channel is configured, else nothing."""
    if settings.notify_email or settings.notify_webhook_conn_id:
        return [RunFailureNotice(settings)]
    return []
