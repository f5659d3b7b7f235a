"""A run's inputs are exactly what its source holds: every entry as users have it ends in the listing
(to featurize or to quarantine, with a reason), and the lake's copy mirrors the source."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from orchard.storage import files as storage
from orchard.storage import s3
from orchard.storage.files import walk_source
from orchard.storage.sync import Input, listing_parquet, sync_folder
from tests.imagefactory import jpeg
from tests.sources import EXPECTED, odd_source

BUCKET = "orchard-lake"
SSE_S3 = {"ServerSideEncryption": "AES256"}


def as_listing(report: storage.SyncReport) -> dict[str, str | None]:
    return {row.path: row.reason for row in report.inputs}


@pytest.mark.backs(
    "a name with a newline, tab or other control character",
    "a name that is not valid UTF-8",
    "a dangling symbolic link",
    "a symbolic link loop (to itself, or a folder link to an ancestor)",
    "a link to a file",
    "a pipe, socket or device",
    "a folder named like an image (`Looks like.jpg/`)",
    "mixed-case extensions (`.JPG`, `.JpEg`)",
)
def test_every_entry_of_an_odd_folder_is_an_input_or_quarantined_with_a_reason(tmp_path):
    report = sync_folder(odd_source(tmp_path), tmp_path / "lake")
    assert as_listing(report) == EXPECTED
    assert report.ignored == ["Apple/.hidden.jpg"]
    assert report.files == len(EXPECTED) == report.uploaded + len(report.quarantined)
    assert report.failed == {}
    copied = sorted(
        p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*") if p.is_file()
    )
    assert copied == sorted(p for p, reason in EXPECTED.items() if reason is None)
    # A link is copied as the file it points to.
    assert (tmp_path / "lake" / "Apple" / "link to ok.jpg").read_bytes() == jpeg(1)


def test_the_listing_carries_sizes_and_content_hashes(tmp_path):
    report = sync_folder(odd_source(tmp_path), tmp_path / "lake")
    table = pq.read_table(io.BytesIO(listing_parquet(report.inputs))).to_pylist()
    rows = {row["path"]: row for row in table}
    digest = hashlib.sha256(jpeg(1)).hexdigest()
    assert rows["Apple/ok.jpg"] == {
        "path": "Apple/ok.jpg",
        "size": len(jpeg(1)),
        "sha256": digest,
        "reason": None,
    }
    assert rows["Apple/dangling.jpg"]["size"] is None and rows["Apple/dangling.jpg"]["reason"]
    assert [row["path"] for row in table] == sorted(EXPECTED)  # the walk's order: by name, depth first


@pytest.mark.backs("a file that cannot be read (permission)")
def test_a_file_that_cannot_be_read_is_quarantined_not_fatal(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "Kiwi").mkdir(parents=True)
    (src / "Kiwi" / "a.jpg").write_bytes(b"a")
    (src / "Kiwi" / "locked.jpg").write_bytes(b"b")
    real = storage.file_sha256

    def sha(path: Path) -> str:
        if path.name == "locked.jpg":  # as chmod 000 does for anyone but root
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr("orchard.storage.sync.file_sha256", sha)
    report = sync_folder(src, tmp_path / "lake")
    assert report.quarantined == {"Kiwi/locked.jpg": "cannot be read: permission denied"}
    assert (report.uploaded, report.failed) == (1, {})


@pytest.mark.backs(
    "a file deleted from the source between two runs",
    "a file replaced by different content under the same name",
)
def test_the_lake_mirrors_deletions_and_replacements(tmp_path):
    src, lake = tmp_path / "src", tmp_path / "lake"
    (src / "Apple").mkdir(parents=True)
    for name in ("0_100.jpg", "1_100.jpg", "2_100.jpg"):
        (src / "Apple" / name).write_bytes(name.encode())
    sync_folder(src, lake)
    (src / "Apple" / "0_100.jpg").unlink()
    (src / "Apple" / "1_100.jpg").write_bytes(b"other content, other size")
    report = sync_folder(src, lake)
    assert (report.uploaded, report.skipped, report.deleted) == (1, 1, 1)
    assert sorted(p.name for p in (lake / "Apple").iterdir()) == ["1_100.jpg", "2_100.jpg"]
    assert (lake / "Apple" / "1_100.jpg").read_bytes() == b"other content, other size"
    assert {row.path: row.sha256 for row in report.inputs}["Apple/1_100.jpg"] == hashlib.sha256(
        b"other content, other size"
    ).hexdigest()


def test_a_limited_run_deletes_nothing_the_source_still_has(tmp_path):
    src, lake = tmp_path / "src", tmp_path / "lake"
    (src / "Kiwi").mkdir(parents=True)
    for i in range(5):
        (src / "Kiwi" / f"{i}.jpg").write_bytes(b"k" * (i + 1))
    sync_folder(src, lake)
    report = sync_folder(src, lake, limit=2)
    assert (report.files, report.deleted) == (2, 0)
    assert len(list((lake / "Kiwi").iterdir())) == 5


@pytest.mark.backs("a folder that cannot be opened")
def test_walk_reports_a_folder_it_cannot_open(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "Closed").mkdir(parents=True)
    (src / "open.jpg").write_bytes(b"x")
    real = os.scandir

    def scandir(path):
        if Path(path).name == "Closed":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(storage.os, "scandir", scandir)
    assert list(walk_source(src)) == [
        ("Closed", "folder cannot be read: permission denied"),
        ("open.jpg", None),
    ]


# ---- sources already on S3 (moto) ----


@pytest.fixture
def client():
    with mock_aws():
        c = boto3.client("s3", region_name="eu-west-1")
        for bucket in (BUCKET, "phone-uploads"):
            c.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield c


def put(client, key: str, body: bytes) -> None:
    client.put_object(Bucket="phone-uploads", Key=key, Body=body)


@pytest.mark.backs("a source already on S3 (`s3://bucket/prefix`)")
def test_an_s3_source_is_copied_inside_s3_encrypted_with_its_hash(client, monkeypatch):
    put(client, "app/Apple/a.jpg", b"apple")
    put(client, "app/Kiwi/k.png", b"kiwi")
    put(client, "app/Kiwi/", b"")  # a console-made "folder" marker: not a file
    put(client, "app/Kiwi/new\nline.jpg", b"odd")
    put(client, "app/.keep", b"")
    # Bytes never pass through this process: no GetObject, no download, no upload.
    for name in ("get_object", "download_file", "upload_file", "upload_fileobj"):
        monkeypatch.setattr(client, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called"))
    report = s3.sync_s3_to_s3("s3://phone-uploads/app", f"s3://{BUCKET}/images/app", client, SSE_S3)
    assert (report.uploaded, report.skipped, report.failed, report.ignored) == (2, 0, {}, [".keep"])
    assert as_listing(report) == {
        "Apple/a.jpg": None,
        "Kiwi/k.png": None,
        "Kiwi/new\nline.jpg": "file name contains a control character (newline): rename the file",
    }
    head = client.head_object(Bucket=BUCKET, Key="images/app/Apple/a.jpg", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == hashlib.sha256(b"apple").hexdigest()
    assert {row.path: row.sha256 for row in report.inputs}["Apple/a.jpg"] == hashlib.sha256(
        b"apple"
    ).hexdigest()
    assert report.files == 3


@pytest.mark.backs("a source already on S3 (`s3://bucket/prefix`)")
def test_an_unchanged_s3_source_copies_nothing_and_deletions_are_mirrored(client):
    put(client, "app/Apple/a.jpg", b"apple")
    put(client, "app/Apple/b.jpg", b"banana")
    dest = f"s3://{BUCKET}/images/app"
    s3.sync_s3_to_s3("s3://phone-uploads/app", dest, client, SSE_S3)
    again = s3.sync_s3_to_s3("s3://phone-uploads/app", dest, client, SSE_S3)
    assert (again.uploaded, again.skipped, again.deleted) == (0, 2, 0)

    client.delete_object(Bucket="phone-uploads", Key="app/Apple/b.jpg")
    put(client, "app/Apple/a.jpg", b"APPLE")  # same size, new content: a new ETag
    third = s3.sync_s3_to_s3("s3://phone-uploads/app", dest, client, SSE_S3)
    assert (third.uploaded, third.skipped, third.deleted) == (1, 0, 1)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="images/app/")["Contents"]
    assert [o["Key"] for o in listed] == ["images/app/Apple/a.jpg"]
    assert client.get_object(Bucket=BUCKET, Key="images/app/Apple/a.jpg")["Body"].read() == b"APPLE"


@pytest.mark.backs("a source already on S3 (`s3://bucket/prefix`)")
def test_large_objects_are_copied_in_parts_inside_s3(client):
    big = os.urandom(6 * 1024 * 1024)
    put(client, "app/Apple/big.tif", big)
    report = s3.sync_s3_to_s3(
        "s3://phone-uploads/app", f"s3://{BUCKET}/images/app", client, SSE_S3, copy_threshold=5 * 1024 * 1024
    )
    assert report.uploaded == 1
    assert client.get_object(Bucket=BUCKET, Key="images/app/Apple/big.tif")["Body"].read() == big
    head = client.head_object(Bucket=BUCKET, Key="images/app/Apple/big.tif")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"][s3.SOURCE_ETAG_META]
    assert head["ETag"].strip('"').endswith("-2")  # two UploadPartCopy parts, not one GET and PUT
    assert report.inputs == [Input("Apple/big.tif", len(big), None, None)]  # featurize hashes it


@pytest.mark.backs("an S3 source that is empty or whose bucket does not exist")
def test_an_empty_or_missing_s3_source_fails_clearly(client):
    with pytest.raises(ValueError, match="holds no objects"):
        s3.check_s3_source(client, "s3://phone-uploads/nothing-here")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        s3.check_s3_source(client, "s3://no-such-bucket/app")


@pytest.mark.backs("a source already on S3 (`s3://bucket/prefix`)")
def test_an_unchanged_s3_object_keeps_the_sha256_s3_computed_for_its_copy(client):
    """A skipped object is listed with the SHA-256 of its copy, as a copied one is (it was listed as None)."""
    put(client, "app/Apple/a.jpg", b"apple")
    dest = f"s3://{BUCKET}/images/app"
    first = s3.sync_s3_to_s3("s3://phone-uploads/app", dest, client, SSE_S3)
    again = s3.sync_s3_to_s3("s3://phone-uploads/app", dest, client, SSE_S3)
    assert (first.uploaded, again.skipped) == (1, 1)
    assert first.inputs == again.inputs == [Input("Apple/a.jpg", 5, hashlib.sha256(b"apple").hexdigest())]
