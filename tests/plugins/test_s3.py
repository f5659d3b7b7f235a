"""The S3 lake against moto and against the stack's real store (SeaweedFS): hash-checked sync,
encryption, clear errors, server-side copies and CSV merge."""

from __future__ import annotations

import random

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from orchard import cli
from orchard.clients import s3_access
from orchard.storage import s3
from orchard.storage.s3 import HEADER, plan_merge, sync_to_s3
from orchard.storage.s3 import assemble_csv as merge_csv
from tests.s3_store import empty_bucket

BUCKET = "orchard-lake"
SSE_S3 = {"ServerSideEncryption": "AES256"}
MIB = 1024 * 1024


@pytest.fixture
def moto_client():
    with mock_aws():
        c = boto3.client("s3", region_name="eu-west-1")
        c.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield c


@pytest.fixture(params=["moto", "seaweedfs"])
def client(request):
    """An S3 client with an empty lake bucket: moto in-process, or the stack's SeaweedFS binary."""
    if request.param == "moto":
        yield request.getfixturevalue("moto_client")
        return
    c = request.getfixturevalue("seaweedfs_store").client()
    empty_bucket(c, BUCKET)
    yield c


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    for i in range(12):
        path = src / f"class {i % 3}" / f"img {i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (100 + i))
    (src / ".DS_Store").write_bytes(b"x")
    return src


def keys(client, prefix="images/"):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


@pytest.mark.backs("every S3 write encrypted")
def test_sync_uploads_encrypted_objects_with_their_hash(client, source):
    report = sync_to_s3(source, f"s3://{BUCKET}/images/ds", client, SSE_S3)
    assert (report.uploaded, report.skipped, report.failed) == (12, 0, {})
    assert report.ignored == [".DS_Store"]
    assert len(keys(client)) == 12
    head = client.head_object(Bucket=BUCKET, Key="images/ds/class 1/img 4.jpg")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == s3.file_sha256(source / "class 1" / "img 4.jpg")


@pytest.mark.backs("a file replaced by different content under the same name", "re-sync to S3")
def test_second_sync_uploads_nothing_and_a_changed_file_goes_again(client, source):
    sync_to_s3(source, f"s3://{BUCKET}/images/ds", client, SSE_S3)
    again = sync_to_s3(source, f"s3://{BUCKET}/images/ds", client, SSE_S3)
    assert (again.uploaded, again.skipped) == (0, 12)

    target = source / "class 0" / "img 3.jpg"
    target.write_bytes(b"Z" * target.stat().st_size)  # same size, new content
    changed = sync_to_s3(source, f"s3://{BUCKET}/images/ds", client, SSE_S3)
    assert (changed.uploaded, changed.skipped) == (1, 11)
    body = client.get_object(Bucket=BUCKET, Key="images/ds/class 0/img 3.jpg")["Body"].read()
    assert body == target.read_bytes()


@pytest.mark.backs("every S3 write encrypted")
def test_sync_with_a_kms_key(moto_client, source):
    client = moto_client
    key_id = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
    sse_kms = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id}
    sync_to_s3(source, f"s3://{BUCKET}/images/kms", client, sse_kms, limit=2)
    head = client.head_object(Bucket=BUCKET, Key=keys(client, "images/kms/")[0])
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def test_missing_bucket_fails_clearly(client, source):
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        sync_to_s3(source, "s3://no-such-bucket/images", client, SSE_S3)


def test_forbidden_bucket_fails_clearly(source):
    client = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_client_error("list_objects_v2", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(PermissionError, match="forbidden"):
            sync_to_s3(source, f"s3://{BUCKET}/images", client, SSE_S3)


def covered(plan, header_len, objects):
    """The byte ranges a plan writes, in order, merged per object."""
    pieces = []
    for kind, what in plan:
        for key, start, end in [what] if kind == "copy" else what:
            if pieces and pieces[-1][0] == key and pieces[-1][2] == start:
                pieces[-1] = (key, pieces[-1][1], end)
            else:
                pieces.append((key, start, end))
    return pieces, [(HEADER, 0, header_len)] + [(k, 0, s) for k, s in objects if s]


@pytest.mark.parametrize("seed", range(30))
def test_plan_merge_covers_everything_in_order_with_valid_part_sizes(seed):
    rng = random.Random(seed)
    min_part = 100
    objects = [
        (f"part-{i:05d}", rng.choice([0, 1, 7, 60, 99, 100, 101, 250, 1000]))
        for i in range(rng.randint(1, 12))
    ]
    plan = plan_merge(15, objects, min_part)
    got, expected = covered(plan, 15, objects)
    assert got == expected
    sizes = [what[2] - what[1] if kind == "copy" else sum(e - s for _, s, e in what) for kind, what in plan]
    assert all(size >= min_part for size in sizes[:-1]), sizes
    # Large objects are copied inside S3, not sent through the worker.
    assert all(kind == "upload" or what[2] - what[1] >= min_part for kind, what in plan)


def test_merge_copies_large_parts_server_side(client):
    data = {
        "runs/r/csv_parts/part-00000.csv": b"a,1\n" * (12 * MIB // 4),
        "runs/r/csv_parts/part-00001.csv": b"b,2\n" * 100,
        "runs/r/csv_parts/part-00002.csv": b"",
        "runs/r/csv_parts/part-00003.csv": b"c,3\n" * (12 * MIB // 4),
        "runs/r/csv_parts/part-00004.csv": b"d,4\n" * 10,
        "runs/r/csv_parts/_SUCCESS": b"",
    }
    for key, body in data.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)

    stats = merge_csv(
        client, ["path", "pc_1"], f"s3://{BUCKET}/runs/r/csv_parts", f"s3://{BUCKET}/runs/r/out.csv", SSE_S3
    )

    got = client.get_object(Bucket=BUCKET, Key="runs/r/out.csv")
    expected = b"path,pc_1\n" + b"".join(v for k, v in sorted(data.items()) if "part-" in k)
    assert got["Body"].read() == expected
    assert got["ServerSideEncryption"] == "AES256"
    # Only what must be glued to a neighbour (header, small parts, 5 MiB top-ups) is sent.
    assert stats["bytes_copied_in_s3"] > 14 * MIB
    assert stats["bytes_sent"] < 11 * MIB
    assert stats["bytes_copied_in_s3"] + stats["bytes_sent"] == len(expected)


def test_small_merge_is_one_part(client):
    client.put_object(Bucket=BUCKET, Key="p/part-00000.csv", Body=b"x,1\n")
    stats = merge_csv(client, ["path", "pc_1"], f"s3://{BUCKET}/p", f"s3://{BUCKET}/o.csv", SSE_S3)
    assert stats == {
        "part_files": 1,
        "bytes": 14,
        "upload_parts": 1,
        "bytes_copied_in_s3": 0,
        "bytes_sent": 14,
    }
    assert client.get_object(Bucket=BUCKET, Key="o.csv")["Body"].read() == b"path,pc_1\nx,1\n"


@pytest.mark.backs("staged code (jobs, bootstrap, wheelhouse)")
def test_staged_files_already_under_their_content_prefix_are_not_sent_again(client, tmp_path, monkeypatch):
    job = tmp_path / "pca.py"
    job.write_text("print('pca')\n")
    uris = s3.upload_files(client, {"pca.py": job}, f"s3://{BUCKET}/artifacts/abc", SSE_S3)
    assert uris == {"pca.py": f"s3://{BUCKET}/artifacts/abc/pca.py"}
    assert client.head_object(Bucket=BUCKET, Key="artifacts/abc/pca.py")["ServerSideEncryption"] == "AES256"

    sent = []
    monkeypatch.setattr(client, "upload_file", lambda *args, **kwargs: sent.append(args))
    assert s3.upload_files(client, {"pca.py": job}, f"s3://{BUCKET}/artifacts/abc", SSE_S3) == uris
    assert sent == []


class _Body:
    """The raw body of a canned HTTP response."""

    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def flaky(client, operation: str, failures: int, status: int = 503) -> list[int]:
    """Make the first `failures` calls of `operation` fail with `status` before reaching S3 (moto)."""
    from botocore.awsrequest import AWSResponse

    calls: list[int] = []

    def respond(request, **_):
        calls.append(1)
        if len(calls) <= failures:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return AWSResponse(request.url, status, {}, _Body(body))
        return None

    client.meta.events.register_first(f"before-send.s3.{operation}", respond)
    return calls


def put_json(client, key: str) -> None:
    client.put_object(Bucket="lake", Key=key, Body=b'{"ok": true}', ServerSideEncryption="AES256")


@pytest.mark.backs("transient S3 errors (503 SlowDown)")
def test_transient_s3_errors_are_retried_with_backoff(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _: None)  # botocore's backoff, skipped in the test
    with mock_aws():
        client, _ = s3_access("eu-west-1", SSE_S3)  # the lake's client
        client.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        calls = flaky(client, "PutObject", failures=3)
        put_json(client, "runs/r/manifest.json")
        assert len(calls) == 4  # three 503 SlowDown, then success
        assert client.get_object(Bucket="lake", Key="runs/r/manifest.json")["Body"].read() == b'{"ok": true}'


@pytest.mark.backs("the same fault without the retry configuration")
def test_without_the_retry_configuration_the_same_fault_fails(monkeypatch):
    from botocore.config import Config
    from botocore.exceptions import ClientError

    monkeypatch.setattr("time.sleep", lambda _: None)
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1", config=Config(retries={"max_attempts": 1}))
        client.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        flaky(client, "PutObject", failures=3)
        with pytest.raises(ClientError, match="SlowDown"):
            put_json(client, "x.json")


def test_airflow_and_cli_clients_carry_the_retry_configuration(monkeypatch):
    from orchard.clients import RETRIES
    from orchard.config import Settings
    from orchard.storage.lake import airflow_lake, lake_for

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    settings = Settings.from_env({"ORCHARD_LAKE": "s3://lake/x"})
    with mock_aws():
        for lake in (airflow_lake(settings), lake_for(settings)):
            assert lake._s3 is not None
            assert lake._s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 10}
            assert lake.fs.config_kwargs == RETRIES  # s3fs: the same retries on its botocore config
            # No encryption header by default: every write takes the bucket's default encryption.
            assert lake.fs.s3_additional_kwargs == {}


# What only the real store shows: moto checks no signature, stores objects in memory and reports
# what it was sent. These run on the stack's S3 store (SeaweedFS) alone.


@pytest.fixture
def store_client(seaweedfs_store):
    c = seaweedfs_store.client()
    empty_bucket(c, BUCKET)
    return c


def test_the_store_refuses_a_wrong_secret(seaweedfs_store):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        seaweedfs_store.client(secret="not-the-secret").list_objects_v2(Bucket=BUCKET)


@pytest.mark.backs("the stack's S3 store really encrypts")
def test_sse_s3_is_honoured_not_just_echoed(seaweedfs_store, store_client, tmp_path):
    """The stack claims SSE-S3: the bytes on the store's disk are not the plain bytes."""
    marker = random.Random(7).randbytes(64 * 1024)
    src = tmp_path / "src" / "class" / "secret.png"
    src.parent.mkdir(parents=True)
    src.write_bytes(marker)
    sync_to_s3(tmp_path / "src", f"s3://{BUCKET}/images/enc", store_client, SSE_S3)
    head = store_client.head_object(Bucket=BUCKET, Key="images/enc/class/secret.png")
    assert head["ServerSideEncryption"] == "AES256"
    body = store_client.get_object(Bucket=BUCKET, Key="images/enc/class/secret.png")["Body"].read()
    assert body == marker
    on_disk = b"".join(p.read_bytes() for p in seaweedfs_store.data_dir.rglob("*") if p.is_file())
    assert marker[:4096] not in on_disk
    # The control: the same bytes without SSE are found in clear, so the search itself works.
    store_client.put_object(Bucket=BUCKET, Key="plain.bin", Body=marker)
    on_disk = b"".join(p.read_bytes() for p in seaweedfs_store.data_dir.rglob("*") if p.is_file())
    assert marker[:4096] in on_disk


@pytest.mark.backs("the stack's S3 store really encrypts")
def test_the_store_cannot_do_sse_kms(store_client):
    """No KMS behind the store: the stack must not set ORCHARD_KMS_KEY_ID (tests/test_compose.py)."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        store_client.put_object(
            Bucket=BUCKET, Key="k.bin", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId="alias/orchard"
        )


def test_listings_page_with_continuation_tokens(store_client):
    for i in range(23):
        store_client.put_object(Bucket=BUCKET, Key=f"images/ds/c/{i:03d}.jpg", Body=b"x" * i)
    pages = list(
        store_client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="images/ds/", PaginationConfig={"PageSize": 10}
        )
    )
    assert [len(p.get("Contents", [])) for p in pages] == [10, 10, 3]
    assert s3.existing_sizes(store_client, BUCKET, "images/ds") == {f"c/{i:03d}.jpg": i for i in range(23)}


def test_a_large_image_is_uploaded_in_parts(store_client, tmp_path):
    """Above boto3's multipart threshold the sync sends parts (an object of N parts has an ETag ending -N)."""
    src = tmp_path / "src" / "big"
    src.mkdir(parents=True)
    data = random.Random(3).randbytes(65 * MIB)
    (src / "huge.tif").write_bytes(data)
    report = sync_to_s3(tmp_path / "src", f"s3://{BUCKET}/images/big", store_client, SSE_S3)
    assert report.uploaded == 1
    head = store_client.head_object(Bucket=BUCKET, Key="images/big/big/huge.tif")
    # Past the sync's 64 MiB threshold, boto3's 8 MiB parts: 65 MiB is 9 of them.
    assert head["ETag"].strip('"').rsplit("-", 1)[-1] == "9"
    assert head["Metadata"]["sha256"] == s3.file_sha256(src / "huge.tif")
    assert store_client.get_object(Bucket=BUCKET, Key="images/big/big/huge.tif")["Body"].read() == data


def test_an_s3_source_is_copied_inside_the_store(store_client):
    """CopyObject below the threshold, UploadPartCopy above it; unchanged objects are skipped."""
    small, large = b"s" * 1000, random.Random(5).randbytes(12 * MIB)
    store_client.put_object(Bucket=BUCKET, Key="incoming/a/small.jpg", Body=small)
    store_client.put_object(Bucket=BUCKET, Key="incoming/a/large.jpg", Body=large)
    dest = f"s3://{BUCKET}/images/incoming"
    first = s3.sync_s3_to_s3(f"s3://{BUCKET}/incoming", dest, store_client, SSE_S3, copy_threshold=5 * MIB)
    assert (first.uploaded, first.skipped, first.failed) == (2, 0, {})
    got = {
        k: store_client.get_object(Bucket=BUCKET, Key=f"images/incoming/a/{k}")
        for k in ("small.jpg", "large.jpg")
    }
    assert got["small.jpg"]["Body"].read() == small
    assert got["large.jpg"]["Body"].read() == large
    assert got["large.jpg"]["ETag"].strip('"').endswith("-3")  # three 5 MiB parts, copied server-side
    assert all(g["ServerSideEncryption"] == "AES256" for g in got.values())
    again = s3.sync_s3_to_s3(f"s3://{BUCKET}/incoming", dest, store_client, SSE_S3, copy_threshold=5 * MIB)
    assert (again.uploaded, again.skipped) == (0, 2)


def test_the_csv_is_assembled_with_upload_part_copy(store_client):
    big = b"a,1\n" * (12 * MIB // 4)
    store_client.put_object(Bucket=BUCKET, Key="r/csv_parts/part-00000.csv", Body=big)
    store_client.put_object(Bucket=BUCKET, Key="r/csv_parts/part-00001.csv", Body=big)
    store_client.put_object(Bucket=BUCKET, Key="r/csv_parts/part-00002.csv", Body=b"z,9\n")
    stats = merge_csv(
        store_client, ["path", "pc_1"], f"s3://{BUCKET}/r/csv_parts", f"s3://{BUCKET}/r/o.csv", SSE_S3
    )
    got = store_client.get_object(Bucket=BUCKET, Key="r/o.csv")
    assert got["Body"].read() == b"path,pc_1\n" + big + big + b"z,9\n"
    assert got["ETag"].strip('"').endswith(f"-{stats['upload_parts']}")
    assert stats["upload_parts"] >= 2 and stats["bytes_copied_in_s3"] > 0  # UploadPartCopy did part of it


def test_create_bucket_command_against_the_store(seaweedfs_store, monkeypatch, capsys):
    """`python -m orchard create-bucket`, the stack's one-shot, twice: created, then already there."""
    monkeypatch.setattr("boto3.DEFAULT_SESSION", None)  # it keeps the first credentials it resolved
    monkeypatch.setenv("ORCHARD_LAKE", "s3://stack-bucket/lake")
    monkeypatch.setenv("ORCHARD_S3_ENDPOINT", seaweedfs_store.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs_store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs_store.secret_key)
    assert cli.main(["create-bucket"]) == cli.main(["create-bucket"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bucket 'stack-bucket' created")
    assert out[1].startswith("bucket 'stack-bucket' already there")
