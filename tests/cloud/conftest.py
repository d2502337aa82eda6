"""Cloud tests: a bucket on the moto server (``aws`` fixture) that the cloud catalog points at."""

from collections.abc import Iterator

import boto3
import pytest
import s3fs

BUCKET = "cf-test-bucket"


@pytest.fixture
def bucket(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Creates the project bucket in us-east-1 and points ``CF_BUCKET`` at it (no ``CF_PREFIX``)."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("CF_BUCKET", BUCKET)
    monkeypatch.delenv("CF_PREFIX", raising=False)
    yield BUCKET
    s3fs.S3FileSystem.clear_instance_cache()


def object_keys(bucket: str, prefix: str = "") -> dict[str, int]:
    """Key -> size of every object under ``prefix``, straight from the S3 API."""
    paginator = boto3.client("s3").get_paginator("list_objects_v2")
    return {
        o["Key"]: o["Size"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    }
