"""``kedro cloud push`` and ``kedro cloud check`` against moto's S3."""

import gzip
import json
import os
from pathlib import Path
from types import SimpleNamespace

import boto3
import pandas as pd
import pytest
from click.testing import CliRunner

from capacity_forecaster.cloud.cli import cloud
from capacity_forecaster.cloud.s3 import make_client, push_file
from tests.cloud.conftest import object_keys
from tests.conftest import PROJECT_PATH

BITBRAINS = PROJECT_PATH.parent / "shared" / "data" / "bitbrains_rnd_sample_5min.csv.gz"
METADATA = SimpleNamespace(project_path=PROJECT_PATH)


def _cli(*args: str):
    result = CliRunner().invoke(cloud, list(args), obj=METADATA, catch_exceptions=False)
    return result


def _body(bucket: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A small gzip CSV monitoring export."""
    path = tmp_path / "my_export.csv.gz"
    frame = pd.DataFrame(
        {
            "timestamp": ["2024-01-01", "2024-01-02"],
            "server_id": ["web-1", "web-1"],
            "cpu_p95": [10.0, 12.5],
            "memory_p95": [40.0, 41.0],
            "disk_io_p95": [1.0, 2.0],
            "network_p95": [5.0, 6.0],
        }
    )
    frame.to_csv(path, index=False, compression="gzip")
    return path


def test_push_to_raw_prefix_keeps_the_bytes(bucket, export):
    result = _cli("push", str(export))
    assert result.exit_code == 0, result.output
    assert f"-> s3://{bucket}/raw/my_export.csv.gz" in result.output
    assert _body(bucket, "raw/my_export.csv.gz") == export.read_bytes()


@pytest.mark.skipif(not BITBRAINS.exists(), reason="shared Bitbrains sample not present")
def test_pushed_real_export_is_what_the_cloud_catalog_reads(bucket, kedro_session):
    result = _cli("push", str(BITBRAINS), "--dataset", "raw_server_metrics")
    assert result.exit_code == 0, result.output
    assert f"-> s3://{bucket}/raw/server_metrics.csv.gz ({BITBRAINS.stat().st_size} bytes)" in result.output
    loaded = kedro_session(env="cloud").load_context().catalog.load("raw_server_metrics")
    pd.testing.assert_frame_equal(loaded, pd.read_csv(BITBRAINS))
    assert loaded.attrs["source"] == f"s3://{bucket}/raw/server_metrics.csv.gz"


def test_push_refuses_what_the_dataset_could_not_read(bucket, tmp_path, export):
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,server_id\n2024-01-01,a\n")
    result = _cli("push", str(plain), "--dataset", "raw_server_metrics")
    assert result.exit_code == 1 and "is not gzip-compressed" in result.output and "gzip -k" in result.output
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(export.read_bytes()[:-12])
    result = _cli("push", str(truncated), "--dataset", "raw_server_metrics")
    assert result.exit_code == 1 and "is not a complete gzip file" in result.output
    result = _cli("push", str(export), "--dataset", "forecasts")
    assert result.exit_code == 2 and "'forecasts' is not a raw/ dataset" in result.output
    assert object_keys(bucket) == {}


def test_push_does_not_replace_without_overwrite(bucket, export, tmp_path):
    assert _cli("push", str(export), "--dataset", "raw_server_metrics").exit_code == 0
    other = tmp_path / "other.csv.gz"
    other.write_bytes(gzip.compress(b"timestamp,server_id\n2024-02-01,b\n"))
    result = _cli("push", str(other), "--dataset", "raw_server_metrics")
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert _body(bucket, "raw/server_metrics.csv.gz") == export.read_bytes()
    assert _cli("push", str(other), "--dataset", "raw_server_metrics", "--overwrite").exit_code == 0
    assert _body(bucket, "raw/server_metrics.csv.gz") == other.read_bytes()


def test_push_to_a_missing_bucket_says_so(aws, export, monkeypatch):
    monkeypatch.setenv("CF_BUCKET", "cf-missing-bucket")
    result = _cli("push", str(export))
    assert result.exit_code == 1
    assert "Cannot use s3://cf-missing-bucket/raw/: NoSuchBucket" in result.output
    assert boto3.client("s3").list_buckets()["Buckets"] == []


def test_interrupted_multipart_push_leaves_nothing_behind(bucket, tmp_path):
    big = tmp_path / "big.csv.gz"
    big.write_bytes(gzip.compress(os.urandom(11 * 2**20), compresslevel=0))
    client = make_client("us-east-1")
    client.put_object(Bucket=bucket, Key="raw/big.csv.gz", Body=b"previous")
    sent = []

    def fail_midway(
        n: int,
    ) -> None:  # runs inside the part uploads, so it fails the transfer like a lost part
        sent.append(n)
        if sum(sent) > 5 * 2**20:
            raise RuntimeError("upload failed midway")

    with pytest.raises(RuntimeError, match="failed midway"):
        push_file(
            client,
            big,
            bucket,
            "raw/big.csv.gz",
            overwrite=True,
            progress=fail_midway,
            multipart_threshold=5 * 2**20,
        )
    assert sum(sent) > 5 * 2**20  # at least one part had gone up
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)
    assert _body(bucket, "raw/big.csv.gz") == b"previous"
    stored = push_file(client, big, bucket, "raw/big.csv.gz", overwrite=True, multipart_threshold=5 * 2**20)
    assert stored.size == big.stat().st_size and _body(bucket, "raw/big.csv.gz") == big.read_bytes()


def test_check_reports_prefixes_and_datasets(bucket, export, kedro_session, tmp_path):
    assert _cli("push", str(export), "--dataset", "raw_server_metrics").exit_code == 0
    catalog = kedro_session(env="cloud").load_context().catalog
    catalog.save("data_quality_report", {"rows_in": 2})
    catalog.save("forecasts", pd.DataFrame({"p50": [1.0, 2.0]}))
    boto3.client("s3").put_object(Bucket=bucket, Key="scratch/notes.txt", Body=b"hello")

    text = _cli("check")
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0] == f"s3://{bucket}  (region us-east-1)"
    raw_line = next(line for line in lines if line.startswith("raw/"))
    assert raw_line.split()[1] == "1"
    assert any(line.startswith("(other)") and line.split()[1] == "1" for line in lines)
    assert "datasets: 3 of" in text.output
    assert any("raw_server_metrics" in line and "present" in line for line in lines)
    assert any("risk_register" in line and "MISSING" in line for line in lines)

    assert _cli("check", "--json", str(tmp_path / "inventory.json")).exit_code == 0
    report = json.loads((tmp_path / "inventory.json").read_text())
    sizes = object_keys(bucket)
    by_name = {d["name"]: d for d in report["datasets"]}
    assert (
        by_name["forecasts"]["present"]
        and by_name["forecasts"]["size"] == sizes["forecasts/forecasts.parquet"]
    )
    assert by_name["forecasts"]["uri"] == f"s3://{bucket}/forecasts/forecasts.parquet"
    assert not by_name["server_truth"]["present"]
    prefixes = {p["prefix"]: p for p in report["prefixes"]}
    assert (
        prefixes["processed/"]["objects"] == 1
        and prefixes["processed/"]["size"] == sizes["processed/data_quality_report.json"]
    )
    assert prefixes["processed/"]["last_modified"] is not None
    assert prefixes["canvas/"]["objects"] == 0


def test_check_only_counts_the_project_prefix(bucket, monkeypatch, export, tmp_path):
    monkeypatch.setenv("CF_PREFIX", "team-a/capacity")
    assert _cli("push", str(export), "--dataset", "raw_server_metrics").exit_code == 0
    boto3.client("s3").put_object(Bucket=bucket, Key="raw/someone-else.csv", Body=b"x")
    assert _cli("check", "--json", str(tmp_path / "inventory.json")).exit_code == 0
    report = json.loads((tmp_path / "inventory.json").read_text())
    assert report["root"] == f"s3://{bucket}/team-a/capacity"
    assert sum(p["objects"] for p in report["prefixes"]) == 1
    assert {d["name"] for d in report["datasets"] if d["present"]} == {"raw_server_metrics"}
    assert "team-a/capacity/raw/server_metrics.csv.gz" in object_keys(bucket)


def test_check_on_a_missing_bucket_fails_clearly(aws, monkeypatch):
    monkeypatch.setenv("CF_BUCKET", "cf-missing-bucket")
    result = _cli("check")
    assert result.exit_code == 1 and "NoSuchBucket" in result.output and "CF_BUCKET" in result.output


def test_cloud_group_is_registered_on_the_project_cli():
    from capacity_forecaster.cli import cli  # noqa: PLC0415

    assert {"push", "check", "image", "setup-role", "pull-metrics"} <= set(cli.commands["cloud"].commands)
    assert set(cli.commands["cloud"].commands["image"].commands) == {"build", "push"}


# setup-role -------------------------------------------------------------------------------------------------
def _role_policies(role: str) -> dict[str, dict]:
    iam = boto3.client("iam")
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    return {n: iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names}


def test_setup_role_creates_the_job_role_from_the_documented_policies(bucket):
    result = _cli("setup-role", "--canvas")
    assert result.exit_code == 0, result.output
    arn = "arn:aws:iam::123456789012:role/capacity-forecaster-jobs"
    assert result.output.strip().endswith(f"export CF_SAGEMAKER_ROLE_ARN={arn}")
    role = boto3.client("iam").get_role(RoleName="capacity-forecaster-jobs")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    policies = _role_policies("capacity-forecaster-jobs")
    assert sorted(policies) == ["capacity-forecaster-canvas", "capacity-forecaster-jobs"]
    text = json.dumps(policies)
    assert "${" not in text and f"arn:aws:s3:::{bucket}/raw/*" in text  # no CF_PREFIX: layout at the root
    assert "arn:aws:iam::123456789012:role/capacity-forecaster-jobs" in text

    again = _cli("setup-role", "--canvas", "--check")
    assert again.exit_code == 0 and "matches docs/iam" in again.output


def test_setup_role_check_reports_drift_and_a_rerun_repairs_it(bucket, monkeypatch):
    monkeypatch.setenv("CF_PREFIX", "team-a")
    assert _cli("setup-role").exit_code == 0
    assert f"arn:aws:s3:::{bucket}/team-a/raw/*" in json.dumps(_role_policies("capacity-forecaster-jobs"))
    boto3.client("iam").put_role_policy(
        RoleName="capacity-forecaster-jobs",
        PolicyName="capacity-forecaster-jobs",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],  # widened by hand
            }
        ),
    )
    check = _cli("setup-role", "--check")
    assert check.exit_code == 1
    assert "would update inline policy capacity-forecaster-jobs" in check.output
    assert "differs from docs/iam" in check.output
    fixed = _cli("setup-role")
    assert fixed.exit_code == 0 and "update inline policy capacity-forecaster-jobs" in fixed.output
    assert _cli("setup-role", "--check").exit_code == 0
