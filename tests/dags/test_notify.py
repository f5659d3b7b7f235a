"""Failure notifications: a failed fruits_pipeline run sends one message through the providers' own
notifiers to real servers on loopback (an SMTP server, aiosmtpd; an HTTP server standing in for a
Slack webhook), and the message names the run, its failed tasks and the cluster's fate."""

from __future__ import annotations

import json
import threading
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchard.config import Settings
from orchard.tasks.notify import RunFailure, RunFailureNotice, failure_callbacks
from tests.conftest import ROOT, mail_body


@pytest.fixture
def webhook_server():
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            received.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def _body(message: Message) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    return "".join(
        p.get_payload(decode=True).decode()
        for p in parts
        if p.get_content_type() in {"text/html", "text/plain"}
    )


@pytest.mark.e2e
@pytest.mark.backs("a failed run notifies by e-mail and webhook")
def test_a_failed_run_sends_one_message_to_each_channel(
    airflow_db, tmp_path, monkeypatch, smtp_server, webhook_server
):
    from airflow.dag_processing.dagbag import DagBag

    smtp_port, inbox = smtp_server
    hook_port, posts = webhook_server
    monkeypatch.setenv("ORCHARD_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("ORCHARD_NOTIFY_EMAIL", "data-team@example.org, oncall@example.org")
    monkeypatch.setenv("ORCHARD_NOTIFY_FROM", "orchard@example.org")
    monkeypatch.setenv("ORCHARD_NOTIFY_WEBHOOK_CONN_ID", "orchard_webhook")
    extra = json.dumps({"disable_ssl": True, "disable_tls": True})
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port, "extra": extra}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_ORCHARD_WEBHOOK",
        json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{hook_port}/services/T0/B0/secret"}),
    )
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    dag = bag.dags["fruits_pipeline"]

    run = dag.test(run_conf={"source": str(tmp_path / "no such folder"), "weights": "random"})

    assert run.state == "failed"
    assert len(inbox.messages) == 1
    sender, recipients, message = inbox.messages[0]
    assert sender == "orchard@example.org"
    assert sorted(recipients) == ["data-team@example.org", "oncall@example.org"]
    assert message["Subject"] == f"Orchard: fruits_pipeline run {run.run_id} failed"
    body = mail_body(message)
    assert run.run_id in body
    assert "Failed tasks: upload_images" in body
    assert "convert_model" in body and "featurize" in body  # did not run
    assert "No cluster: the steps ran with local Spark." in body
    assert len(posts) == 1
    assert posts[0]["path"] == "/services/T0/B0/secret"
    text = posts[0]["body"]["text"]
    assert text.startswith(f"Orchard: fruits_pipeline run {run.run_id} failed")
    assert "Failed tasks: upload_images" in text


def test_no_channel_no_callback():
    assert failure_callbacks(Settings.from_env({})) == []
    assert len(failure_callbacks(Settings.from_env({"ORCHARD_NOTIFY_WEBHOOK_CONN_ID": "hook"}))) == 1


def test_addresses_are_checked():
    with pytest.raises(ValueError, match=r"ORCHARD_NOTIFY_EMAIL.*not an e-mail address: oncall"):
        Settings.from_env({"ORCHARD_NOTIFY_EMAIL": "a@example.org,oncall"})


EMR_STATES = {"check_aws": "success", "create_cluster": "success", "wait_featurize": "failed"}


@pytest.mark.parametrize(
    ("states", "cluster", "expected"),
    [
        (
            {**EMR_STATES, "terminate_cluster": "success"},
            "j-1",
            "EMR cluster j-1 was terminated by terminate_cluster.",
        ),
        (
            {**EMR_STATES, "terminate_cluster": "failed"},
            "j-1",
            "EMR cluster j-1 may still be running: terminate_cluster failed; it terminates itself after "
            "1800 s idle (its auto-termination policy). Check it in the EMR console.",
        ),
        (
            {**EMR_STATES, "terminate_cluster": None},
            "j-1",
            "EMR cluster j-1 may still be running: terminate_cluster did not run; it terminates itself",
        ),
        (
            {"check_aws": "failed", "create_cluster": "upstream_failed"},
            None,
            "No EMR cluster was started (create_cluster: upstream_failed).",
        ),
    ],
)
def test_the_cluster_fate_on_emr(states, cluster, expected):
    failure = RunFailure("fruits_pipeline", "r1", "task_failure", "emr", states, cluster, idle_timeout=1800)
    assert failure.cluster_fate.startswith(expected)


def test_the_notice_reads_the_cluster_and_attempt_from_xcom():
    settings = Settings.from_env(
        {"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://bucket/lake", "ORCHARD_NOTIFY_EMAIL": "a@b.org"}
    )
    run = {"lake": "s3://bucket/lake", "dataset": "fruits", "run_id": "r1", "attempt": 2}

    def read_run(dag_id, run_id):
        assert (dag_id, run_id) == ("fruits_pipeline", "r1")
        return (
            {**EMR_STATES, "terminate_cluster": "success"},
            {("create_cluster", "return_value"): "j-9", ("upload_images", "run"): run},
        )

    class Dag:
        dag_id = "fruits_pipeline"

    failure = RunFailureNotice(settings, read_run).failure(
        {"dag": Dag(), "run_id": "r1", "reason": "task_failure"}
    )
    assert failure.failed_tasks == ["wait_featurize"]
    assert "EMR cluster j-9 was terminated" in failure.text
    assert "s3://bucket/lake/runs/r1/attempt-2" in failure.text
