"""The image sync: a source mirrored into the lake, every file ending in one outcome, counted.

One rule on every backend: a file is skipped when the lake's copy has the same size and the same
content, which for a source folder is its SHA-256 (hashed anyway for the run's input listing) and,
for an s3:// source copied inside S3, the source object's ETag (its bytes never reach this process).
"""

from __future__ import annotations

import io
import logging
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from orchard.storage.files import (
    check_source,
    file_sha256,
    is_hidden,
    os_reason,
    replaced_atomically,
    shown,
    walk_source,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# What copy_one returns for one file: (relative path, outcome, bytes or reason, SHA-256 or None).
Outcome = tuple[str, str, int | str, str | None]


@dataclass(frozen=True)
class Input:
    """One row of a run's input listing: a source file by its path below the source, with its size
    and SHA-256, or the reason it cannot be an input (then it goes to the quarantine)."""

    path: str
    size: int | None = None
    sha256: str | None = None
    reason: str | None = None


@dataclass
class SyncReport:
    """What a sync did, file by file counted; `failed`, `quarantined` and `ignored` keep the paths.

    `inputs` is the run's input listing: every source file the run must account for, in listing
    order. `failed` holds lake-side failures (the run stops); a file the source itself could not
    give (unreadable, a broken link, a name that cannot be represented) is `quarantined` instead.
    """

    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    deleted: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)

    def record(self, rel: str, outcome: str, detail: int | str, sha256: str | None = None) -> None:
        """Count one file's outcome: 'uploaded' or 'skipped' (detail: its size in bytes),
        'quarantined' (detail: why) or 'failed' (detail: why)."""
        if outcome in {"uploaded", "skipped"}:
            if outcome == "uploaded":
                self.uploaded += 1
                self.bytes_uploaded += int(detail)
            else:  # already in the lake, same content
                self.skipped += 1
            self.inputs.append(Input(rel, int(detail), sha256))
        elif outcome == "quarantined":
            self.quarantined[rel] = str(detail)
            self.inputs.append(Input(rel, reason=str(detail)))
        else:
            self.failed[rel] = str(detail)

    @property
    def files(self) -> int:
        """Inputs of the run: files handed to the pipeline (uploaded or already there) or quarantined."""
        return self.uploaded + self.skipped + len(self.quarantined)

    def as_dict(self) -> dict:
        """JSON-friendly form for XCom and the manifest (the listing itself goes to the lake)."""
        return {
            "files": self.files,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "bytes_uploaded": self.bytes_uploaded,
            "deleted": self.deleted,
            "failed": self.failed,
            "quarantined": self.quarantined,
            "ignored": self.ignored,
        }


def listing_parquet(inputs: Iterable[Input]) -> bytes:
    """The input listing as one Parquet file (the schema of orchard_jobs.features.INPUT_TYPE)."""
    # pyarrow (~0.1 s to import) for the upload task alone, not each time a DAG is parsed.
    import pyarrow as pa  # ruff: ignore[import-outside-top-level]
    import pyarrow.parquet as pq  # ruff: ignore[import-outside-top-level]

    rows = list(inputs)
    table = pa.table(
        {
            "path": pa.array([r.path for r in rows], pa.string()),
            "size": pa.array([r.size for r in rows], pa.int64()),
            "sha256": pa.array([r.sha256 for r in rows], pa.string()),
            "reason": pa.array([r.reason for r in rows], pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _copy(src: Path, dest: Path, size: int, digest: str) -> str:
    """Copy unless `dest` already holds these bytes (same size, same SHA-256): 'uploaded' or 'skipped'."""
    try:
        same = dest.stat().st_size == size and file_sha256(dest) == digest
    except FileNotFoundError:
        same = False
    if same:
        return "skipped"
    # A reader never sees a half-copied image.
    with replaced_atomically(dest, stat_from=src) as out, src.open("rb") as handle:
        shutil.copyfileobj(handle, out, 1 << 20)
    return "uploaded"


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items on `workers` threads, in order, with at most 4 x workers items in flight.

    Unlike Executor.map, it never submits the whole iterable up front, so a listing of 100k
    files streams through in constant memory.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def sync_each(
    entries: Iterable[tuple[str, str | None]],
    dest: str | Path,
    copy_one: Callable[[str], Outcome],
    limit: int | None,
    workers: int,
    delete: Callable[[set[str]], int] | None = None,
) -> SyncReport:
    """Run `copy_one(relative path)` over the source's entries on `workers` threads; count the outcomes.

    `entries` are (relative path, problem or None), as walk_source gives them. `copy_one` returns
    (path, 'uploaded' | 'skipped' | 'quarantined' | 'failed', bytes or reason, SHA-256). Hidden
    names are reported in `ignored`, not handed over; an entry with a problem is quarantined.
    `limit` takes the first N entries. `delete(kept paths)` then removes the lake's copies of
    files the source no longer has (all of the source counts as kept, beyond `limit` too).
    """
    report = SyncReport()
    listed = list(entries)  # names only: the walk is read once, the copies stream below
    wanted: list[str] = []
    for rel, problem in listed:
        if is_hidden(rel):
            report.ignored.append(shown(rel))
        elif limit and len(wanted) + len(report.quarantined) >= limit:
            continue
        elif problem:
            report.record(shown(rel), "quarantined", problem)
        else:
            wanted.append(rel)
    for rel, outcome, detail, digest in bounded_map(copy_one, wanted, workers):
        report.record(rel, outcome, detail, digest)
    report.inputs.sort(key=lambda row: row.path)
    if delete is not None and not report.failed:
        report.deleted = delete({rel for rel, problem in listed if problem is None and not is_hidden(rel)})
    log.info(
        "sync -> %s: %d uploaded, %d unchanged, %d quarantined, %d failed, %d deleted (gone from the "
        "source), %d hidden names ignored",
        dest, report.uploaded, report.skipped, len(report.quarantined), len(report.failed), report.deleted,
        len(report.ignored),
    )  # fmt: skip
    return report


def sync_folder(source: Path, dest: Path, limit: int | None = None, workers: int = 8) -> SyncReport:
    """Mirror the files below `source` into `dest` (same relative paths), skipping unchanged ones.

    Unchanged: the copy has the same size and SHA-256 (the module's one rule). Files gone from the
    source are removed from `dest`: the lake's copy of a dataset is the source as of the last upload.
    """
    check_source(source)

    def one(rel: str) -> Outcome:
        src = source / rel
        try:  # what the source gives: a file that cannot be read is quarantined, not fatal
            size, digest = src.stat().st_size, file_sha256(src)
        except OSError as exc:
            return rel, "quarantined", f"cannot be read: {os_reason(exc)}", None
        try:
            return rel, _copy(src, dest / rel, size, digest), size, digest
        except OSError as exc:
            return rel, "failed", f"{type(exc).__name__}: {exc}", None

    def delete(kept: set[str]) -> int:
        gone = 0
        if dest.is_dir():
            for path in sorted(p for p in dest.rglob("*") if p.is_file() or p.is_symlink()):
                if path.relative_to(dest).as_posix() not in kept:
                    path.unlink()
                    gone += 1
        return gone

    return sync_each(walk_source(source), dest, one, limit, workers, delete)
