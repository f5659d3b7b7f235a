"""Files of a source folder and of a local lake: the walk, the names that cannot be inputs, content
digests, and writes a reader never sees half of."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import unicodedata
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
