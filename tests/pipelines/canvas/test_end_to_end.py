"""The canvas pipeline with canvas ENABLED, through a KedroSession, against moto's server (real HTTP APIs).

moto accepts the AutoML job but never finishes it, so the run ends in the documented fallbacks: a timeout (the
job is stopped) and, with IAM enforcement on, AccessDenied. Both must still produce canvas_local forecasts.
"""

import json

import boto3
import pandas as pd
import requests
from kedro.runner import SequentialRunner

from .conftest import HORIZON, SERIES

BUCKET = "cf-e2e"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def _write_inputs(fleet, data_root) -> None:
    for name, path in {
        "clean_server_metrics": "03_primary/clean_server_metrics.parquet",
        "forecasts": "07_model_output/forecasts.parquet",
        "model_metrics": "08_reporting/model_metrics.parquet",
        "future_metrics": "01_raw/future_metrics.parquet",
    }.items():
        (data_root / path).parent.mkdir(parents=True, exist_ok=True)
        fleet[name].to_parquet(data_root / path)


def _run(kedro_session, **canvas) -> None:
    settings = {
        "enabled": True,
        "role_arn": ROLE,
        "s3_prefix": f"s3://{BUCKET}/canvas/autopilot",
        "region": "us-east-1",
        "max_runtime_s": 1,
        "wait_grace_s": 0,
        "poll_interval_s": 0.05,
        "poll_max_interval_s": 0.05,
        **canvas,
    }
    session = kedro_session(runtime_params={"horizon": HORIZON, "canvas": settings})
    session.run(pipeline_names=["canvas"], runner=SequentialRunner())


def _outputs(data_root) -> tuple[pd.DataFrame, dict]:
    canvas = pd.read_parquet(data_root / "07_model_output/canvas_forecasts.parquet")
    return canvas, json.loads((data_root / "08_reporting/canvas_comparison.json").read_text())


def test_enabled_run_times_out_stops_the_job_and_falls_back(aws, fleet, kedro_session, data_root):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    _write_inputs(fleet, data_root)
    _run(kedro_session)

    canvas, comparison = _outputs(data_root)
    assert (canvas["model"] == "canvas_local").all() and len(canvas) == len(SERIES) * HORIZON
    assert (comparison["path"], comparison["reason"]) == ("fallback", "timeout")
    job = comparison["autopilot"]["automl_job"]
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    described = sagemaker.describe_auto_ml_job_v2(AutoMLJobName=job)
    assert described["AutoMLJobStatus"] == "Stopped"  # we stopped it
    config = described["AutoMLProblemTypeConfig"]["TimeSeriesForecastingJobConfig"]
    assert config["ForecastHorizon"] == HORIZON and config["HolidayConfig"] == [{"CountryCode": "US"}]
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0  # the staged training copy was removed
    assert any(
        key.endswith("/input/canvas_training_data.csv") for key in comparison["autopilot"]["cleaned_up"]
    )


def test_enabled_run_without_sagemaker_permission_falls_back(
    aws, fleet, kedro_session, data_root, monkeypatch
):
    admin = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    admin.client("s3").create_bucket(Bucket=BUCKET)
    iam = admin.client("iam")
    iam.create_user(UserName="planner")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
                "Resource": f"arn:aws:s3:::{BUCKET}/*",
            },
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{BUCKET}"},
        ],
    }
    iam.put_user_policy(UserName="planner", PolicyName="s3-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="planner")["AccessKey"]
    _write_inputs(fleet, data_root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    requests.post(f"{aws}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        _run(kedro_session)
    finally:
        requests.post(f"{aws}/moto-api/reset-auth", data=b"inf", timeout=10)

    canvas, comparison = _outputs(data_root)
    assert (canvas["model"] == "canvas_local").all()
    assert (comparison["path"], comparison["reason"]) == ("fallback", "access_denied")
    assert "sagemaker:CreateAutoMLJobV2" in comparison["detail"]
    assert admin.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0  # upload cleaned up
