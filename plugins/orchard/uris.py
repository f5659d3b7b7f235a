"""Lake and source locations as URIs: file:// for a folder, s3:// (or s3a:// for a local Spark) for S3."""

from __future__ import annotations

from pathlib import Path

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


def as_s3a(uri: str) -> str:
    """An s3:// URI as Hadoop's s3a connector (a local Spark) names it."""
    bucket, key = split_uri(uri)
    return f"s3a://{bucket}/{key}".rstrip("/")


def local_path(uri: str) -> Path:
    """The filesystem path of a file:// URI (taken literally, as the lake URIs are)."""
    if not uri.startswith("file:"):
        raise ValueError(f"{uri!r} is not a local file:// URI")
    return Path("/" + uri[len("file:") :].lstrip("/"))


def normalise_uri(uri: str) -> str:
    """A lake location as a URI without a trailing slash; bare paths become file:// URIs.

    Taken literally, not percent-encoded: Hadoop paths and Spark's file listings use raw names.
    """
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if "://" not in uri:
        return "file://" + str(Path(uri).expanduser().resolve())
    return uri.rstrip("/")


def source_location(source: str) -> str:
    """A source as a run records it: an s3:// URI without empty parts, or a resolved folder path."""
    if on_s3(source):
        return "s3://" + "/".join(part for part in split_uri(source) if part)
    return str(Path(source).expanduser().resolve())


def dataset_name(source: str) -> str:
    """The dataset a source feeds: its folder's (or S3 prefix's) last name."""
    return source_location(source).rsplit("/", 1)[-1]
