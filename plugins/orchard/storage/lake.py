"""The lake: one interface, one behaviour, on a local folder, an S3-compatible store and S3.

Reads, listings and small writes go through fsspec (LocalFileSystem, or s3fs for s3:// and s3a://
URIs); what needs S3's own API runs on the lake's boto3 client (orchard.storage.s3): the image
sync (content hashes, a per-file report), the CSV merge (multipart copy inside S3) and the staged
uploads. Both clients come from orchard.clients, from one set of credentials, with the same retries.
Nothing outside this class touches the boto3 client.

On every backend: a missing file raises FileNotFoundError, `exists` is exact (`runs/r1` does not
exist because `runs/r10` does), a write replaces the whole file at once (a temporary file renamed
locally; one PUT on S3), and every S3 write is encrypted (SSE-S3, or SSE-KMS with the configured key).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

from orchard import clients
from orchard.layout import LakeLayout
from orchard.storage import s3
from orchard.storage.files import check_source, is_hidden, list_source, replaced_atomically
from orchard.storage.sync import SyncReport, sync_folder
from orchard.uris import local_path, on_s3, source_location, split_uri

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem
    from types_boto3_s3 import S3Client

    from orchard.config import Settings


@dataclass(frozen=True)
class Entry:
    """A file of the lake: its URI, size in bytes and last modification (UTC)."""

    uri: str
    size: int
    modified: dt.datetime


# The version of the lake's layout (orchard.layout), recorded in LakeLayout.format_file.
# 1: a run's `features` held the vectors. 2: a run's `features` is an index into the features
# cache (the vectors are stored once). Version 1 lakes are read as they are: their runs keep
# vectors, readers tell the two apart by the columns (the index has `segment`), and the record
# is moved to 2. A lake written before any version was recorded is version 1.
LAKE_FORMAT = 2
# Versions this code upgrades in place (nothing to rewrite).
READABLE_FORMATS = (1,)


@dataclass(frozen=True)
class Lake:
    """The lake's files by URI (file://, s3://, s3a://), on `fs`; on S3 also boto3's client, for the
    operations that need S3's own API (`_s3`), which nothing outside this class reaches."""

    fs: AbstractFileSystem
    _s3: S3Client | None = None
    encryption: clients.Encryption = field(default_factory=clients.Encryption)

    @classmethod
    def local(cls) -> Lake:
        """A lake in a local folder (file:// URIs)."""
        return cls(LocalFileSystem())

    @property
    def on_s3(self) -> bool:
        """Whether this lake is on S3 (or an S3-compatible store)."""
        return self._s3 is not None

    def _path(self, uri: str) -> str:
        """`uri` as `fs` names it: a local path, or bucket/key."""
        if on_s3(uri):
            if not self.on_s3:
                raise ValueError(f"{uri!r} is on S3, but this lake is a local folder")
            bucket, key = split_uri(uri)
            return f"{bucket}/{key}"
        if self.on_s3:
            raise ValueError(f"{uri!r} is not on S3, but this lake is")
        return str(local_path(uri))

    def read_bytes(self, uri: str) -> bytes:
        """A whole file (FileNotFoundError when there is none)."""
        data: bytes = self.fs.cat_file(self._path(uri))
        return data

    def read_json(self, uri: str) -> Any:
        """A small JSON document (FileNotFoundError when there is none)."""
        return json.loads(self.read_bytes(uri))

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """A whole file, replaced at once; encrypted on S3."""
        if self.on_s3:  # one PUT: S3 replaces an object atomically; SSE from s3_additional_kwargs
            self.fs.pipe_file(self._path(uri), data, ContentType=content_type)
            return
        # fsspec's local transactions write their temporary file in /tmp and move it: across
        # filesystems that is a copy a reader can see half of. A rename in the same folder is not.
        path = Path(self._path(uri))
        with replaced_atomically(path) as out:
            out.write(data)
        # A file Spark wrote has Hadoop's checksum beside it (.<name>.crc): it describes the old
        # bytes, and Spark would refuse the new ones (ChecksumException), so it goes with them.
        path.with_name(f".{path.name}.crc").unlink(missing_ok=True)

    def write_json(self, uri: str, payload: Mapping[str, Any]) -> None:
        """A small JSON document, replaced at once."""
        body = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")
        self.write_bytes(uri, body, "application/json")

    def exists(self, uri: str) -> bool:
        """Whether exactly this file, or a folder of exactly this name, is there."""
        return bool(self.fs.exists(self._path(uri)))

    def delete(self, uri: str) -> None:
        """Remove one file (FileNotFoundError when there is none, on S3 too)."""
        path = self._path(uri)
        if not self.fs.isfile(path):
            raise FileNotFoundError(uri)
        self.fs.rm_file(path)

    def list_files(self, prefix_uri: str) -> list[str]:
        """URIs of all files below a folder, in name order (none when there is no such folder)."""
        root = self._path(prefix_uri).rstrip("/")
        base = prefix_uri.rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return []
        files = sorted(p[len(root) + 1 :] for p in found if p.startswith(root + "/") and not p.endswith("/"))
        return [f"{base}/{rel}" for rel in files]

    def list_entries(self, prefix_uri: str) -> list[Entry]:
        """Every file below a folder with its size and modification time, in name order."""
        root = self._path(prefix_uri).rstrip("/")
        base = prefix_uri.rstrip("/")
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return []
        entries = []
        for path, info in sorted(found.items()):
            if not path.startswith(root + "/") or path.endswith("/") or info.get("type") == "directory":
                continue
            # s3fs gives LastModified (a datetime), the local file system mtime (seconds).
            stamp = info.get("LastModified") or dt.datetime.fromtimestamp(info["mtime"], dt.UTC)
            entries.append(Entry(f"{base}/{path[len(root) + 1 :]}", int(info.get("size") or 0), stamp))
        return entries

    def delete_folder(self, uri: str) -> None:
        """Remove a folder and everything below it (batched on S3: up to 1,000 keys per request)."""
        path = self._path(uri).rstrip("/")
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def read_parquet(self, uri: str) -> pd.DataFrame:
        """A Parquet folder (Spark's output; its `_SUCCESS` and `.crc` files skipped) as pandas."""
        # Deferred: pandas takes ~0.45 s to import, for the report alone, not each time a DAG is parsed.
        import pandas as pd  # ruff: ignore[import-outside-top-level]

        parts = self._parquet_parts(uri)
        if not parts:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        return pd.concat(
            [pd.read_parquet(io.BytesIO(self.read_bytes(part))) for part in parts], ignore_index=True
        )

    def _parquet_parts(self, uri: str) -> list[str]:
        """The Parquet files below a folder Spark wrote (its `_SUCCESS` and `.crc` files skipped)."""
        folder = uri.rstrip("/")
        return [
            u for u in self.list_files(uri) if u.endswith(".parquet") and not is_hidden(u[len(folder) + 1 :])
        ]

    def read_column(self, uri: str, column: str) -> list[Any]:
        """One column of a Parquet file, or of every Parquet file below a folder (none: empty).

        Only that column's pages are read (ranged reads on S3), not the files' other columns.
        """
        import pyarrow.parquet as pq  # ruff: ignore[import-outside-top-level] - as read_parquet's pandas

        values: list[Any] = []
        for part in [uri] if uri.endswith(".parquet") else self._parquet_parts(uri):
            with self.fs.open(self._path(part), "rb") as handle:
                values += pq.read_table(handle, columns=[column]).column(column).to_pylist()
        return values

    def merge_csv(self, header: Iterable[str], parts_uri: str, dest_uri: str) -> dict[str, int]:
        """One CSV at `dest_uri`: the header row, then the `part-*` files below `parts_uri` in name order.

        On S3 the large parts are copied inside S3 (multipart upload); locally the parts are streamed
        into a temporary file renamed at the end: readers never see half a CSV. Returns the same
        statistics on both (s3.merge_stats): part files, bytes, and on S3 how the bytes travelled.
        """
        if self._s3 is not None:
            return s3.assemble_csv(self._s3, header, parts_uri, dest_uri, self.encryption)
        parts = [u for u in self.list_files(parts_uri) if u.rsplit("/", 1)[-1].startswith("part-")]
        with replaced_atomically(Path(self._path(dest_uri))) as out:
            out.write((",".join(header) + "\n").encode("utf-8"))
            for part in parts:
                with self.fs.open(self._path(part), "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            size = out.tell()
        return s3.merge_stats(len(parts), size)

    def upload_files(self, files: Mapping[str, Path], dest_uri: str) -> dict[str, str]:
        """Local files by name under a content-hashed prefix, each sent once; name -> URI."""
        if self._s3 is not None:
            return s3.upload_files(self._s3, files, dest_uri, self.encryption)
        uris = {}
        for name, path in files.items():
            uri = f"{dest_uri}/{name}"
            if not self.exists(uri):
                with replaced_atomically(Path(self._path(uri))) as out, path.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            uris[name] = uri
        return uris

    def check_format(self, lake_uri: str) -> int:
        """The lake's layout version, recorded when absent; a clear error for a lake this code cannot read.

        A lake written before versions were recorded has version 1; a version this code upgrades
        in place (READABLE_FORMATS) is recorded as today's. A newer version means a newer Orchard
        wrote it: refused rather than guessed at.
        """
        uri = LakeLayout(lake_uri).format_file
        try:
            found = int(self.read_json(uri)["format"])
        except FileNotFoundError:
            found = 1 if self.exists(LakeLayout(lake_uri).runs) else LAKE_FORMAT
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{uri} is not a lake format record ({exc!r}): restore it or remove it") from exc
        if found in READABLE_FORMATS or not self.exists(uri):
            self.write_json(
                uri, {"format": LAKE_FORMAT, **({"upgraded_from": found} if found != LAKE_FORMAT else {})}
            )
            return LAKE_FORMAT
        if found != LAKE_FORMAT:
            newer = "a newer" if found > LAKE_FORMAT else "an older"
            raise ValueError(
                f"the lake {lake_uri} has layout version {found}, written by {newer} Orchard; this one "
                f"reads version {LAKE_FORMAT}: use the matching Orchard, or a new ORCHARD_LAKE"
            )
        return found

    def source_listing(self, source: str) -> Iterator[tuple[str, int, str]]:
        """(relative path, size, version) of every file of a source that can be an input.

        The version is what changes with the content without reading it: a file's modification
        time (ns), an object's ETag. A source on S3 needs a lake on S3.
        """
        location = source_location(source)
        if on_s3(location):
            if self._s3 is None:
                raise ValueError(f"source {source!r} is on S3; it needs a lake on S3 (ORCHARD_LAKE=s3://...)")
            for rel, problem, size, etag in s3.walk_s3(self._s3, location):
                if problem is None and not is_hidden(rel):
                    yield rel, size, etag
            return
        folder = Path(location)
        for rel in list_source(folder):
            if not is_hidden(rel):
                info = (folder / rel).stat()
                yield rel, info.st_size, str(info.st_mtime_ns)

    def mirror(self, source: str, images_uri: str, limit: int | None = None) -> tuple[str, SyncReport]:
        """Mirror `source` (a folder, or an s3:// prefix on an S3 lake) below `images_uri`.

        Checks the source first (missing or empty: ValueError naming it). Returns the source as
        recorded (a resolved path or the URI) and the per-file report. Files are skipped when the
        lake holds the same bytes; files gone from the source are deleted from `images_uri`. A
        source on S3 is copied inside S3: its bytes never pass through this process.
        """
        if on_s3(source):
            if self._s3 is None:
                raise ValueError(f"source {source!r} is on S3; it needs a lake on S3 (ORCHARD_LAKE=s3://...)")
            uri = source_location(source)
            try:  # before anything is copied or any cluster is created
                s3.check_s3_source(self._s3, uri)
            except (OSError, ValueError) as exc:
                raise ValueError(f"source: {exc}") from exc
            return uri, s3.sync_s3_to_s3(uri, images_uri, self._s3, self.encryption, limit)
        folder = Path(source_location(source))
        try:  # before anything is uploaded or any cluster is created
            check_source(folder)
        except (OSError, ValueError) as exc:
            raise ValueError(f"source: {exc}") from exc
        if self._s3 is not None:
            return str(folder), s3.sync_to_s3(folder, images_uri, self._s3, self.encryption, limit)
        return str(folder), sync_folder(folder, Path(self._path(images_uri)), limit=limit)


def lake_for(settings: Settings, conn_id: str | None = None) -> Lake:
    """The lake of these settings: a local folder, or S3 through `conn_id` or the standard AWS chain."""
    if not settings.lake_on_s3:
        return Lake.local()
    client, fs = clients.s3_access(
        settings.region, settings.encryption, conn_id=conn_id, endpoint_url=settings.s3_endpoint
    )
    return Lake(fs, client, settings.encryption)


def create_bucket(settings: Settings) -> bool:
    """Create the lake's bucket (standard AWS chain) if it is not there yet; True when it was created."""
    client, _ = clients.s3_access(settings.region, settings.encryption, endpoint_url=settings.s3_endpoint)
    return s3.create_bucket(client, split_uri(settings.lake)[0], settings.region)


def airflow_lake(settings: Settings) -> Lake:
    """The lake as an Airflow task (or the api-server) reaches it: on S3 through the Airflow connection."""
    return lake_for(settings, settings.aws_conn_id if settings.lake_on_s3 else None)
