"""Every lake operation, the same test on a local folder and on S3 (moto's server, and the local stack's
SeaweedFS binary), through s3fs and boto3.

The two drift bugs of the former twin lakes are here: a missing file raised FileNotFoundError locally
but a botocore ClientError on S3, and `exists` matched a prefix on S3 (`runs/r1` "existed" when only
`runs/r10` did).
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import pandas as pd
import pytest

from orchard.storage.lake import LAKE_FORMAT, Lake
from orchard.tasks.watch import detect_change, source_fingerprint
from tests.plugins.conftest import BUCKET


def test_files_are_written_whole_and_read_back(lake):
    store, root = lake
    store.write_bytes(f"{root}/a/b.bin", b"\x00\x01")
    store.write_bytes(f"{root}/a/b.bin", b"replaced")
    store.write_json(f"{root}/a/doc.json", {"k": [1, 2]})
    assert store.read_bytes(f"{root}/a/b.bin") == b"replaced"
    assert store.read_json(f"{root}/a/doc.json") == {"k": [1, 2]}
    assert json.loads(store.read_bytes(f"{root}/a/doc.json")) == {"k": [1, 2]}


def test_a_missing_file_is_file_not_found_on_every_backend(lake):
    store, root = lake
    store.write_json(f"{root}/state/other.json", {})
    for read in (store.read_bytes, store.read_json, store.delete):
        with pytest.raises(FileNotFoundError):
            read(f"{root}/state/source_watch.json")


def test_exists_is_exact_not_a_prefix_match(lake):
    store, root = lake
    store.write_json(f"{root}/runs/r10/attempt-1/manifest.json", {})
    assert not store.exists(f"{root}/runs/r1")
    assert not store.exists(f"{root}/runs/r10/attempt-1/manifest")
    assert store.exists(f"{root}/runs/r10")  # a folder
    assert store.exists(f"{root}/runs/r10/attempt-1/manifest.json")  # a file
    assert store.list_files(f"{root}/runs/r1") == []


def test_listing_is_recursive_sorted_and_empty_for_no_folder(lake):
    store, root = lake
    for rel in ["b/2.txt", "a/1.txt", "a/z/3.txt", "a b/4.txt"]:
        store.write_bytes(f"{root}/{rel}", rel.encode())
    assert store.list_files(f"{root}/a") == [f"{root}/a/1.txt", f"{root}/a/z/3.txt"]
    assert store.list_files(f"{root}/") == [
        f"{root}/{r}" for r in ["a b/4.txt", "a/1.txt", "a/z/3.txt", "b/2.txt"]
    ]
    assert store.list_files(f"{root}/nothing") == []


def test_delete_removes_one_file(lake):
    store, root = lake
    store.write_bytes(f"{root}/x/1", b"1")
    store.write_bytes(f"{root}/x/2", b"2")
    store.delete(f"{root}/x/1")
    assert store.list_files(f"{root}/x") == [f"{root}/x/2"]


def test_a_spark_parquet_folder_reads_as_one_table(lake):
    store, root = lake
    for i in range(2):
        buffer = io.BytesIO()
        pd.DataFrame({"path": [f"p{i}"], "n": [i]}).to_parquet(buffer)
        store.write_bytes(f"{root}/pca/part-0000{i}.parquet", buffer.getvalue())
    store.write_bytes(f"{root}/pca/_SUCCESS", b"")
    store.write_bytes(f"{root}/pca/.part-00000.parquet.crc", b"crc")
    table = store.read_parquet(f"{root}/pca")
    assert table.to_dict("list") == {"path": ["p0", "p1"], "n": [0, 1]}
    with pytest.raises(FileNotFoundError):
        store.read_parquet(f"{root}/nothing")


def test_merge_csv_streams_parts_in_name_order(lake):
    store, root = lake
    store.write_bytes(f"{root}/parts/part-00001-x.csv", b"b,2\n")
    store.write_bytes(f"{root}/parts/part-00000-x.csv", b"a,1\n")
    store.write_bytes(f"{root}/parts/part-00002-x.csv", b"")
    store.write_bytes(f"{root}/parts/_SUCCESS", b"")
    store.merge_csv(["path", "pc_1"], f"{root}/parts", f"{root}/run/pcaFeatures.csv")
    assert store.read_bytes(f"{root}/run/pcaFeatures.csv") == b"path,pc_1\na,1\nb,2\n"
    # Nothing but the CSV: no temporary file left beside it.
    assert store.list_files(f"{root}/run") == [f"{root}/run/pcaFeatures.csv"]


@pytest.mark.parametrize("lake", ["s3"], indirect=True)
def test_every_s3_write_is_encrypted(lake):
    store, root = lake
    store.write_bytes(f"{root}/a.bin", b"a")
    store.write_json(f"{root}/b.json", {})
    store.write_bytes(f"{root}/parts/part-00000.csv", b"x,1\n")
    store.merge_csv(["path", "pc_1"], f"{root}/parts", f"{root}/c.csv")
    for key in ("lake/a.bin", "lake/b.json", "lake/c.csv"):
        assert store._s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
    assert store._s3.head_object(Bucket=BUCKET, Key="lake/b.json")["ContentType"] == "application/json"


def test_the_source_is_mirrored_on_every_backend(lake, tmp_path):
    store, root = lake
    source = tmp_path / "photos"
    for rel in ["Kiwi/1.jpg", "Kiwi/2.jpg", "Apple/3.jpg"]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(rel.encode() * 10)
    recorded, first = store.mirror(str(source), f"{root}/images/photos")
    assert recorded == str(source.resolve())
    assert (first.uploaded, first.skipped, first.deleted) == (3, 0, 0)
    (source / "Kiwi" / "2.jpg").unlink()
    _, second = store.mirror(str(source), f"{root}/images/photos")
    assert (second.uploaded, second.skipped, second.deleted) == (0, 2, 1)
    assert store.list_files(f"{root}/images/photos") == [
        f"{root}/images/photos/Apple/3.jpg",
        f"{root}/images/photos/Kiwi/1.jpg",
    ]
    with pytest.raises(ValueError, match=r"source: .*does not exist"):
        store.mirror(str(tmp_path / "missing"), f"{root}/images/missing")


def test_a_lake_refuses_uris_of_the_other_backend(lake, tmp_path):
    store, _ = lake
    other = f"file://{tmp_path}/x.json" if store.on_s3 else f"s3://{BUCKET}/x.json"
    with pytest.raises(ValueError, match="this lake"):
        store.read_bytes(other)


def test_one_unchanged_rule_same_size_and_content_on_every_backend(lake, tmp_path):
    """New bytes of the same size and time are copied again; a touched file with the same bytes is not."""
    store, root = lake
    source = tmp_path / "source"
    (source / "Kiwi").mkdir(parents=True)
    image = source / "Kiwi" / "a.jpg"
    image.write_bytes(b"apple")
    images = f"{root}/images/source"
    assert store.mirror(str(source), images)[1].uploaded == 1
    before = image.stat()
    image.write_bytes(b"APPLE")
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = store.mirror(str(source), images)[1]
    assert (again.uploaded, store.read_bytes(f"{images}/Kiwi/a.jpg")) == (1, b"APPLE")
    os.utime(image, (1_900_000_000, 1_900_000_000))
    assert (store.mirror(str(source), images)[1].skipped, again.inputs[0].sha256) == (
        1, hashlib.sha256(b"APPLE").hexdigest()
    )  # fmt: skip


def test_the_csv_merge_reports_the_same_statistics_on_every_backend(lake):
    store, root = lake
    store.write_bytes(f"{root}/parts/part-00000.csv", b"a,1\n")
    store.write_bytes(f"{root}/parts/part-00001.csv", b"b,2\n")
    stats = store.merge_csv(["path", "pc_1"], f"{root}/parts", f"{root}/c.csv")
    assert (stats["part_files"], stats["bytes"]) == (2, len(b"path,pc_1\na,1\nb,2\n"))
    assert set(stats) == {"part_files", "bytes", "upload_parts", "bytes_copied_in_s3", "bytes_sent"}


def test_the_lake_records_its_layout_version_and_refuses_another(lake):
    store, root = lake
    store.write_json(f"{root}/latest.json", {"run_id": "r1"})  # a lake of today's layout, no version yet
    assert store.check_format(root) == LAKE_FORMAT == store.read_json(f"{root}/lake.json")["format"]
    assert store.check_format(root) == LAKE_FORMAT  # read back, not rewritten
    store.write_json(f"{root}/lake.json", {"format": 1})  # runs whose features hold the vectors
    assert store.check_format(root) == LAKE_FORMAT
    assert store.read_json(f"{root}/lake.json") == {"format": LAKE_FORMAT, "upgraded_from": 1}
    store.write_json(f"{root}/lake.json", {"format": LAKE_FORMAT + 1})
    with pytest.raises(ValueError, match=r"layout version 3, written by a newer Orchard.*new ORCHARD_LAKE"):
        store.check_format(root)
    store.write_json(f"{root}/lake.json", {"kind": "something else"})
    with pytest.raises(ValueError, match="is not a lake format record"):
        store.check_format(root)


def test_a_source_on_s3_is_watched_by_its_objects(lake):
    """The source watch's fingerprint follows an s3:// prefix's objects (size and ETag)."""
    store, root = lake
    source = "s3://uploads/app/"
    if not root.startswith("s3://"):
        with pytest.raises(ValueError, match="needs a lake on S3"):
            source_fingerprint(source, store)
        return
    client = store._s3
    assert client is not None
    region = client.meta.region_name
    client.create_bucket(Bucket="uploads", CreateBucketConfiguration={"LocationConstraint": region})
    client.put_object(Bucket="uploads", Key="app/Kiwi/a.jpg", Body=b"a" * 10)
    client.put_object(Bucket="uploads", Key="app/_tmp/x.jpg", Body=b"x")  # hidden: never an input
    first = source_fingerprint(source, store)
    assert (first["files"], first["bytes"]) == (1, 10)
    assert source_fingerprint(source, store) == first
    client.put_object(Bucket="uploads", Key="app/Kiwi/a.jpg", Body=b"b" * 10)  # same size, new bytes
    assert source_fingerprint(source, store) != first
    state = f"{root}/state/source_watch.json"
    assert detect_change(store, state, source)["files"] == 1
    assert detect_change(store, state, source) is None


def test_replacing_a_file_spark_wrote_drops_its_stale_hadoop_checksum(tmp_path):
    """Erasure rewrites Parquet files Spark wrote; locally Spark checks them against the .crc beside
    them, which would then describe the old bytes (a ChecksumException in the next run's read)."""
    folder = tmp_path / "cache" / "model=abc"
    folder.mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(b"old")
    (folder / ".part-0.parquet.crc").write_bytes(b"checksum of old")
    Lake.local().write_bytes(f"file://{folder}/part-0.parquet", b"new")
    assert (folder / "part-0.parquet").read_bytes() == b"new"
    assert not (folder / ".part-0.parquet.crc").exists()
