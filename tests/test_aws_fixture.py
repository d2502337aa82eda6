"""The moto fixture gives each test a clean S3 on a real HTTP endpoint."""

import boto3
import pandas as pd


def test_s3_round_trip_through_pandas(aws):
    boto3.client("s3").create_bucket(Bucket="fixture-check")
    frame = pd.DataFrame({"server_id": ["a", "b"], "cpu_p95": [1.5, 2.5]})
    frame.to_parquet("s3://fixture-check/x.parquet")
    assert pd.read_parquet("s3://fixture-check/x.parquet").equals(frame)


def test_each_test_starts_with_no_buckets(aws):
    assert boto3.client("s3").list_buckets()["Buckets"] == []
