"""The code a cluster runs, packaged reproducibly, staged in the lake under its content hash.

The jobs (entry points and the orchard_jobs zip), the bootstrap, and a wheelhouse of every wheel
the nodes install, built once per requirements and EC2 architecture.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from orchard.layout import LakeLayout
from orchard.storage.lake import Lake

ENTRY_POINTS = ("featurize.py", "pca.py")
BOOTSTRAP = ("install-python-deps.sh", "requirements.txt")
JOBS_ZIP = "orchard_jobs.zip"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def package_jobs(jobs_dir: Path, out_dir: Path) -> Path:
    """A --py-files zip of the jobs' modules, byte-identical for identical sources."""
    out = out_dir / JOBS_ZIP
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((jobs_dir / "orchard_jobs").rglob("*.py")):
            info = zipfile.ZipInfo(path.relative_to(jobs_dir).as_posix(), date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return out


def collect(jobs_dir: Path, bootstrap_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Name -> local file of everything a cluster needs from this repository."""
    files = {name: jobs_dir / name for name in ENTRY_POINTS}
    files[JOBS_ZIP] = package_jobs(jobs_dir, out_dir)
    files.update({name: bootstrap_dir / name for name in BOOTSTRAP})
    return files


def content_hash(files: dict[str, Path]) -> str:
    """A short hash of names and contents: the same code always lands under the same prefix."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# The cluster nodes: EMR 7.x runs Amazon Linux 2023 (glibc 2.34) with CPython 3.11 (emr.NODE_PYTHON),
# on x86_64 or, on Graviton instance types, aarch64. pip download does not widen a manylinux tag to
# older glibc versions, so every tag such a node accepts is listed.
NODE_PYTHON_VERSION = "311"
WHEELHOUSE = "wheelhouse.tar"
# pip itself travels in the wheelhouse: a node whose Python 3.11 has no pip installs it from there,
# not from the distribution's repositories (the same pin as the Makefile's venvs).
NODE_PIP = "pip==26.3"
MACHINES = {"X86_64": "x86_64", "AARCH64": "aarch64"}


def node_platforms(architecture: str = "X86_64") -> tuple[str, ...]:
    """The wheel platform tags a node of this EC2 architecture (X86_64, AARCH64) installs."""
    machine = MACHINES[architecture.upper()]
    legacy = ("manylinux2014", "manylinux2010", "manylinux1") if machine == "x86_64" else ("manylinux2014",)
    return (
        *(f"manylinux_2_{minor}_{machine}" for minor in range(34, 16, -1)),
        *(f"{t}_{machine}" for t in legacy),
    )


def requirements_hash(requirements: Path, architecture: str = "X86_64") -> str:
    """A short hash of the node requirements and the platform: one wheelhouse per hash."""
    platform = f"{node_platforms(architecture)[0]} cp{NODE_PYTHON_VERSION} {NODE_PIP}\0"
    return hashlib.sha256(platform.encode() + requirements.read_bytes()).hexdigest()[:16]


def build_wheelhouse(requirements: Path, cache_dir: Path, architecture: str = "X86_64") -> Path:
    """A tar of every wheel the nodes need (dependencies included), built once per requirements hash.

    `pip download --only-binary=:all:` for the nodes' platform, so the bootstrap installs with
    --no-index and the nodes never reach PyPI. The tar is deterministic (sorted, fixed times).
    """
    target = cache_dir / requirements_hash(requirements, architecture) / WHEELHOUSE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        wheels = Path(work) / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--only-binary=:all:", *(f"--platform={tag}" for tag in node_platforms(architecture)),
             "--implementation", "cp",
             "--python-version", NODE_PYTHON_VERSION, "--abi", f"cp{NODE_PYTHON_VERSION}",
             "--requirement", str(requirements), NODE_PIP, "--dest", str(wheels)],
            check=True,
        )  # fmt: skip
        partial = Path(work) / WHEELHOUSE
        with tarfile.open(partial, "w") as archive:
            for path in sorted(wheels.iterdir()):
                info = archive.gettarinfo(str(path), arcname=path.name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
        partial.replace(target)  # whole or absent: a killed build leaves no half wheelhouse
    return target


def default_cache() -> Path:
    """Where the Airflow worker keeps built wheelhouses ($XDG_CACHE_HOME/orchard, else ~/.cache/orchard)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orchard" / "wheelhouse"


def stage_code(lake: Lake, lake_uri: str, jobs_dir: Path, bootstrap_dir: Path) -> dict[str, str]:
    """The jobs and bootstrap in the lake under their content hash (sent once per hash); name -> URI."""
    with tempfile.TemporaryDirectory() as workdir:
        files = collect(jobs_dir, bootstrap_dir, Path(workdir))
        return lake.upload_files(files, LakeLayout(lake_uri).artifacts(content_hash(files)))


def stage_wheelhouse(lake: Lake, lake_uri: str, requirements: Path, architecture: str) -> str:
    """The nodes' wheels under artifacts/wheelhouse/<requirements hash>/: built and sent once per hash."""
    prefix = LakeLayout(lake_uri).wheelhouse(requirements_hash(requirements, architecture))
    uri = f"{prefix}/{WHEELHOUSE}"
    if lake.exists(uri):
        return uri
    tar = build_wheelhouse(requirements, default_cache(), architecture)
    return lake.upload_files({WHEELHOUSE: tar}, prefix)[WHEELHOUSE]
