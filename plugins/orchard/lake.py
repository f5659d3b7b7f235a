"""The lake: one interface, one behaviour, on a local folder, an S3-compatible store and S3.

Reads, listings and small writes go through fsspec (LocalFileSystem, or s3fs for s3:// and s3a://
URIs); the two operations that need S3's own API stay Orchard's and run on the lake's boto3 client:
the image sync (content hashes, a per-file report) and the CSV merge (multipart copy inside S3).
Both clients come from `s3_access`, from one set of credentials, with the same retries.

On every backend: a missing file raises FileNotFoundError, `exists` is exact (`runs/r1` does not
exist because `runs/r10` does), a write replaces the whole file at once (a temporary file renamed
locally; one PUT on S3), and every S3 write is encrypted (SSE-S3, or SSE-KMS with the configured key).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchard.layout import local_path
from orchard.storage import SyncReport, check_source, replaced_atomically, sync_folder

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem

    from orchard.config import Settings

log = logging.getLogger(__name__)

# Transient S3 errors (500, 503 SlowDown, throttling, connection resets) are retried by botocore
# with exponential backoff and jitter, up to 10 attempts per request: the boto3 client and s3fs alike.
RETRIES: dict[str, Any] = {"retries": {"mode": "standard", "total_max_attempts": 10}}
S3_SCHEMES = ("s3://", "s3a://")


def on_s3(uri: str) -> bool:
    """Whether `uri` names an S3 (or S3-compatible) location rather than a local file."""
    return uri.startswith(S3_SCHEMES)


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key or prefix without trailing slash) of an s3:// or s3a:// URI."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in {"s3", "s3a"}:
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = rest.partition("/")
    return bucket, key.rstrip("/")


@dataclass(frozen=True)
class Lake:
    """The lake's files by URI (file://, s3://, s3a://), on `fs`; `client` is boto3's, on S3 only."""

    fs: AbstractFileSystem
    client: Any = None
    encryption: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def local(cls) -> Lake:
        """A lake in a local folder (file:// URIs)."""
        from fsspec.implementations.local import LocalFileSystem

        return cls(LocalFileSystem())

    @property
    def on_s3(self) -> bool:
        """Whether this lake is on S3 (or an S3-compatible store)."""
        return self.client is not None

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
        with replaced_atomically(Path(self._path(uri))) as out:
            out.write(data)

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

    def read_parquet(self, uri: str) -> pd.DataFrame:
        """A Parquet folder (Spark's output; its `_SUCCESS` and `.crc` files skipped) as pandas."""
        import pandas as pd

        parts = [u for u in self.list_files(uri) if u.endswith(".parquet") and not _hidden(u)]
        if not parts:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        return pd.concat(
            [pd.read_parquet(io.BytesIO(self.read_bytes(part))) for part in parts], ignore_index=True
        )

    def merge_csv(self, header: Iterable[str], parts_uri: str, dest_uri: str) -> dict[str, Any]:
        """One CSV at `dest_uri`: the header row, then the `part-*` files below `parts_uri` in name order.

        On S3 the large parts are copied inside S3 (multipart upload); the returned statistics say
        how many bytes were copied there and sent from here. Locally the parts are streamed into a
        temporary file that is renamed at the end: readers never see half a CSV.
        """
        if self.on_s3:
            from orchard.s3 import assemble_csv

            return assemble_csv(self.client, header, parts_uri, dest_uri, self.encryption)
        parts = [u for u in self.list_files(parts_uri) if u.rsplit("/", 1)[-1].startswith("part-")]
        with replaced_atomically(Path(self._path(dest_uri))) as out:
            out.write((",".join(header) + "\n").encode("utf-8"))
            for part in parts:
                with self.fs.open(self._path(part), "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        return {}

    def mirror(self, source: str, images_uri: str, limit: int | None = None) -> tuple[str, SyncReport]:
        """Mirror `source` (a folder, or an s3:// prefix on an S3 lake) below `images_uri`.

        Checks the source first (missing or empty: ValueError naming it). Returns the source as
        recorded (a resolved path or the URI) and the per-file report. Files are skipped when the
        lake holds the same bytes; files gone from the source are deleted from `images_uri`. A
        source on S3 is copied inside S3: its bytes never pass through this process.
        """
        from orchard import s3

        if on_s3(source):
            if not self.on_s3:
                raise ValueError(f"source {source!r} is on S3; it needs a lake on S3 (ORCHARD_LAKE=s3://...)")
            uri = source_location(source)
            try:  # before anything is copied or any cluster is created
                s3.check_s3_source(self.client, uri)
            except (OSError, ValueError) as exc:
                raise ValueError(f"source: {exc}") from exc
            return uri, s3.sync_s3_to_s3(uri, images_uri, self.client, self.encryption, limit)
        folder = Path(source_location(source))
        try:  # before anything is uploaded or any cluster is created
            check_source(folder)
        except (OSError, ValueError) as exc:
            raise ValueError(f"source: {exc}") from exc
        if self.on_s3:
            return str(folder), s3.sync_to_s3(folder, images_uri, self.client, self.encryption, limit)
        return str(folder), sync_folder(folder, Path(self._path(images_uri)), limit=limit)


def source_location(source: str) -> str:
    """A source as a run records it: an s3:// URI without empty parts, or a resolved folder path."""
    if on_s3(source):
        return "s3://" + "/".join(part for part in split_uri(source) if part)
    return str(Path(source).expanduser().resolve())


def _hidden(uri: str) -> bool:
    return uri.rsplit("/", 1)[-1].startswith(("_", "."))


def s3_access(
    region: str | None,
    encryption: Mapping[str, str],
    *,
    conn_id: str | None = None,
    endpoint_url: str | None = None,
) -> tuple[Any, AbstractFileSystem]:
    """The lake's boto3 S3 client and s3fs filesystem, both with RETRIES, from one set of credentials.

    With `conn_id`: the Airflow connection's (credentials, endpoint), as the provider's S3Hook reads
    it; else the standard AWS chain, at `endpoint_url` when given (the stack's SeaweedFS). Credentials
    never in code.
    """
    from botocore.config import Config
    from s3fs import S3FileSystem

    options: dict[str, Any] = {
        "config_kwargs": RETRIES,
        "s3_additional_kwargs": dict(encryption),
        # Spark writes to the lake behind this process's back: no cached listings.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if conn_id is not None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=conn_id, region_name=region, config=Config(**RETRIES))
        client = hook.get_conn()
        # As the provider's own fsspec support does (airflow.providers.amazon.aws.fs.s3.get_fs), with
        # our retries and encryption, which its get_fs cannot take.
        endpoint = hook.conn_config.get_service_endpoint_url(service_name="s3")
        fs = S3FileSystem(
            session=hook.get_session(deferrable=True),
            endpoint_url=endpoint,
            client_kwargs={"region_name": region or hook.conn_region_name},
            **options,
        )
        return client, fs
    import boto3

    client = boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=Config(**RETRIES))
    fs = S3FileSystem(endpoint_url=endpoint_url, client_kwargs={"region_name": region}, **options)
    return client, fs


def lake_for(settings: Settings, conn_id: str | None = None) -> Lake:
    """The lake of these settings: a local folder, or S3 through `conn_id` or the standard AWS chain."""
    if not settings.lake_on_s3:
        return Lake.local()
    client, fs = s3_access(
        settings.region, settings.encryption, conn_id=conn_id, endpoint_url=settings.s3_endpoint
    )
    return Lake(fs, client, settings.encryption)


def airflow_lake(settings: Settings) -> Lake:
    """The lake as an Airflow task (or the api-server) reaches it: on S3 through the Airflow connection."""
    return lake_for(settings, settings.aws_conn_id if settings.lake_on_s3 else None)
