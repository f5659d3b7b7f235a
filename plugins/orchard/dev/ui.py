"""Airflow's UI without Docker: its four services (api-server, scheduler, dag-processor, triggerer) on
SQLite with the LocalExecutor, each in its own process group, and a REST client for them.

    python -m orchard.dev.ui      # make ui: the embedded default (.airflow/, the lake folder, local Spark)

`make ui` runs this module's main; the browser test (tests/browser) and the live cancel test
(tests/test_cancel_live.py) start the same services through `airflow_services`, on a fresh home.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import requests

from orchard.config import PROJECT_ROOT as ROOT

T = TypeVar("T")
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], T], timeout: float, every: float = 1.0) -> T:
    """`check()`'s first truthy result, polled every `every` seconds; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Airflow:
    """The running services: where they listen, the login, their home and logs."""

    url: str
    user: str
    password: str
    work: Path
    home: Path
    _token: str | None = field(default=None, repr=False)

    def log_tails(self, chars: int = 3000) -> str:
        """The end of every service's log, for a failure message."""
        parts = []
        for service in SERVICES:
            log = self.work / f"{service}.log"
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"--- {service} ---\n{text[-chars:]}")
        return "\n".join(parts)

    def token(self) -> str:
        """A JWT from /auth/token, as a user logs in; kept for the calls after."""
        if self._token is None:
            response = requests.post(
                f"{self.url}/auth/token", json={"username": self.user, "password": self.password}, timeout=30
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """A call to the public REST API (/api/v2/...) with the login's JWT."""
        response = requests.request(
            method,
            f"{self.url}/api/v2/{path.lstrip('/')}",
            json=body,
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
        )
        if not response.ok:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:2000]}")
        return response.json()


@contextlib.contextmanager
def airflow_services(
    work: Path,
    env: Mapping[str, str],
    start_timeout: float = 180,
    home: Path | None = None,
    port: int | None = None,
) -> Generator[Airflow]:
    """Airflow's four services on SQLite, with `env` on top of this process's environment.

    `home`: the Airflow home (its SQLite DB kept there); a fresh one under `work` by default. The
    admin's password is new at every start. Yields once the API reports the metadata DB and the
    scheduler healthy; stops every service by its process group on the way out (SIGTERM, then
    SIGKILL after 30 s). Logs: work/<service>.log.
    """
    home = home or work / "home"
    home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    (home / "passwords.json").chmod(0o600)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **env,
    }
    subprocess.run(["airflow", "db", "migrate"], env=full_env, check=True, capture_output=True)
    airflow = Airflow(url=url, user="admin", password=password, work=work, home=home)
    procs = []
    try:
        for service in SERVICES:
            with (work / f"{service}.log").open("w") as log:
                command = ["airflow", service, *(["--port", str(port)] if service == "api-server" else [])]
                procs.append(
                    subprocess.Popen(
                        command, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )

        def healthy() -> bool:
            exited = [s for s, p in zip(SERVICES, procs, strict=True) if p.poll() is not None]
            if exited:
                raise RuntimeError(f"Airflow's {', '.join(exited)} exited:\n{airflow.log_tails()}")
            try:
                health = requests.get(f"{url}/api/v2/monitor/health", timeout=5).json()
            except (OSError, ValueError):
                return False
            return all(
                health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler")
            )

        try:
            wait_for("Airflow to be healthy", healthy, timeout=start_timeout, every=2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{airflow.log_tails()}") from None
        yield airflow
    finally:
        stop_process_groups(procs)


def stop_process_groups(procs: list[subprocess.Popen]) -> None:
    """Stop processes started with start_new_session, and whatever they left in their groups."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    # One grace period for all of them, not one each: four slow services must not add up to minutes.
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for proc in procs:  # what a process left behind in its group (a task's process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    """`make ui`: the services on the embedded default until Ctrl-C; prints the URL and the login."""
    parser = argparse.ArgumentParser(
        description="Airflow's UI on the embedded default (SQLite, the lake folder)"
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("UI_PORT", "8080")))
    args = parser.parse_args(argv)
    home = Path(os.environ.get("AIRFLOW_HOME", ROOT / ".airflow"))
    work = home / "ui-logs"
    work.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:  # the port asked for, or any free one when it is taken
        port = args.port if sock.connect_ex(("127.0.0.1", args.port)) else free_port()
    env = {"AIRFLOW__CORE__DAGS_FOLDER": os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))}
    print(
        f"Starting Airflow's api-server, scheduler, dag-processor and triggerer (logs: {work}/)", flush=True
    )
    with airflow_services(work, env, home=home, port=port) as airflow:
        print(
            f"\nAirflow UI: {airflow.url}   login: {airflow.user} / {airflow.password}\n"
            f"Lake: {os.environ.get('ORCHARD_LAKE', ROOT / 'lake')}   Ctrl-C stops everything.\n",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    print("Airflow stopped.")


if __name__ == "__main__":
    main()
