"""``kedro cloud push`` and ``kedro run --env cloud`` on moto as an IAM user holding only the documented
policies, with moto's IAM enforcement on.

The user gets docs/iam/submitter-policy.json (it submits the run) and docs/iam/job-role-policy.json (with the
local backend its credentials also run the jobs, as the job role does on SageMaker), rendered for the test
bucket. moto checks the action of every request; it evaluates S3 resources for real but checks every other
service against the resource "*" (moto/core/authorization.py), so the Resource of non-S3 statements is widened
to "*" here (S3 statements keep their real resources). moto ignores Conditions.
"""

import json
import os
from pathlib import Path

import boto3
import pytest
import requests
import s3fs
from botocore.exceptions import ClientError
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from capacity_forecaster.cloud.iam import POLICY_DIR, placeholder_values, render_policy
from capacity_forecaster.cloud.settings import CloudSettings
from tests.conftest import PROJECT_PATH
from tests.helpers import run_kedro
from tests.pipelines.risk_analysis.test_pipeline import _write_inputs

pytestmark = pytest.mark.slow
BUCKET = "cf-restricted"
ACCOUNT = "123456789012"  # moto's account
POLICIES = ("submitter-policy.json", "job-role-policy.json")


def _for_moto(policy: dict) -> dict:
    """Non-S3 statements get Resource "*" (moto checks them against "*"); S3 statements are unchanged."""
    statements = []
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        if all(a.startswith("s3:") for a in actions):
            statements.append(statement)
        else:
            statements.append({**statement, "Resource": "*"})
    return {**policy, "Statement": statements}


@pytest.fixture
def restricted_user(aws, tmp_path, monkeypatch) -> dict[str, str]:
    """Inputs on S3 (written as the admin), and an IAM user with only the documented policies.

    Yields the user's credentials as environment variables; IAM enforcement is on until the test ends.
    """
    admin = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    admin.client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("CF_BUCKET", BUCKET)
    monkeypatch.delenv("CF_PREFIX", raising=False)
    monkeypatch.setenv("CF_DATA_ROOT", str(tmp_path))
    _write_inputs(tmp_path, with_truth=True)
    bootstrap_project(PROJECT_PATH)
    with KedroSession.create(project_path=PROJECT_PATH) as session:
        frames = {n: session.load_context().catalog.load(n) for n in ("forecasts", "clean_server_metrics")}
    with KedroSession.create(project_path=PROJECT_PATH, env="cloud") as session:
        catalog = session.load_context().catalog
        for name, frame in frames.items():
            catalog.save(name, frame)

    iam = admin.client("iam")
    iam.create_user(UserName="capacity-planner")
    values = placeholder_values(CloudSettings(bucket=BUCKET, region="us-east-1"), ACCOUNT, "cf-jobs")
    for file in POLICIES:
        document = _for_moto(render_policy(PROJECT_PATH / POLICY_DIR / file, values))
        iam.put_user_policy(UserName="capacity-planner", PolicyName=file, PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName="capacity-planner")["AccessKey"]
    credentials = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    requests.post(f"{aws}/moto-api/reset-auth", data=b"0", timeout=10)  # enforce IAM from now on
    try:
        yield credentials
    finally:
        requests.post(f"{aws}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_push_and_a_cloud_run_need_nothing_beyond_the_documented_policies(
    restricted_user, project_wheel, tmp_path: Path
):
    user = boto3.Session(
        region_name="us-east-1",
        **{
            "aws_access_key_id": restricted_user["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": restricted_user["AWS_SECRET_ACCESS_KEY"],
        },
    )
    with pytest.raises(ClientError, match="AccessDenied|403"):  # enforcement is on: undocumented calls fail
        user.client("sagemaker").list_processing_jobs()
    with pytest.raises(ClientError, match="AccessDenied"):
        user.client("s3").put_object(Bucket=BUCKET, Key="elsewhere/x.txt", Body=b"x")

    pushed = run_kedro(
        "cloud",
        "push",
        str(tmp_path / "01_raw" / "server_inventory.csv"),
        "--dataset",
        "server_inventory",
        env={**os.environ, **restricted_user},
    )
    assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
    assert f"-> s3://{BUCKET}/raw/server_inventory.csv" in pushed.stdout

    run = run_kedro(
        "run",
        "--env",
        "cloud",
        "--pipelines",
        "risk_analysis",
        "--params",
        "run_id=iam",
        "--runner-params",
        f"backend=local,wheel={project_wheel}",
        env={**os.environ, **restricted_user},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    keys = {o["Key"] for o in user.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {
        "risk_analysis/risk_register.parquet",
        "risk_analysis/risk_summary.json",
        "sagemaker/runs/iam/jobs/cf-iam-risk-analysis.json",
    } <= keys
