"""A user's session in a real browser: log in, trigger fruits_pipeline with the form, see it succeed,
open the run and its "Orchard report" tab. Airflow runs as `make ui` starts it (its four services on
SQLite with the LocalExecutor); Playwright drives Debian's Chromium headless.

Run with `make e2e`; screenshots land in `tests/browser/screenshots/` (or $ORCHARD_E2E_SHOTS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from orchard.dev.ui import SERVICES, free_port, wait_for
from orchard.samples import generate
from orchard.uris import local_path
from tests.conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("ORCHARD_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("ORCHARD_E2E_SHOTS", ROOT / "tests" / "browser" / "screenshots"))
# What the probe of this machine found Chromium needs in a closed network, headless, as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Iterator[dict]:
    """`make ui`, as a user starts it, on a fresh Airflow home and lake; yields the URL and the login it
    printed. Stopped at the end as a user does, with Ctrl-C (SIGINT to its process group), and then
    no process of it may be left."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: `make e2e` installs Debian's chromium")
    work = tmp_path_factory.mktemp("airflow-ui")
    home, lake, images = work / "home", work / "lake", work / "images"
    generate(images, per_class=3, seed=7)
    env = {
        **os.environ,
        "AIRFLOW_CONN_ORCHARD_SPARK": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "ORCHARD_LAKE": str(lake),
        "ORCHARD_SOURCE": str(images),
        "ORCHARD_SCHEDULE": "none",  # this session's only run is the one it triggers
        "UI_PORT": str(free_port()),
    }
    command = ["make", "--no-print-directory", "-C", str(ROOT), "ui", f"AIRFLOW_HOME={home}"]
    out = (work / "make-ui.log").open("w+")
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def printed():
        if proc.poll() is not None:
            raise RuntimeError(f"make ui exited {proc.returncode}:\n{(work / 'make-ui.log').read_text()}")
        found = re.search(r"Airflow UI: (\S+)\s+login: (\S+) / (\S+)", (work / "make-ui.log").read_text())
        return found and found.groups()

    try:
        url, user, password = wait_for("make ui to print the login", printed, timeout=300, every=1)
        yield {"url": url, "user": user, "password": password, "lake": lake, "images": images, "work": work}
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        proc.wait(timeout=90)
        out.close()
        logs = home / "ui-logs"
        SHOTS.mkdir(parents=True, exist_ok=True)
        for service in SERVICES:  # kept beside the screenshots for when a step fails
            if (logs / f"{service}.log").exists():
                shutil.copyfile(logs / f"{service}.log", SHOTS / f"{service}.log")
    assert "Airflow stopped." in (work / "make-ui.log").read_text()
    assert left_running(home) == [], left_running(home)


def left_running(home: Path) -> list[str]:
    """Processes still running with this Airflow home in their environment."""
    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("AIRFLOW_HOME") == str(home):
                left.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return left


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A browser page that leaves a screenshot and its HTML behind when the test fails."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        page.screenshot(path=SHOTS / "last-page.png", full_page=True)
        (SHOTS / "last-page.html").write_text(page.content(), encoding="utf-8")
        page.close()


def number_input(dialog, name: str):
    """The spinbutton of a number Param: the input its increment button controls."""
    controlled = dialog.locator(f'[id="number-input:element_{name}:inc"]').get_attribute("aria-controls")
    return dialog.locator(f'[id="{controlled}"]')


def test_trigger_with_the_form_and_read_the_report(airflow, page):
    from playwright.sync_api import expect

    url = airflow["url"]

    log_in(page, url, airflow["user"], airflow["password"])

    # The DAG, once the dag-processor has parsed it (a navigation still under way after the login
    # redirect aborts a goto: that is retried too).
    def dag_page():
        from playwright.sync_api import Error

        try:
            page.goto(f"{url}/dags/fruits_pipeline")
            page.wait_for_load_state("networkidle")
        except Error:
            return False
        return page.get_by_role("button", name=re.compile(r"^trigger", re.I)).count() > 0

    wait_for("fruits_pipeline in the UI", dag_page, timeout=120, every=3)
    page.get_by_role("button", name=re.compile(r"^trigger", re.I)).first.click()

    # The form: every Param is a field with its title.
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Source folder")).to_be_visible()
    for title in ("PCA components", "Explained variance target", "Model weights", "Image limit"):
        expect(dialog.get_by_text(title, exact=False).first).to_be_visible()
    # Text Params are inputs with id element_<name>; number Params are spinbuttons named by their
    # +/- buttons (Airflow 3.3's form).
    dialog.locator("#element_source").fill(str(airflow["images"]))
    number_input(dialog, "pca_k").fill("3")
    number_input(dialog, "limit").fill("18")
    dialog.locator("#element_weights").fill("random:42")
    page.screenshot(path=SHOTS / "1-trigger-form.png", full_page=True)
    dialog.get_by_test_id("trigger-dag-submit").click()

    # Wait for the run to succeed (the REST API says so; the page shows it).
    latest = airflow["lake"] / "latest.json"
    wait_for("the run's latest.json", latest.exists, timeout=600, every=5)
    manifest = json.loads(local_path(json.loads(latest.read_text())["manifest"]).read_text())
    assert manifest["counts"]["featurized"] == 18
    assert manifest["pca"]["k"] == 3

    def run_succeeded():
        page.goto(f"{url}/dags/fruits_pipeline/runs")
        # The list is fetched after the page loads: count once the UI's requests have settled.
        page.wait_for_load_state("networkidle")
        return page.get_by_text(re.compile(r"^success$", re.I)).count() > 0

    wait_for("the run to show success", run_succeeded, timeout=180, every=5)

    # The featurize task's log (the file the UI shows) has the step's progress lines.
    (log_file,) = (airflow["work"] / "home" / "logs").rglob("task_id=featurize/attempt=1.log")
    log_text = log_file.read_text(encoding="utf-8")
    assert "featurize started: 18 files in 2 tasks" in log_text
    assert "featurize progress: 18/18 images (100%), tasks 2/2" in log_text

    # The run's page, then its "Orchard report" tab: the report from the lake, inside the UI.
    open_the_report_tab(page, url, manifest["run_id"], (18, 18, 0), SHOTS)


def log_in(page, url: str, user: str, password: str) -> None:
    """Airflow's login page, as a user fills it."""
    page.goto(f"{url}/")
    page.get_by_label(re.compile(r"username", re.I)).fill(user)
    page.get_by_label(re.compile(r"password", re.I)).fill(password)
    page.get_by_role("button", name=re.compile(r"sign in|log in|login", re.I)).click()
    page.wait_for_load_state("networkidle")


def open_the_report_tab(page, url: str, run_id: str, counts: tuple[int, int, int], shots: Path) -> None:
    """The run's page and its "Orchard report" tab, with the counts (inputs, featurized, quarantined)
    and both plots drawn; screenshots in `shots`."""
    from playwright.sync_api import expect

    page.goto(f"{url}/dags/fruits_pipeline/runs/{quote(run_id, safe='')}")
    page.wait_for_load_state("networkidle")
    tab = page.get_by_role("link", name="Orchard report")  # the run page's tabs are links
    expect(tab).to_be_visible()
    page.screenshot(path=shots / "2-successful-run.png", full_page=True)
    tab.click()
    expect(page).to_have_url(re.compile(r"/plugin/orchard-report$"))
    report = page.frame_locator('iframe[title="Orchard report"]')
    for field, count in zip(("#inputs", "#featurized", "#quarantined"), counts, strict=True):
        expect(report.locator(field)).to_have_text(str(count))
    for alt in ("scree plot", "PC1/PC2 scatter"):
        plot = report.get_by_alt_text(alt)
        expect(plot).to_be_visible()
        # Decoded and drawn, not a broken-image icon.
        assert plot.evaluate("img => img.complete && img.naturalWidth") >= 800
    page.screenshot(path=shots / "3-report-tab.png", full_page=True)
    report.get_by_alt_text("PC1/PC2 scatter").scroll_into_view_if_needed()
    page.screenshot(path=shots / "4-report-tab-plots.png", full_page=True)
