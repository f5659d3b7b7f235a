"""The docker-compose stack, started for real (`make stack-test`): images built here (tests/stack/images.py),
`fruits_pipeline` triggered through Airflow's REST API and run by its scheduler and LocalExecutor,
the outputs read where a user finds them, and everything brought down again.

The Spark steps run with the lake on the volume the services share (CI's image has no s3a jars:
Maven Central is not reachable here); the S3 lake is run through every task up to the Spark
boundary, in the stack's image, against the stack's SeaweedFS (test_the_s3_lake_up_to_the_spark_steps).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
import requests

from orchard.dev.ui import Airflow, free_port, wait_for
from orchard.samples import generate
from tests.conftest import ROOT
from tests.features_table import read_features
from tests.imagefactory import truncated_jpeg
from tests.stack.images import ci_overrides, compose_env, docker_engine, stack_images

sys.path.insert(0, str(ROOT / "docker"))
from stack_env import generated

pytestmark = pytest.mark.stack

DAG_ID = "fruits_pipeline"
HERE = Path(__file__).resolve().parent
PER_CLASS = 3
BAD_FILES = {
    "Kiwi/truncated.jpg": truncated_jpeg(),
    "Plum/empty.png": b"",
    "Plum/notes.jpg": b"a text file with an image's name",
}
LONG_RUNNING = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "postgres",
    "s3",
)


class Stack:
    """One compose project: its commands, its REST API and its S3 store, from this machine."""

    def __init__(self, name: str, env: dict[str, str], work: Path):
        self.name, self.env, self.work = name, env, work
        self.url = f"http://127.0.0.1:{env['AIRFLOW_PORT']}"
        # The REST client of `make ui`'s services, pointed at the stack's api-server.
        self.airflow = Airflow(self.url, "admin", env["AIRFLOW_ADMIN_PASSWORD"], work, work)

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        command = ["docker-compose", "-p", self.name, "-f", str(ROOT / "docker-compose.yaml"), *args]
        done = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode:
            raise RuntimeError(
                f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
            )
        return done

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        done = subprocess.run(
            ["docker", "inspect", "-f", fmt, self.container(service)],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail=80", check=False).stdout[-20000:]

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        return self.airflow.api(method, path, body)

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.env['ORCHARD_S3_PORT']}",
            region_name="eu-west-1",
            aws_access_key_id=self.env["ORCHARD_S3_ACCESS_KEY"],
            aws_secret_access_key=self.env["ORCHARD_S3_SECRET_KEY"],
        )

    def copy_out(self, path: str, dest: Path) -> Path:
        """A folder of the scheduler's container (the shared lake volume), copied here."""
        subprocess.run(
            ["docker", "cp", f"{self.container('airflow-scheduler')}:{path}", str(dest)],
            check=True,
            capture_output=True,
        )
        return dest


def timed(name: str, started: float) -> None:
    """One line of the stack test's timings (docs/local-stack.md quotes them)."""
    print(f"stack-test: {name} {time.monotonic() - started:.1f} s", flush=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Generated fruit in class folders, plus files that cannot be decoded, readable by the containers."""
    folder = tmp_path_factory.mktemp("stack") / "images"
    generate(folder, per_class=PER_CLASS, seed=11)
    for rel, data in BAD_FILES.items():
        (folder / rel).write_bytes(data)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.parent.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory, source) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack-work")
    with docker_engine(work):
        started = time.monotonic()
        images = stack_images(work)
        built = ", ".join(f"{k} {'built' if b else 'reused'}" for k, (_, b) in images.items())
        timed(f"images ({built})", started)
        env = compose_env(
            generated()
            | ci_overrides(images)
            | {
                "AIRFLOW_PORT": str(free_port()),
                "ORCHARD_S3_PORT": str(free_port()),
                "ORCHARD_STACK_IMAGES": str(source),
                "ORCHARD_SPARK_CORES": "2",
            }
        )
        stack = Stack(f"orchardci{int(time.time())}", env, work)
        try:
            started = time.monotonic()
            stack.compose("up", "-d", "--no-build")
            wait_for(
                "every service healthy",
                lambda: all(stack.health(s) == "healthy" for s in LONG_RUNNING),
                timeout=600,
                every=3,
            )
            timed("up and healthy", started)
            yield stack
        except BaseException:
            print(stack.logs())
            raise
        finally:
            started = time.monotonic()
            stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)
            name = stack.name
            timed("down -v", started)
            left = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"],
                capture_output=True, text=True, check=False,
            ).stdout.split()  # fmt: skip
            networks = subprocess.run(
                ["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={name}"],
                capture_output=True, text=True, check=False,
            ).stdout.split()  # fmt: skip
            assert left == [] and networks == [], (left, networks)


def test_docker_compose_v1_accepts_the_file():
    """CI runs the stack with Debian's docker-compose 1.29 (v1): the file parses there, as under v2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")} | generated()
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.backs("no credentials in code")
def test_without_the_generated_secrets_the_stack_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in generated()}
    (tmp_path / "0.env").write_text("")
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yaml"), "--env-file", str(tmp_path / "0.env"),
         "config", "--quiet"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "run make up" in done.stderr


def trigger_and_wait(stack: Stack, conf: dict, timeout: float = 1200) -> dict:
    run = stack.api("POST", f"dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]

    def finished():
        state = stack.api("GET", f"dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in {"success", "failed"} else None

    state = wait_for(f"run {run_id}", finished, timeout=timeout, every=5)
    if state != "success":
        tis = stack.api("GET", f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        raise AssertionError(
            f"run {run_id} {state}: {[(t['task_id'], t['state']) for t in tis]}\n{stack.logs()}"
        )
    return stack.api("GET", f"dags/{DAG_ID}/dagRuns/{run_id}")


def run_and_read(stack: Stack, conf: dict, name: str, tmp_path: Path) -> tuple[dict, Path, dict]:
    """Trigger a run and wait for it; (the run, a copy of the lake volume, the latest manifest)."""
    started = time.monotonic()
    run = trigger_and_wait(stack, conf)
    timed(f"{name} run", started)
    lake = stack.copy_out("/opt/airflow/lake", tmp_path / f"lake-{name}")
    latest = json.loads((lake / "latest.json").read_text())
    return run, lake, json.loads(host_path(lake, latest["manifest"]).read_text())


def host_path(lake_copy: Path, uri: str) -> Path:
    """A lake URI of the containers (file:///opt/airflow/lake/...) in the copy made here."""
    return lake_copy / uri.removeprefix("file:///opt/airflow/lake/")


def test_the_pipeline_runs_through_the_stack_and_a_rerun_uploads_nothing(stack, source, tmp_path):
    wait_for("the DAG parsed", lambda: _dag_parsed(stack), timeout=300, every=3)
    conf = {"source": "/opt/airflow/images", "weights": "random:5", "pca_k": 3}

    first, lake, manifest = run_and_read(stack, conf, "first", tmp_path)
    assert manifest["run_id"] == first["dag_run_id"]
    good = PER_CLASS * 6
    counts = manifest["counts"]
    assert counts["inputs"] == good + len(BAD_FILES) == counts["featurized"] + counts["quarantined"]
    assert (counts["featurized"], counts["quarantined"], counts["accounted"]) == (good, len(BAD_FILES), True)
    assert counts["uploaded"] == good + len(BAD_FILES)
    outputs = manifest["outputs"]
    quarantine = _parquet(host_path(lake, outputs["quarantine"]))
    assert sorted(quarantine.path.str.split("/images/").str[-1]) == sorted(BAD_FILES)
    assert quarantine.reason.str.len().gt(0).all()
    features = read_features(host_path(lake, outputs["features"]), lake / "cache" / "features")
    assert len(features) == good and all(len(v) == 1280 for v in features.features)
    rows = list(csv.reader(io.StringIO(host_path(lake, outputs["csv"]).read_text())))
    assert rows[0] == ["path", "label", "pc_1", "pc_2", "pc_3"]
    assert sorted(r[0] for r in rows[1:]) == sorted(features.path)

    # The task logs, through the API, as the UI shows them.
    log = stack.api(
        "GET", f"dags/{DAG_ID}/dagRuns/{first['dag_run_id']}/taskInstances/featurize/logs/1?full_content=true"
    )
    assert "featurize progress" in json.dumps(log)

    # The Orchard report tab, served by the stack's api-server to a logged-in user, and refused without.
    page = f"{stack.url}/orchard/runs/{DAG_ID}/{first['dag_run_id']}/"
    assert requests.get(page, timeout=30).status_code in {401, 403}
    served = requests.get(page, headers={"Authorization": f"Bearer {stack.airflow.token()}"}, timeout=30)
    assert served.status_code == 200, served.text[:500]
    assert f'<td id="featurized">{good}</td>' in served.text

    # The same tab in a real browser, logged in through the UI's own form.
    browse_the_report_tab(stack, first["dag_run_id"], (good + len(BAD_FILES), good, len(BAD_FILES)))

    # The same source again: nothing uploaded, every image's features from the cache.
    second, _, again = run_and_read(stack, conf, "second", tmp_path)
    assert again["run_id"] == second["dag_run_id"] != first["dag_run_id"]
    assert again["counts"]["uploaded"] == 0
    assert again["counts"]["from_cache"] == again["counts"]["inputs"] - len(BAD_FILES) == good


def test_the_s3_lake_up_to_the_spark_steps(stack, source):
    """upload_images, convert_model and plan on the S3 lake, in the stack's image, against its SeaweedFS:
    the task bodies the DAG runs, with the stack's settings and only ORCHARD_LAKE changed."""
    done = stack.compose(
        "run", "--rm", "--no-deps", "-e", "ORCHARD_LAKE=s3://orchard/lake", "-v", f"{HERE}:/opt/stack:ro",
        "--entrypoint", "python", "airflow-scheduler", "/opt/stack/s3_boundary.py",
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    s3 = stack.s3()
    keys = {
        o["Key"]: o
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="orchard", Prefix="lake/")
        for o in page.get("Contents", [])
    }
    images = sorted(k.split("/images/images/", 1)[1] for k in keys if "/images/images/" in k)
    expected = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert images == expected
    head = s3.head_object(Bucket="orchard", Key=f"lake/images/images/{expected[0]}")
    assert head["ServerSideEncryption"] == "AES256" and len(head["Metadata"]["sha256"]) == 64
    inputs_key = result["inputs_file"].removeprefix("s3a://orchard/")
    listing = pd.read_parquet(io.BytesIO(s3.get_object(Bucket="orchard", Key=inputs_key)["Body"].read()))
    assert len(listing) == len(expected)
    assert any(k.endswith(".onnx") for k in keys), sorted(keys)[:20]
    assert result["sync"]["uploaded"] == len(expected)
    # The plan read the listing and the (empty) features cache on S3, and wrote plan.json there.
    assert result["plan"]["work"]["inputs"] == len(expected) and result["plan"]["work"]["from_cache"] == 0
    assert any(k.endswith("/plan.json") for k in keys)


def browse_the_report_tab(stack: Stack, run_id: str, counts: tuple[int, int, int]) -> None:
    """Log in to the stack's UI with Chromium (Playwright), open the run's Orchard report tab, and keep
    screenshots in tests/stack/screenshots/."""
    from playwright.sync_api import sync_playwright

    from tests.browser.test_airflow_ui import CHROMIUM, CHROMIUM_ARGS, log_in, open_the_report_tab

    shots = HERE / "screenshots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            log_in(page, stack.url, "admin", stack.env["AIRFLOW_ADMIN_PASSWORD"])
            open_the_report_tab(page, stack.url, run_id, counts, shots)
        finally:
            page.screenshot(path=shots / "last-page.png", full_page=True)
            browser.close()


def _dag_parsed(stack: Stack) -> bool:
    try:
        stack.api("GET", f"dags/{DAG_ID}")
    except RuntimeError:
        return False
    return True


def _parquet(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
