"""The code a cluster runs, packaged reproducibly and addressed by its content hash."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

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
