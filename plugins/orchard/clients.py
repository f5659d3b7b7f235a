"""The one place AWS clients are made: from an Airflow connection in a task, else the standard AWS chain.

Credentials never appear in code: the connection (`aws_conn_id`), or the chain's environment,
profile or instance role. S3 clients (boto3's and s3fs's) share one set of credentials and retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from s3fs import S3FileSystem
    from types_boto3_s3 import S3Client


class Encryption(TypedDict, total=False):
    """The server-side encryption arguments of an S3 write (PutObject, CopyObject, multipart)."""

    ServerSideEncryption: Literal["AES256", "aws:kms"]
    SSEKMSKeyId: str


# Transient S3 errors (500, 503 SlowDown, throttling, connection resets) are retried by botocore
# with exponential backoff and jitter, up to 10 attempts per request: the boto3 client and s3fs alike.
RETRIES: dict[str, Any] = {"retries": {"mode": "standard", "total_max_attempts": 10}}


def s3_access(
    region: str | None,
    encryption: Encryption,
    *,
    conn_id: str | None = None,
    endpoint_url: str | None = None,
) -> tuple[S3Client, S3FileSystem]:
    """The lake's boto3 S3 client and s3fs filesystem, both with RETRIES, from one set of credentials.

    With `conn_id`: the Airflow connection's (credentials, endpoint), as the provider's S3Hook reads
    it; else the standard AWS chain, at `endpoint_url` when given (the stack's SeaweedFS).
    """
    # Deferred: s3fs (with aiobotocore) takes ~0.5 s to import, for lake I/O, not DAG parsing.
    from s3fs import S3FileSystem  # ruff: ignore[import-outside-top-level]

    options: dict[str, Any] = {
        "config_kwargs": RETRIES,
        "s3_additional_kwargs": dict(encryption),
        # Spark writes to the lake behind this process's back: no cached listings.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if conn_id is not None:
        # The command line need not import Airflow (~1.9 s for this hook): only for a task's connection.
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # ruff: ignore[import-outside-top-level]

        hook = S3Hook(aws_conn_id=conn_id, region_name=region, config=Config(**RETRIES))
        client: S3Client = hook.get_conn()
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
    client = boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=Config(**RETRIES))
    fs = S3FileSystem(endpoint_url=endpoint_url, client_kwargs={"region_name": region}, **options)
    return client, fs


# The services Orchard calls (S3 mostly through s3_access, with the lake's retries and encryption).
Service = Literal["s3", "emr", "iam", "ec2", "kms", "service-quotas"]


def aws_client(service: Service, region: str, conn_id: str | None = None) -> Any:
    """A boto3 client of an AWS service other than S3 (S3 goes through the lake: `s3_access`).

    With `conn_id`: the Airflow connection's, through the provider's AwsBaseHook; else the
    standard AWS chain (the command line).
    """
    if conn_id is not None:
        # Deferred: see s3_access.
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook  # ruff: ignore[import-outside-top-level]

        return AwsBaseHook(client_type=service, aws_conn_id=conn_id, region_name=region).conn
    return boto3.session.Session(region_name=region).client(service)
