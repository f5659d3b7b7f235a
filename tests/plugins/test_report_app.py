"""The "Orchard report" tab: Airflow's api-server app with the plugin mounted, Airflow's auth active.

Requests go through Airflow's own app (`airflow.api_fastapi.app.create_app`), which loads the plugin
from plugins/ as the api-server does, with the simple auth manager and JWTs it signs itself.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from collections.abc import Iterator

import pytest

from orchard.layout import LakeLayout
from orchard.report import app as report_app
from tests.plugins.test_report import MANIFEST, tables

DAG = "fruits_pipeline"
RUN = "manual__2026-11-21T10:00:00+00:00"
RUNNING = "manual__2026-11-21T11:00:00+00:00"
FAILED = "manual__2026-11-21T12:00:00+00:00"
OLD = "scheduled__2026-11-20T00:00:00+00:00"
OTHER_DAG_RUN = ("orchard_source_watch", "scheduled__2026-11-21T10:00:00+00:00")
SECRET = b"lake secret: never served"


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory) -> Iterator[dict]:
    """Airflow's api-server app, four DAG runs in the DB, and a lake with one run's report."""
    from airflow.api_fastapi.app import create_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from fastapi.testclient import TestClient
    from sqlalchemy import delete

    from orchard.report.render import build_report

    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(64))
    lake = tmp_path_factory.mktemp("lake")
    uri = f"file://{lake}"
    summary, pca, quarantine = tables()
    files = build_report({**MANIFEST, "run_id": RUN}, summary, pca, quarantine)
    run = LakeLayout(uri).run("sample", RUN)
    folder = run.report_folder[len("file://") :]
    os.makedirs(folder)
    for name, data in files.items():
        with open(f"{folder}/{name}", "wb") as out:
            out.write(data)
    # Beside the report and above it: files a path trick would try to reach.
    with open(run.manifest[len("file://") :], "w", encoding="utf-8") as out:
        json.dump({"run": run.to_xcom(), "note": SECRET.decode()}, out)
    with open(f"{lake}/secret.txt", "wb") as out:
        out.write(SECRET)

    runs = [(DAG, RUN, "success"), (DAG, RUNNING, "running"), (DAG, FAILED, "failed"), (DAG, OLD, "success")]
    runs.append((*OTHER_DAG_RUN, "success"))
    with create_session() as session:
        for i, (dag_id, run_id, state) in enumerate(runs):
            session.add(
                DagRun(
                    dag_id=dag_id,
                    run_id=run_id,
                    run_type="manual",
                    state=state,
                    logical_date=datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
                    + datetime.timedelta(days=i),
                )
            )
    app = create_app("core")
    auth = app.state.auth_manager

    def token(role: str | None) -> str:
        return auth.generate_jwt(SimpleAuthManagerUser(username=f"user-{role}", role=role))

    yield {"app": app, "client": TestClient(app), "token": token, "lake": uri, "files": files}
    with create_session() as session:  # the session's DB is shared with the other tests
        for dag_id, run_id, _ in runs:
            session.execute(delete(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))


@pytest.fixture
def lake_reads(api, monkeypatch) -> list[tuple[str, str]]:
    """The lake set for the app, and every read_report_file call the requests make."""
    monkeypatch.setenv("ORCHARD_LAKE", api["lake"])
    calls = []
    real = report_app.read_report_file

    def spy(run_id: str, name: str) -> bytes:
        calls.append((run_id, name))
        return real(run_id, name)

    monkeypatch.setattr(report_app, "read_report_file", spy)
    return calls


def get(api, path: str, role: str | None = "viewer", how: str = "cookie"):
    """A GET as the UI's iframe makes it (the session cookie) or as an API client (a bearer token)."""
    client = api["client"]
    client.cookies.clear()
    headers = {}
    if role != "anonymous":
        if how == "cookie":
            client.cookies.set("_token", api["token"](role))
        else:
            headers["Authorization"] = f"Bearer {api['token'](role)}"
    return client.get(path, headers=headers)


def test_the_plugin_adds_a_tab_to_the_dag_run_page():
    from airflow import plugins_manager

    views, _ = plugins_manager._get_ui_plugins()
    (view,) = [v for v in views if v["name"] == "Orchard report"]
    assert view["destination"] == "dag_run"
    assert view["href"] == "/orchard/runs/{DAG_ID}/{RUN_ID}/"


def test_a_reader_of_the_dag_gets_the_report_and_its_plots(api, lake_reads):
    base = f"/orchard/runs/{DAG}/{RUN}"
    for how in ("cookie", "bearer"):
        page = get(api, f"{base}/", how=how)
        assert page.status_code == 200, page.text
        assert page.content == api["files"]["report.html"]
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("scree.png", "pc_scatter.png", "report.html"):
        response = get(api, f"{base}/{name}")
        assert response.status_code == 200
        assert response.content == api["files"][name]
    assert get(api, f"{base}/scree.png").headers["content-type"] == "image/png"
    # The UI encodes the run id in the tab's address.
    assert get(api, f"/orchard/runs/{DAG}/{RUN.replace(':', '%3A').replace('+', '%2B')}/").status_code == 200
    assert set(lake_reads) == {(RUN, "report.html"), (RUN, "scree.png"), (RUN, "pc_scatter.png")}


@pytest.mark.parametrize("name", ["", "scree.png"])
def test_no_login_no_report(api, lake_reads, name):
    path = f"/orchard/runs/{DAG}/{RUN}/{name}"
    assert get(api, path, role="anonymous").status_code == 401
    assert get(api, path, role=None).status_code == 403  # logged in, but may not read DAGs
    client = api["client"]
    client.cookies.clear()
    forged = client.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code in {401, 403}
    assert lake_reads == []


@pytest.mark.parametrize(
    "path",
    [
        f"/orchard/runs/{DAG}/%2e%2e/report.html",
        f"/orchard/runs/{DAG}/%2E%2E/",
        f"/orchard/runs/{DAG}/..%2F..%2Fsecret.txt/",
        f"/orchard/runs/{DAG}/{RUN}/..%2Fmanifest.json",
        f"/orchard/runs/{DAG}/{RUN}/%2e%2e%2fmanifest.json",
        f"/orchard/runs/{DAG}/{RUN}/manifest.json",
        f"/orchard/runs/{DAG}/{RUN}/report.HTML",
        f"/orchard/runs/{DAG}/{RUN}/..",
        f"/orchard/runs/{DAG}/{RUN}/%2e%2e",
        f"/orchard/runs/{DAG}/a..b/report.html",
        f"/orchard/runs/{DAG}/{RUN}%2F..%2F..%2Fsecret.txt/report.html",
        f"/orchard/runs/{DAG}/run%20with%20spaces/",
        f"/orchard/runs/{DAG}/%00/report.html",
        f"/orchard/runs/{DAG}/{'x' * 300}/",
        f"/orchard/runs/{OTHER_DAG_RUN[0]}/{OTHER_DAG_RUN[1]}/",
        f"/orchard/runs/../{DAG}/{RUN}/report.html",
        f"/orchard/runs/{DAG}/manual__2026-01-01T00:00:00+00:00/",  # not a run in the DB
    ],
)
def test_path_tricks_are_refused_before_the_lake_is_read(api, lake_reads, path):
    response = get(api, path, role="admin")
    assert response.status_code in {400, 404}, (response.status_code, response.text[:300])
    assert SECRET not in response.content
    assert lake_reads == []


@pytest.mark.parametrize(
    ("run_id", "says"),
    [
        (RUNNING, "This run is running: its last task, report, writes the report."),
        (FAILED, "This run failed before it wrote a report."),
        (OLD, "This run (success) never produced a report"),
    ],
)
def test_a_run_without_a_report_says_why(api, lake_reads, run_id, says):
    response = get(api, f"/orchard/runs/{DAG}/{run_id}/")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert says in response.text
    assert lake_reads == [(run_id, "report.html")]
    # A plot of such a run is simply not there.
    assert get(api, f"/orchard/runs/{DAG}/{run_id}/scree.png").status_code == 404


def test_messages_are_escaped():
    page = report_app._message(404, "<b>title</b>", "<script>alert(1)</script>", run_id="<i>run</i>")
    body = page.body.decode()
    assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;b&gt;title&lt;/b&gt;" in body and "&lt;i&gt;run&lt;/i&gt;" in body


@pytest.mark.parametrize(
    ("dag_id", "run_id", "name", "status"),
    [
        (DAG, "..", "report.html", 400),
        (DAG, "a..b", "report.html", 400),
        (DAG, "run/../x", "report.html", 400),
        (DAG, "run id", "report.html", 400),
        (DAG, "", "report.html", 400),
        (DAG, "x" * 251, "report.html", 400),
        (DAG, RUN, "../manifest.json", 404),
        (DAG, RUN, "manifest.json", 404),
        ("other_dag", RUN, "report.html", 404),
    ],
)
def test_requests_are_checked_before_the_db_or_the_lake(dag_id, run_id, name, status):
    refused = report_app._refusal(dag_id, run_id, name)
    assert refused is not None and refused.status_code == status
    assert report_app._refusal(DAG, RUN, "scree.png") is None


def test_loading_the_plugin_imports_no_web_stack_and_no_orchard_module_as_a_plugin():
    """Task processes load plugins too: the app is built only when the api-server asks for it."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from airflow import plugins_manager\n"
        "plugins, errors = plugins_manager._get_plugins()\n"
        "print(json.dumps({'plugins': [p.name for p in plugins], 'errors': errors,\n"
        "  'loaded': sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "    {'fastapi', 'orchard', 'config', 'report', 'report_app', 'emr', 's3'})}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plugins"] == ["orchard"] and result["errors"] == {}
    # Not FastAPI, not the report app, and no module of the orchard package imported by file name.
    assert result["loaded"] == []


def test_read_report_file_from_an_s3_lake_through_the_airflow_connection(moto_server):
    from tests.emr_moto import BUCKET, LAKE

    run = LakeLayout(LAKE).run("sample", RUN)
    key, manifest_key = (uri[len(f"s3://{BUCKET}/") :] for uri in (run.report, run.manifest))
    moto_server.put_object(Bucket=BUCKET, Key=key, Body=b"<p>report</p>", ServerSideEncryption="AES256")
    manifest = json.dumps({"run": run.to_xcom()}).encode()
    moto_server.put_object(Bucket=BUCKET, Key=manifest_key, Body=manifest, ServerSideEncryption="AES256")
    assert report_app.read_report_file(RUN, "report.html") == b"<p>report</p>"
    # A second attempt (the run cleared) that has its manifest but no report yet: still the first's.
    again = LakeLayout(LAKE).run("sample", RUN, attempt=2)
    put = {"Bucket": BUCKET, "ServerSideEncryption": "AES256"}
    moto_server.put_object(
        Key=again.manifest[len(f"s3://{BUCKET}/") :],
        Body=json.dumps({"run": again.to_xcom()}).encode(),
        **put,
    )
    assert report_app.read_report_file(RUN, "report.html") == b"<p>report</p>"
    moto_server.put_object(Key=again.report[len(f"s3://{BUCKET}/") :], Body=b"<p>again</p>", **put)
    assert report_app.read_report_file(RUN, "report.html") == b"<p>again</p>"
    with pytest.raises(FileNotFoundError):
        report_app.read_report_file(RUN, "scree.png")
    with pytest.raises(FileNotFoundError):
        report_app.read_report_file(RUNNING, "report.html")
