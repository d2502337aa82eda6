"""End to end through the Kedro CLI: ``kedro run --env cloud`` with the SageMaker runner's local backend
executing real job specs as subprocesses against moto's S3, compared with a SequentialRunner run of the same
pipeline (in process, same functions, another prefix)."""

import json
import os
import subprocess
import sys

import boto3
import pytest
from kedro.runner import SequentialRunner

from tests.runner.toy_project import TOY, toy_catalog

pytestmark = pytest.mark.slow


def _kedro(project, *args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _json_objects(prefix: str) -> dict:
    s3 = boto3.client("s3")
    out = {}
    for obj in s3.list_objects_v2(Bucket="cf-test", Prefix=prefix).get("Contents", []):
        out[obj["Key"][len(prefix) :]] = json.loads(
            s3.get_object(Bucket="cf-test", Key=obj["Key"])["Body"].read()
        )
    return out


def test_toy_project_on_local_backend_equals_sequential_run(bucket, toy_project, toy_wheel):
    _kedro(
        toy_project,
        "--env",
        "cloud",
        "--pipelines",
        "basic",
        "--runner",
        "capacity_forecaster.runner.SageMakerRunner",
        "--runner-params",
        f"runtime_params.run_id=e2e,wheel={toy_wheel}",
        env={"CF_PREFIX": "remote"},
    )
    SequentialRunner().run(TOY, toy_catalog("s3://cf-test/local"))  # the baseline, in process

    remote, local = _json_objects("remote/"), _json_objects("local/")
    assert sorted(remote) == ["bins.json", "scaled.json", "summary.json"]
    assert remote == local
    assert remote["summary.json"] == {"count": 12, "total": 117.0, "max": 18.0}

    reports = _json_objects("sagemaker/runs/e2e/jobs/")
    assert sorted(reports) == [
        "cf-e2e-plot.json",
        "cf-e2e-prep.json",
        "cf-e2e-stats.json",
    ]  # one job per namespace
    prep = reports["cf-e2e-prep.json"]
    assert (
        prep["returncode"] == 0 and prep["installed_requirements"] == []
    )  # nothing fetched: no network needed
    assert prep["nodes"] == ["prep.make_numbers_node", "prep.scale_node"]
    assert prep["command"][prep["command"].index("--runner") + 1] == "SequentialRunner"
    assert "run_id=e2e" in prep["command"]
