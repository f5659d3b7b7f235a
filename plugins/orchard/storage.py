"""Moving files into and out of the lake: the image sync and the one-file CSV assembly."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class SyncReport:
    """What a sync did, file by file counted; `failed` and `ignored` keep the paths."""

    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def record(self, rel: str, outcome: str, detail: int | str) -> None:
        """Count one file's outcome: 'uploaded' (detail: bytes), 'skipped', or 'failed' (detail: why)."""
        if outcome == "uploaded":
            self.uploaded += 1
            self.bytes_uploaded += int(detail)
        elif outcome == "skipped":
            self.skipped += 1
        else:
            self.failed[rel] = str(detail)

    @property
    def files(self) -> int:
        """Files handed to the pipeline (uploaded or already there)."""
        return self.uploaded + self.skipped

    def as_dict(self) -> dict:
        """JSON-friendly form for XCom and the manifest."""
        return {
            "files": self.files,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "bytes_uploaded": self.bytes_uploaded,
            "failed": self.failed,
            "ignored": self.ignored,
        }


def is_hidden(rel_path: str) -> bool:
    """Names Spark's file listing never reads ('.x', '_x' at any depth), so they are not inputs."""
    return any(part.startswith((".", "_")) for part in Path(rel_path).parts)


def list_source(source: Path) -> Iterator[str]:
    """Relative paths of all files below `source`, depth-first in name order; streams the walk."""
    with os.scandir(source) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            for rel in list_source(Path(entry.path)):
                yield f"{entry.name}/{rel}"
        elif entry.is_file(follow_symlinks=True):
            yield entry.name


def check_source(source: Path) -> None:
    """Fail early, with the path in the message, when the source folder cannot feed a run."""
    if not source.exists():
        raise FileNotFoundError(f"source folder {str(source)!r} does not exist")
    if not source.is_dir():
        raise NotADirectoryError(f"source {str(source)!r} is not a folder")
    if not any(not is_hidden(rel) for rel in list_source(source)):
        raise ValueError(f"source folder {str(source)!r} contains no files")


def _unchanged(src: Path, dest: Path) -> bool:
    try:
        s, d = src.stat(), dest.stat()
    except FileNotFoundError:
        return False
    return s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime)


def _copy(src: Path, dest: Path) -> tuple[str, int]:
    if _unchanged(src, dest):
        return "skipped", 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Copy to a temporary name then rename: a reader never sees a half-copied image.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".orchard-")
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return "uploaded", dest.stat().st_size


def take(items: Iterable[T], limit: int | None) -> Iterator[T]:
    """The first `limit` items (all of them when limit is None or 0)."""
    for n, item in enumerate(items):
        if limit and n >= limit:
            return
        yield item


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
    source: Path,
    dest: str | Path,
    copy_one: Callable[[str], tuple[str, str, int | str]],
    limit: int | None,
    workers: int,
) -> SyncReport:
    """Run `copy_one(relative path)` over the source's files on `workers` threads, count and log outcomes.

    `copy_one` returns (path, 'uploaded' | 'skipped' | 'failed', bytes or reason). Hidden names
    are reported in `ignored`, not handed over. `limit` takes the first N files in listing order.
    """
    check_source(source)
    report = SyncReport()

    def wanted() -> Iterator[str]:
        for rel in list_source(source):
            if is_hidden(rel):
                report.ignored.append(rel)
            else:
                yield rel

    for rel, outcome, detail in bounded_map(copy_one, take(wanted(), limit), workers):
        report.record(rel, outcome, detail)
    log.info(
        "sync %s -> %s: %d uploaded, %d unchanged, %d failed, %d hidden names ignored",
        source, dest, report.uploaded, report.skipped, len(report.failed), len(report.ignored),
    )  # fmt: skip
    return report


def sync_folder(source: Path, dest: Path, limit: int | None = None, workers: int = 8) -> SyncReport:
    """Copy the files below `source` to `dest` (same relative paths), skipping unchanged ones.

    Unchanged means same size and modification time (copies keep the source's mtime), as rsync
    decides.
    """

    def one(rel: str) -> tuple[str, str, int | str]:
        try:
            outcome, size = _copy(source / rel, dest / rel)
            return rel, outcome, size
        except OSError as exc:
            return rel, "failed", f"{type(exc).__name__}: {exc}"

    return sync_each(source, dest, one, limit, workers)


def merge_csv(header: Iterable[str], parts_dir: Path, dest: Path) -> None:
    """Write `dest` as one CSV: the header row, then every part file in name order.

    Streams part by part, so memory stays flat however large the table is. Written to a
    temporary file and renamed, so a reader never sees a half-written CSV.
    """
    parts = sorted(p for p in parts_dir.iterdir() if p.name.startswith("part-"))
    with replaced_atomically(dest) as out:
        out.write((",".join(header) + "\n").encode("utf-8"))
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


@contextmanager
def replaced_atomically(dest: Path) -> Generator[BinaryIO]:
    """A binary file that becomes `dest` only when the block completes: readers never see half of it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".orchard-", suffix=dest.suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
