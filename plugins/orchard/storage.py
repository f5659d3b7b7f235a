"""Moving files into and out of the lake: the image sync and the one-file CSV assembly."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
import unicodedata
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
    import pyarrow as pa
    import pyarrow.parquet as pq

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


def is_hidden(rel_path: str) -> bool:
    """Names Spark's file listing never reads ('.x', '_x' at any depth), so they are not inputs."""
    return any(part.startswith((".", "_")) for part in Path(rel_path).parts)


def shown(rel: str) -> str:
    """A relative path as text: bytes that are not UTF-8 (kept by os as surrogates) shown as \\xNN."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_problem(rel: str) -> str | None:
    """Why a file name cannot travel through the pipeline (S3 keys, Parquet, CSV), or None."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8: rename the file"
    for char in rel:
        if unicodedata.category(char) == "Cc":
            name = {"\n": "newline", "\r": "carriage return", "\t": "tab"}.get(char, f"U+{ord(char):04X}")
            return f"file name contains a control character ({name}): rename the file"
    return None


def walk_source(source: Path) -> Iterator[tuple[str, str | None]]:
    """(relative path, problem or None) of every file below `source`, depth-first in name order.

    Follows symbolic links, as a user's folder means them, but reports a broken link, a link loop,
    a folder that cannot be read, or something that is not a regular file as a problem instead of
    skipping it: every entry ends in exactly one outcome. Streams the walk.
    """
    top = source.stat()
    yield from _walk(source, "", frozenset({(top.st_dev, top.st_ino)}))


def _walk(
    folder: Path, prefix: str, ancestors: frozenset[tuple[int, int]]
) -> Iterator[tuple[str, str | None]]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        yield prefix.rstrip("/") or ".", f"folder cannot be read: {os_reason(exc)}"
        return
    for entry in entries:
        rel = prefix + entry.name
        try:
            info = os.stat(entry.path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                yield rel, "symbolic link loop: it points back to itself"
            elif entry.is_symlink() and exc.errno == errno.ENOENT:
                yield rel, "broken symbolic link: its target does not exist"
            else:
                yield rel, f"cannot be read: {os_reason(exc)}"
            continue
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                yield rel, "symbolic link loop: it points to a folder that contains it"
                continue
            yield from _walk(Path(entry.path), rel + "/", ancestors | {key})
        elif stat.S_ISREG(info.st_mode):
            yield rel, name_problem(rel)
        else:
            yield rel, "not a regular file (a pipe, socket or device)"


def os_reason(exc: OSError) -> str:
    """An OSError as a short, stable reason (no paths, no object reprs)."""
    return (exc.strerror or type(exc).__name__).lower()


def list_source(source: Path) -> Iterator[str]:
    """Relative paths of the files below `source` that can be inputs, depth-first in name order."""
    for rel, problem in walk_source(source):
        if problem is None:
            yield rel


def check_source(source: Path) -> None:
    """Fail early, with the path in the message, when the source folder cannot feed a run."""
    if not source.exists():
        raise FileNotFoundError(f"source folder {str(source)!r} does not exist")
    if not source.is_dir():
        raise NotADirectoryError(f"source {str(source)!r} is not a folder")
    if not any(not is_hidden(rel) for rel, _ in walk_source(source)):
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
    # A reader never sees a half-copied image; the copy keeps the source's times (see _unchanged).
    with replaced_atomically(dest, stat_from=src) as out, src.open("rb") as handle:
        shutil.copyfileobj(handle, out, 1 << 20)
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
    entries: Iterable[tuple[str, str | None]],
    dest: str | Path,
    copy_one: Callable[[str], tuple[str, str, int | str, str | None]],
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

    Unchanged means same size and modification time (copies keep the source's mtime), as rsync
    decides. Files gone from the source are removed from `dest`: the lake's copy of a dataset is
    the source as of the last upload.
    """
    check_source(source)

    def one(rel: str) -> tuple[str, str, int | str, str | None]:
        src = source / rel
        try:  # what the source gives: a file that cannot be read is quarantined, not fatal
            size, digest = src.stat().st_size, file_sha256(src)
        except OSError as exc:
            return rel, "quarantined", f"cannot be read: {os_reason(exc)}", None
        try:
            outcome, _ = _copy(src, dest / rel)
            return rel, outcome, size, digest
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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def replaced_atomically(dest: Path, stat_from: Path | None = None) -> Generator[BinaryIO]:
    """A binary file that becomes `dest` only when the block completes: readers never see half of it.

    Written next to `dest` and renamed (atomic within one filesystem); with `stat_from`, it takes
    that file's permission bits and times first.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".orchard-", suffix=dest.suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        if stat_from is not None:
            shutil.copystat(stat_from, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
