"""The run report in the Airflow UI: a FastAPI app the api-server mounts at /orchard (orchard_plugin.py).

Airflow does not protect plugin endpoints by itself: every route here depends on Airflow's own
security dependency, so only a user allowed to read the DAG's runs gets an answer (401 without a
login, 403 without the permission). A request names a DAG run and one of three files; the run id is
checked against a strict pattern and the metadata DB before anything reaches the lake, and the file
name against a fixed list. The lake is read through one function, `read_report_file`.
"""

from __future__ import annotations

import re
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from fastapi import Depends, FastAPI, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from orchard.config import Settings
from orchard.report.render import templates
from orchard.runs import reported_attempt
from orchard.storage.lake import airflow_lake

DAG_ID = "fruits_pipeline"
# The files a report has, and nothing else is ever read.
FILES = {"report.html": "text/html; charset=utf-8", "scree.png": "image/png", "pc_scatter.png": "image/png"}
# Airflow's default `[scheduler] allowed_run_id_pattern`, bounded; and never a `..`.
RUN_ID = re.compile(r"[A-Za-z0-9_.~:+-]{1,250}")
HEADERS = {
    # The report is one page with inline styles and data: images; it runs no script and loads nothing.
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


def read_report_file(run_id: str, name: str) -> bytes:
    """One file of a run's report, from the lake the pipeline writes to; FileNotFoundError when absent.

    The report of the run's newest attempt that has one (`runs.reported_attempt`), in the folder
    its RunLayout names.
    """
    settings = Settings.from_env()
    lake = airflow_lake(settings)
    run = reported_attempt(lake, settings.lake, run_id)
    if run is None:
        raise FileNotFoundError(f"run {run_id!r} has no report in the lake")
    return lake.read_bytes(f"{run.report_folder}/{name}")


def _message(status: int, title: str, text: str, run_id: str | None = None) -> HTMLResponse:
    page = templates().get_template("report_message.html.j2").render(title=title, text=text, run_id=run_id)
    return HTMLResponse(page, status_code=status, headers=HEADERS)


def _why_no_report(run: DagRun, failed_tasks: list[str]) -> tuple[str, str]:
    """Title and text for a run without a report, from the run's state."""
    state = str(run.state)
    if state in {"queued", "running"}:
        return "Not ready yet", f"This run is {state}: its last task, report, writes the report."
    if state == "failed":
        where = f" (failed: {', '.join(failed_tasks)})" if failed_tasks else ""
        return "No report: the run failed", f"This run failed before it wrote a report{where}."
    return (
        "No report",
        f"This run ({state}) never produced a report: it may predate the report, or its outputs were "
        "removed from the lake.",
    )


def _refusal(dag_id: str, run_id: str, name: str) -> HTMLResponse | None:
    """Why a request is refused before the DB or the lake are asked, or None."""
    if dag_id != DAG_ID:
        return _message(404, "No Orchard report", f"Orchard reports exist for {DAG_ID} runs only.")
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        return _message(400, "Not a run id", "The address does not name a DAG run.")
    if name not in FILES:
        return _message(404, "Not a report file", f"A report has {', '.join(FILES)} only.")
    return None


def create_app() -> FastAPI:
    """The report app: GET /runs/<dag_id>/<run_id>/ (the report page) and .../<file>."""
    app = FastAPI(title="Orchard report", docs_url=None, redoc_url=None, openapi_url=None)
    can_read_runs = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))

    def serve(dag_id: str, run_id: str, name: str, session: Any) -> Response:
        refused = _refusal(dag_id, run_id, name)
        if refused is not None:
            return refused
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return _message(404, "No such run", f"{DAG_ID} has no run with this id.", run_id)
        try:
            data = read_report_file(run_id, name)
        except FileNotFoundError:
            if name != "report.html":
                return _message(404, "No such file", f"This run's report has no {name}.", run_id)
            failed = session.scalars(
                select(TaskInstance.task_id).where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.run_id == run_id,
                    TaskInstance.state.in_(["failed", "upstream_failed"]),
                )
            ).all()
            title, text = _why_no_report(run, sorted(failed))
            return _message(404, title, text, run_id)
        return Response(data, media_type=FILES[name], headers=HEADERS)

    @app.get("/runs/{dag_id}/{run_id}/", dependencies=[can_read_runs], response_class=HTMLResponse)
    def report_page(dag_id: str, run_id: str, session: SessionDep) -> Response:
        """The run's report page, or why there is none."""
        return serve(dag_id, run_id, "report.html", session)

    @app.get("/runs/{dag_id}/{run_id}/{name}", dependencies=[can_read_runs])
    def report_file(dag_id: str, run_id: str, name: str, session: SessionDep) -> Response:
        """One file of the run's report: report.html, scree.png or pc_scatter.png."""
        return serve(dag_id, run_id, name, session)

    return app
