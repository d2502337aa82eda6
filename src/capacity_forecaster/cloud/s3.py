"""The only module of ``capacity_forecaster.cloud`` that talks to S3 through boto3.

Clients come from boto3's standard credential chain and honour ``AWS_ENDPOINT_URL`` (moto in tests); region
and retry settings are the ones the catalog's s3fs filesystems use (``conf/cloud/globals.yml``).
"""

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import (
    ACCESS_DENIED,
    NO_SUCH_BUCKET,
    SERVICE_ERROR,
    WRONG_REGION,
    CloudStorageError,
    S3Problem,
    classify,
)
from .signals import sigterm_raises

_MiB = 2**20
CHECK_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"mode": "standard", "total_max_attempts": 2},
}
"""botocore settings of the pre-run bucket check: an unreachable endpoint fails in seconds, not after the
catalog's full retry budget (8 attempts with backoff, ~1 min)."""


@dataclass(frozen=True)
class S3Object:
    """One object of a listing."""

    key: str
    size: int
    last_modified: datetime


def make_client(region: str | None, config_kwargs: dict[str, Any] | None = None) -> Any:
    """A boto3 S3 client for ``region`` with the catalog's botocore ``config_kwargs`` (retries, timeouts)."""
    return boto3.session.Session().client("s3", region_name=region, config=Config(**(config_kwargs or {})))


def make_check_client(region: str | None, config_kwargs: dict[str, Any] | None = None) -> Any:
    """A client for :func:`check_bucket`: the catalog's settings with short timeouts and 2 attempts."""
    return make_client(region, {**(config_kwargs or {}), **CHECK_CONFIG})


def _storage_error(problem: S3Problem, bucket: str, region: str, what: str) -> CloudStorageError:
    return CloudStorageError(
        f"{what}: {problem.code}: {problem.reason}. What to do: {problem.hint(bucket, region)}."
    )


def bucket_region(client: Any, bucket: str) -> str | None:
    """The bucket's region from GetBucketLocation, or ``None`` when that call is not allowed."""
    try:
        location = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except ClientError as exc:
        problem = classify(exc)
        if problem is not None and problem.code == ACCESS_DENIED:
            return None
        raise
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def check_bucket(client: Any, bucket: str, region: str, prefix: str = "") -> str:
    """Checks that ``s3://bucket/prefix`` can be listed and that the bucket is in ``region``.

    Returns:
        The bucket's region (``region`` itself when GetBucketLocation is not allowed).

    Raises:
        CloudStorageError: Missing bucket, listing denied, the bucket in another region, S3 unreachable,
            no credentials, or a server error.
    """
    where = f"s3://{bucket}/{prefix}"
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        actual = bucket_region(client, bucket)
    except BotoCoreError as exc:  # endpoint unreachable, timeouts, no credentials: no HTTP answer at all
        problem = classify(exc)
        if problem is None:
            raise
        raise _storage_error(problem, bucket, region, f"Cannot use {where}") from exc
    except ClientError as exc:
        problem = classify(exc) or S3Problem(str(exc.response.get("Error", {}).get("Code")), str(exc))
        if problem.code == WRONG_REGION:
            actual = (
                exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
            )
            problem = S3Problem(
                WRONG_REGION, f"bucket is in {actual or 'another region'}, configured {region}"
            )
        if problem.code not in (NO_SUCH_BUCKET, ACCESS_DENIED, WRONG_REGION, SERVICE_ERROR):
            raise
        raise _storage_error(problem, bucket, region, f"Cannot use {where}") from exc
    if actual is not None and region and actual != region:
        problem = S3Problem(
            WRONG_REGION, f"bucket {bucket} is in {actual}, but the configured region is {region}"
        )
        raise _storage_error(problem, bucket, actual, f"Cannot use {where}")
    return actual or region


def list_objects(client: Any, bucket: str, prefix: str = "") -> Iterator[S3Object]:
    """Every object under ``s3://bucket/prefix`` (paginated)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield S3Object(item["Key"], int(item["Size"]), item["LastModified"])


def head_object(client: Any, bucket: str, key: str) -> S3Object | None:
    """The object at ``key``, or ``None`` when there is none."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise
    return S3Object(key, int(head["ContentLength"]), head["LastModified"])


def check_local_format(path: Path, key: str) -> None:
    """Refuses a file whose bytes do not match the target key's format (``.gz`` gzip, ``.parquet`` Parquet).

    Raises:
        ValueError: If the file would be unreadable by the dataset that reads ``key``.
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    if key.endswith(".gz") and head[:2] != b"\x1f\x8b":
        raise ValueError(
            f"{path} is not gzip-compressed but the dataset reads gzip ({key}): run `gzip -k {path}` and "
            "push "
            f"{path}.gz"
        )
    if key.endswith(".parquet") and head != b"PAR1":
        raise ValueError(f"{path} is not a Parquet file but the dataset reads Parquet ({key})")
    if key.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as handle:  # a truncated archive fails here, not in the pipeline
                while handle.read(8 * _MiB):
                    pass
        except (EOFError, OSError) as exc:
            raise ValueError(f"{path} is not a complete gzip file ({exc}); nothing was uploaded") from exc


def push_file(  # noqa: PLR0913
    client: Any,
    path: Path,
    bucket: str,
    key: str,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    multipart_threshold: int = 64 * _MiB,
) -> S3Object:
    """Uploads ``path`` to ``s3://bucket/key`` and returns the stored object.

    Large files go up in parts (boto3's transfer manager, with the client's retries per part). If any part
    or the source fails, ``progress`` raises (e.g. an interrupt), or the process gets SIGTERM, the multipart
    upload is aborted: nothing appears at ``key`` and an existing object there is left as it was.

    Args:
        client: boto3 S3 client.
        path: Local file.
        bucket: Target bucket.
        key: Target key.
        overwrite: Replace an existing object (otherwise refuse).
        progress: Called with the bytes sent since the last call.
        multipart_threshold: Files at least this large are sent as a multipart upload.

    Raises:
        FileExistsError: If an object exists at ``key`` and ``overwrite`` is false.
        CloudStorageError: If the bucket is missing, the upload is denied, S3 cannot be reached or keeps
            failing (5xx).
    """
    existing = head_object(client, bucket, key)
    if existing is not None and not overwrite:
        raise FileExistsError(
            f"s3://{bucket}/{key} already exists ({existing.size} bytes, "
            f"{existing.last_modified:%Y-%m-%d %H:%M}"
            " UTC): pass --overwrite to replace it"
        )
    chunk = max(5 * _MiB, multipart_threshold)  # S3 parts are at least 5 MiB (but the last)
    config = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=chunk)
    try:
        with sigterm_raises(f"uploading {path} to s3://{bucket}/{key}"):
            client.upload_file(str(path), bucket, key, Config=config, Callback=progress)
    except Exception as exc:
        problem = classify(exc)
        if problem is None:
            raise
        region = client.meta.region_name
        raise _storage_error(problem, bucket, region, f"Cannot upload {path} to s3://{bucket}/{key}") from exc
    stored = head_object(client, bucket, key)
    if stored is None or stored.size != path.stat().st_size:
        raise CloudStorageError(f"s3://{bucket}/{key} is not the uploaded file after the upload: {stored}")
    return stored
