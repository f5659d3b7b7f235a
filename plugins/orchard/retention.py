"""Retention: the lake keeps the newest attempts, not every attempt ever made.

An attempt (`runs/<run>/attempt-<n>/`) is removed once it is neither among the newest
`keep_attempts` nor younger than `keep_days` (0 turns a limit off; both 0 keep everything). Its
age is that of its newest file. Never removed: the attempt `latest.json` points at, the erasure
records (`erasures/`), the images, the features cache and the converted models (shared by every
run; a run's features are an index into the cache).

On the emr target the same task ages out, after `keep_days`, the EMR clusters' log folders below
the lake (`emr-logs/<cluster id>/`) and staged artifacts (`artifacts/<hash>/`,
`artifacts/wheelhouse/<hash>/`) that the current run did not stage. A log URI outside the lake is
left to an S3 lifecycle rule (docs/aws.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchard.layout import LakeLayout
from orchard.storage.lake import Entry, Lake

log = logging.getLogger(__name__)

_ATTEMPT = re.compile(r"attempt-[1-9][0-9]*")
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass
class Folder:
    """A folder retention may remove: its URI, its files' total size and its newest file's time."""

    uri: str
    size: int = 0
    newest: dt.datetime = _NEVER

    def add(self, entry: Entry) -> None:
        self.size += entry.size
        self.newest = max(self.newest, entry.modified)


@dataclass
class RetentionReport:
    """What retention removed and kept."""

    removed: list[str] = field(default_factory=list)
    kept: int = 0
    bytes_freed: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"removed": self.removed, "kept": self.kept, "bytes_freed": self.bytes_freed}


def _folders(entries: Iterable[Entry], root: str, depth: int) -> dict[str, Folder]:
    """Files below `root` grouped by their folder `depth` levels down (`root/a/b` for depth 2)."""
    folders: dict[str, Folder] = {}
    for entry in entries:
        parts = entry.uri[len(root) + 1 :].split("/")
        if len(parts) <= depth:
            continue  # a file directly at that level, not in a folder of it
        uri = f"{root}/{'/'.join(parts[:depth])}"
        folders.setdefault(uri, Folder(uri)).add(entry)
    return folders


def _latest_attempt(lake: Lake, shared: LakeLayout) -> str | None:
    """The folder of the attempt latest.json points at."""
    try:
        manifest = lake.read_json(shared.latest)["manifest"]
    except FileNotFoundError:
        return None
    return str(manifest).rsplit("/", 1)[0]


def _same_folder(a: str, b: str) -> bool:
    """Whether two URIs name one folder, whatever their scheme (s3:// and s3a:// alike)."""
    return a.split("://", 1)[-1].rstrip("/") == b.split("://", 1)[-1].rstrip("/")


def expired_attempts(
    attempts: Iterable[Folder], keep_attempts: int, keep_days: int, now: dt.datetime, protected: str | None
) -> list[Folder]:
    """The attempts to remove: beyond the newest `keep_attempts`, or older than `keep_days`."""
    ordered = sorted(attempts, key=lambda f: (f.newest, f.uri), reverse=True)
    expired = []
    for rank, folder in enumerate(ordered):
        too_many = keep_attempts > 0 and rank >= keep_attempts
        too_old = keep_days > 0 and now - folder.newest > dt.timedelta(days=keep_days)
        if (too_many or too_old) and not (protected and _same_folder(folder.uri, protected)):
            expired.append(folder)
    return expired


def apply(
    lake: Lake,
    lake_uri: str,
    keep_attempts: int,
    keep_days: int,
    now: dt.datetime | None = None,
    staged: Iterable[str] = (),
) -> RetentionReport:
    """Remove the attempts (and, after `keep_days`, EMR logs and unused artifacts) retention lets go.

    `staged`: what the current run staged (URIs or text holding them): those artifacts stay.
    """
    now = now or dt.datetime.now(dt.UTC)
    shared = LakeLayout(lake_uri)
    report = RetentionReport()
    if not keep_attempts and not keep_days:
        log.info("retention is off (ORCHARD_RETAIN_ATTEMPTS=0, ORCHARD_RETAIN_DAYS=0): nothing removed")
        return report
    attempts = {
        uri: folder
        for uri, folder in _folders(lake.list_entries(shared.runs), shared.runs, 2).items()
        if _ATTEMPT.fullmatch(uri.rsplit("/", 1)[-1])
    }
    expired = expired_attempts(
        attempts.values(), keep_attempts, keep_days, now, _latest_attempt(lake, shared)
    )
    if keep_days:
        cutoff = now - dt.timedelta(days=keep_days)
        text = " ".join(staged)
        root, wheels = f"{lake_uri}/artifacts", f"{lake_uri}/artifacts/wheelhouse"
        artifacts = lake.list_entries(root)
        folders = {
            **_folders([e for e in artifacts if not e.uri.startswith(wheels + "/")], root, 1),
            **_folders([e for e in artifacts if e.uri.startswith(wheels + "/")], wheels, 1),
        }
        expired += [
            f for f in folders.values() if f.newest < cutoff and f.uri.split("://", 1)[-1] not in text
        ]
        logs = shared.emr_logs.rstrip("/")
        expired += [f for f in _folders(lake.list_entries(logs), logs, 1).values() if f.newest < cutoff]
    for folder in expired:
        lake.delete_folder(folder.uri)
        report.removed.append(folder.uri)
        report.bytes_freed += folder.size
    report.kept = len(attempts) - sum(1 for f in expired if f.uri in attempts)
    run_folders = {f.uri.rsplit("/", 1)[0] for f in expired if f.uri in attempts}
    for run_folder in run_folders:  # a local run folder whose every attempt is gone is not left empty
        if not lake.on_s3 and not lake.list_files(run_folder):
            lake.delete_folder(run_folder)
    log.info(
        "retention: %d folders removed (%.1f MB), %d attempts kept",
        len(report.removed),
        report.bytes_freed / 1e6,
        report.kept,
    )
    return report
