"""What the lake does on S3 with S3's own API: the image sync, the CSV merge inside S3, the bucket.

Everything else reaches S3 through fsspec (orchard.storage.lake); these functions take the lake's
boto3 client (orchard.clients).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from orchard.clients import Encryption
from orchard.storage.files import check_source, file_sha256, is_hidden, name_problem, os_reason, walk_source
from orchard.storage.sync import Outcome, SyncReport, sync_each
from orchard.uris import split_uri

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CopySourceTypeDef,
        HeadObjectOutputTypeDef,
        ObjectIdentifierTypeDef,
    )

# S3's smallest multipart part, except for the last one.
MIN_PART = 5 * 1024 * 1024
HEADER = "header"
SHA256_META = "sha256"


def check_bucket(client: S3Client, bucket: str, prefix: str = "") -> None:
    """Fail with a clear message when the bucket is missing or not ours to use.

    Lists the prefix (one key) rather than HeadBucket: HeadBucket is authorized as s3:ListBucket
    with no s3:prefix, which a policy that scopes listing to the lake prefix denies.
    """
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchBucket", "NotFound"}:
            raise FileNotFoundError(f"S3 bucket {bucket!r} does not exist (create it first)") from exc
        if code in {"403", "AccessDenied", "Forbidden"}:
            raise PermissionError(
                f"listing s3://{bucket}/{prefix} is forbidden for these credentials"
            ) from exc
        raise


def existing_sizes(client: S3Client, bucket: str, prefix: str) -> dict[str, int]:
    """Relative key -> size of the objects under a prefix (one listing, 1,000 keys a page)."""
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            sizes[obj["Key"][len(prefix) + 1 :]] = obj["Size"]
    return sizes


def sync_to_s3(
    source: Path,
    dest_uri: str,
    client: S3Client,
    encryption: Encryption,
    limit: int | None = None,
    workers: int = 16,
) -> SyncReport:
    """Mirror the files below `source` under `dest_uri`, skipping objects with equal size and SHA-256.

    Parallel (boto3's transfer manager per file, `workers` files at a time), with every object
    encrypted (`encryption`) and its SHA-256 kept in its metadata. Objects of files gone from the
    source are deleted: the lake's copy of a dataset is the source as of the last upload.
    """
    check_source(source)
    bucket, prefix = split_uri(dest_uri)
    check_bucket(client, bucket, prefix)
    sizes = existing_sizes(client, bucket, prefix)
    transfer = TransferConfig(max_concurrency=4, multipart_threshold=64 * 1024 * 1024)

    def one(rel: str) -> Outcome:
        path, key = source / rel, f"{prefix}/{rel}"
        try:  # what the source gives: a file that cannot be read is quarantined, not fatal
            size, digest = path.stat().st_size, file_sha256(path)
        except OSError as exc:
            return rel, "quarantined", f"cannot be read: {os_reason(exc)}", None
        try:
            if sizes.get(rel) == size:
                head = client.head_object(Bucket=bucket, Key=key)
                if head.get("Metadata", {}).get(SHA256_META) == digest:
                    return rel, "skipped", size, digest
            extra = {**encryption, "Metadata": {SHA256_META: digest}}
            client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=transfer)
            return rel, "uploaded", size, digest
        except (OSError, ClientError) as exc:
            return rel, "failed", f"{type(exc).__name__}: {exc}", None

    return sync_each(
        walk_source(source), dest_uri, one, limit, workers, _deleter(client, bucket, prefix, sizes)
    )


def _deleter(
    client: S3Client, bucket: str, prefix: str, sizes: Mapping[str, int]
) -> Callable[[set[str]], int]:
    """delete(kept) for sync_each: removes the objects under `prefix` whose relative key is not kept."""

    def delete(kept: set[str]) -> int:
        gone = sorted(rel for rel in sizes if rel not in kept)
        for start in range(0, len(gone), 1000):  # DeleteObjects takes up to 1,000 keys
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": f"{prefix}/{rel}"} for rel in gone[start : start + 1000]
            ]
            result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                raise OSError(f"could not delete {len(result['Errors'])} objects: {result['Errors'][:3]}")
        return len(gone)

    return delete


# Objects up to this size are copied with one CopyObject; larger ones in parts (UploadPartCopy),
# which boto3's managed copy does. CopyObject's own limit is 5 GiB.
COPY_THRESHOLD = 5 * 1024**3
SOURCE_ETAG_META = "source-etag"


def walk_s3(client: S3Client, uri: str) -> Iterator[tuple[str, str | None, int, str]]:
    """(relative key, problem or None, size, ETag) of every object below an s3:// prefix, in key order.

    "Folder" marker objects (keys ending in '/') are not files and are left out.
    """
    bucket, prefix = split_uri(uri)
    start = f"{prefix}/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(start) :]
            if rel and not rel.endswith("/"):
                yield rel, name_problem(rel), obj["Size"], obj["ETag"]


def check_s3_source(client: S3Client, uri: str) -> None:
    """Fail early, with the URI in the message, when an s3:// source cannot feed a run."""
    bucket, prefix = split_uri(uri)
    check_bucket(client, bucket, prefix)
    if not any(not is_hidden(rel) for rel, *_ in walk_s3(client, uri)):
        raise ValueError(f"source {uri!r} holds no objects")


def sync_s3_to_s3(
    source_uri: str,
    dest_uri: str,
    client: S3Client,
    encryption: Encryption,
    limit: int | None = None,
    workers: int = 16,
    copy_threshold: int = COPY_THRESHOLD,
) -> SyncReport:
    """Mirror the objects below an s3:// source prefix under `dest_uri`, copied inside S3.

    The bytes never pass through this process: CopyObject (UploadPartCopy above `copy_threshold`),
    encrypted like every lake write, with the source's ETag in the copy's metadata. An object whose
    size and source ETag are unchanged is skipped; objects of keys gone from the source are deleted.
    Each input's SHA-256 is the one S3 computed for the copy (ChecksumAlgorithm=SHA256), read back
    from the copy when it is skipped; None where the store keeps none (a multipart copy's checksum
    is of its parts; SeaweedFS keeps none): the featurize step then hashes the bytes itself.
    """
    check_s3_source(client, source_uri)
    src_bucket, src_prefix = split_uri(source_uri)
    bucket, prefix = split_uri(dest_uri)
    check_bucket(client, bucket, prefix)
    sizes = existing_sizes(client, bucket, prefix)
    listed = list(walk_s3(client, source_uri))  # one listing of the source serves the copies and the sync
    objects = {rel: (size, etag) for rel, _, size, etag in listed}
    part = max(MIN_PART, min(copy_threshold, 512 * 1024 * 1024))
    transfer = TransferConfig(multipart_threshold=copy_threshold, multipart_chunksize=part)

    def one(rel: str) -> Outcome:
        size, etag = objects[rel]
        key = f"{prefix}/{rel}"
        source: CopySourceTypeDef = {
            "Bucket": src_bucket,
            "Key": f"{src_prefix}/{rel}" if src_prefix else rel,
        }
        try:
            if sizes.get(rel) == size:
                head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
                if head.get("Metadata", {}).get(SOURCE_ETAG_META) == etag:
                    return rel, "skipped", size, _object_sha256(head)
            if size <= copy_threshold:
                result = client.copy_object(
                    CopySource=source, Bucket=bucket, Key=key, MetadataDirective="REPLACE",
                    Metadata={SOURCE_ETAG_META: etag}, ChecksumAlgorithm="SHA256", **encryption,
                )  # fmt: skip
                digest = _sha256_hex(result.get("CopyObjectResult", {}).get("ChecksumSHA256"))
            else:  # multipart: S3's checksum is then one of the parts, not the object's SHA-256
                extra = {**encryption, "Metadata": {SOURCE_ETAG_META: etag}, "MetadataDirective": "REPLACE"}
                client.copy(source, bucket, key, ExtraArgs=extra, Config=transfer)
                digest = None
            return rel, "uploaded", size, digest
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404"}:  # deleted from the source since the listing
                return rel, "quarantined", "removed from the source during the upload", None
            return rel, "failed", f"{type(exc).__name__}: {exc}", None

    entries = ((rel, problem) for rel, problem, _, _ in listed)
    return sync_each(entries, dest_uri, one, limit, workers, _deleter(client, bucket, prefix, sizes))


def _sha256_hex(checksum: str | None) -> str | None:
    """A full-object ChecksumSHA256 (base64) as hex; None for none or a multipart one ('...-N')."""
    return base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None


def _object_sha256(head: HeadObjectOutputTypeDef) -> str | None:
    """The SHA-256 an object's metadata or S3's stored checksum gives (HeadObject with ChecksumMode)."""
    return head.get("Metadata", {}).get(SHA256_META) or _sha256_hex(head.get("ChecksumSHA256"))


def plan_merge(header_len: int, objects: Iterable[tuple[str, int]], min_part: int = MIN_PART) -> list:
    """Multipart plan for header + objects: ("copy", (key, start, end)) parts copied inside S3,
    ("upload", [pieces]) parts assembled from small pieces; every part but the last >= min_part.
    """
    parts: list = []
    buffer: list[tuple[str, int, int]] = [(HEADER, 0, header_len)]
    buffered = header_len
    for key, size in objects:
        if size == 0:
            continue
        start = 0
        if 0 < buffered < min_part:
            start = min(size, min_part - buffered)
            buffer.append((key, 0, start))
            buffered += start
        if start == size:
            continue
        if buffered >= min_part:
            parts.append(("upload", buffer))
            buffer, buffered = [], 0
        if size - start >= min_part:
            parts.append(("copy", (key, start, size)))
        else:
            buffer.append((key, start, size))
            buffered += size - start
    if buffer:
        parts.append(("upload", buffer))
    return parts


def merge_stats(part_files: int, size: int, upload_parts: int = 0) -> dict[str, int]:
    """What a CSV merge did, the same keys on every backend (a local merge copies nothing in S3)."""
    return {
        "part_files": part_files,
        "bytes": size,
        "upload_parts": upload_parts,
        "bytes_copied_in_s3": 0,
        "bytes_sent": 0,
    }


def assemble_csv(
    client: S3Client, header: Iterable[str], parts_uri: str, dest_uri: str, encryption: Encryption
) -> dict[str, int]:
    """One CSV object: header + the part files in name order, copied inside S3 where they are large.

    Only pieces smaller than a multipart part (at most ~2 x 5 MiB at a time) pass through this
    process. Returns merge_stats: how many bytes were copied inside S3 and how many sent from here.
    """
    bucket, parts_prefix = split_uri(parts_uri)
    dest_bucket, dest_key = split_uri(dest_uri)
    header_bytes = (",".join(header) + "\n").encode("utf-8")
    objects = sorted(
        (obj["Key"], obj["Size"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{parts_prefix}/")
        for obj in page.get("Contents", [])
        if obj["Key"].rsplit("/", 1)[-1].startswith("part-")
    )
    plan = plan_merge(len(header_bytes), objects)
    upload = client.create_multipart_upload(
        Bucket=dest_bucket, Key=dest_key, ContentType="text/csv", **encryption
    )
    stats = merge_stats(len(objects), len(header_bytes) + sum(size for _, size in objects), len(plan))
    try:
        done: list[CompletedPartTypeDef] = []
        for number, (kind, what) in enumerate(plan, start=1):
            if kind == "copy":
                key, start, end = what
                result = client.upload_part_copy(
                    Bucket=dest_bucket,
                    Key=dest_key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": key},
                    CopySourceRange=f"bytes={start}-{end - 1}",
                )
                etag = result["CopyPartResult"]["ETag"]
                stats["bytes_copied_in_s3"] += end - start
            else:
                body = b"".join(
                    header_bytes[start:end]
                    if key == HEADER
                    else client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")[
                        "Body"
                    ].read()
                    for key, start, end in what
                )
                etag = client.upload_part(
                    Bucket=dest_bucket,
                    Key=dest_key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    Body=body,
                )["ETag"]
                stats["bytes_sent"] += len(body)
            done.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(
            Bucket=dest_bucket, Key=dest_key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=dest_bucket, Key=dest_key, UploadId=upload["UploadId"])
        raise
    return stats


def upload_files(
    client: S3Client, files: Mapping[str, Path], dest_uri: str, encryption: Encryption
) -> dict[str, str]:
    """Upload named local files under a content-hashed prefix; returns name -> s3:// URI.

    The prefix names the content, so a key that exists already holds these bytes: not sent again.
    """
    bucket, prefix = split_uri(dest_uri)
    present = set(existing_sizes(client, bucket, prefix))
    uris = {}
    for name, path in files.items():
        if name not in present:
            client.upload_file(str(path), bucket, f"{prefix}/{name}", ExtraArgs=dict(encryption))
        uris[name] = f"s3://{bucket}/{prefix}/{name}"
    return uris


def create_bucket(client: S3Client, bucket: str, region: str) -> bool:
    """Create the lake bucket if it is not there yet; True when it was created."""
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":  # us-east-1 is the one region S3 refuses as a LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        return False
    return True
