"""``kedro run --env cloud --pipelines risk_analysis`` on the real project: the SageMaker runner (picked by
cli.DEFAULT_RUNNERS for the cloud env) with its local backend, against moto's S3; its outputs equal those of a
SequentialRunner run of the same pipeline in the same environment (in process, under another prefix)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.runner import SequentialRunner

from capacity_forecaster.pipelines.risk_analysis import create_pipeline as create_risk_analysis
from tests.pipelines.risk_analysis.test_pipeline import _write_inputs

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[2]
INPUTS = ("forecasts", "clean_server_metrics", "server_inventory", "server_truth")
TABLES = ("risk_register", "server_clusters", "consolidation_plan", "rightsizing_recommendations")
REPORTS = ("risk_summary", "risk_evaluation")


PLAIN_LOGGING = """
version: 1
disable_existing_loggers: false
handlers:
  plain: {class: logging.StreamHandler, formatter: plain}
formatters:
  plain: {format: "%(levelname)s %(name)s: %(message)s"}
loggers:
  kedro: {level: INFO}
  capacity_forecaster: {level: INFO}
root: {handlers: [plain]}
"""


def _kedro_run(*args: str, prefix: str, logging_config: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env", "cloud", "--pipelines", "risk_analysis", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "CF_PREFIX": prefix, "KEDRO_LOGGING_CONFIG": str(logging_config)},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _read(key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket="cf-e2e", Key=key)["Body"].read()


@pytest.fixture
def inputs_on_s3(aws, tmp_path, monkeypatch):
    """The risk_analysis test inputs, saved through the cloud catalog in ``remote/``, copied to ``local/``."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cf-e2e")
    monkeypatch.setenv("CF_BUCKET", "cf-e2e")
    monkeypatch.setenv("CF_DATA_ROOT", str(tmp_path))
    _write_inputs(tmp_path, with_truth=True)
    bootstrap_project(PROJECT)
    with KedroSession.create(project_path=PROJECT) as session:
        frames = {name: session.load_context().catalog.load(name) for name in INPUTS}
    monkeypatch.setenv("CF_PREFIX", "remote")
    with KedroSession.create(project_path=PROJECT, env="cloud") as session:
        catalog = session.load_context().catalog
        for name, frame in frames.items():
            catalog.save(name, frame)
    monkeypatch.delenv("CF_PREFIX")
    for obj in s3.list_objects_v2(Bucket="cf-e2e", Prefix="remote/")["Contents"]:
        target = "local/" + obj["Key"].removeprefix("remote/")
        s3.copy_object(Bucket="cf-e2e", Key=target, CopySource={"Bucket": "cf-e2e", "Key": obj["Key"]})


def test_risk_analysis_on_the_local_backend_equals_a_sequential_run(
    inputs_on_s3, project_wheel, tmp_path, monkeypatch
):
    logging_config = tmp_path / "logging.yml"
    logging_config.write_text(PLAIN_LOGGING)
    log = _kedro_run(
        "--params",
        "run_id=e2e",
        "--runner-params",
        f"backend=local,wheel={project_wheel}",
        prefix="remote",
        logging_config=logging_config,
    )
    monkeypatch.setenv("CF_PREFIX", "local")
    with KedroSession.create(project_path=PROJECT, env="cloud") as session:
        session.run(pipeline_names=["risk_analysis"], runner=SequentialRunner())

    n_nodes = len(create_risk_analysis().nodes)
    assert f"{n_nodes} node(s) in 1 SageMaker job(s) (namespace grouping, local backend)" in log
    assert "Job cf-e2e-risk-analysis Completed" in log
    keys = sorted(
        o["Key"]
        for o in boto3.client("s3").list_objects_v2(
            Bucket="cf-e2e", Prefix="remote/sagemaker/runs/e2e/jobs/"
        )["Contents"]
    )
    assert keys == ["remote/sagemaker/runs/e2e/jobs/cf-e2e-risk-analysis.json"]  # one job for the namespace
    report = json.loads(_read(keys[0]))
    assert report["returncode"] == 0 and len(report["nodes"]) == n_nodes

    for name in TABLES:
        remote = pd.read_parquet(io.BytesIO(_read(f"remote/risk_analysis/{name}.parquet")))
        local = pd.read_parquet(io.BytesIO(_read(f"local/risk_analysis/{name}.parquet")))
        assert len(remote) > 0
        pd.testing.assert_frame_equal(remote, local)
    for name in REPORTS:
        assert json.loads(_read(f"remote/risk_analysis/{name}.json")) == json.loads(
            _read(f"local/risk_analysis/{name}.json")
        )
    summary = json.loads(_read("remote/risk_analysis/risk_summary.json"))
    assert summary["server_tiers"] == {"very_high": 1, "high": 1, "normal": 6, "underutilized": 4}
