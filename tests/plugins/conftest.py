"""The lake on every backend: a local folder, moto's S3 server, and the local stack's SeaweedFS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchard.clients import s3_access
from orchard.storage.lake import Lake

REGION = "eu-west-1"
BUCKET = "orchard-lake"
SSE_S3 = {"ServerSideEncryption": "AES256"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3", "seaweedfs"])
def lake(request, tmp_path, monkeypatch) -> Iterator[tuple[Lake, str]]:
    """(the lake, its root URI): a folder, a fresh bucket on moto's server, or one on SeaweedFS."""
    if request.param == "local":
        yield Lake.local(), f"file://{tmp_path}/lake"
        return
    if request.param == "seaweedfs":
        from tests.s3_store import empty_bucket

        store = request.getfixturevalue("seaweedfs_store")
        # boto3's default session keeps the first credentials it resolved (moto's, in this module).
        monkeypatch.setattr("boto3.DEFAULT_SESSION", None)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.secret_key)
        client, fs = s3_access(REGION, SSE_S3, endpoint_url=store.endpoint)
        empty_bucket(client, BUCKET)
        yield Lake(fs, client, SSE_S3), f"s3://{BUCKET}/lake"
        return
    import requests

    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAORCHARDLAKETEST1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "lake-test-secret-not-real")
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)
    client, fs = s3_access(REGION, SSE_S3, endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    yield Lake(fs, client, SSE_S3), f"s3://{BUCKET}/lake"
