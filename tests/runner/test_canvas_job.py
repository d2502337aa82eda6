"""The real project's canvas pipeline under the SageMaker runner, dry run: the Processing job that runs canvas
gets the role and a runtime long enough for Autopilot, and the printed Autopilot requests are valid."""


import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from capacity_forecaster.runner import SageMakerRunner
from tests.conftest import PROJECT_PATH
from tests.runner.test_runner import _printed_requests, _validate_with_stubber

ROLE = "arn:aws:iam::123456789012:role/capacity-forecaster-jobs"


@pytest.fixture
def cloud_env(bucket, monkeypatch):
    monkeypatch.setenv("CF_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("CF_SAGEMAKER_IMAGE_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/cf:1")


def _dry_run(capsys, **canvas) -> list[dict]:
    bootstrap_project(PROJECT_PATH)
    params = {"canvas": canvas} if canvas else {}
    with KedroSession.create(project_path=PROJECT_PATH, env="cloud", runtime_params=params) as session:
        runner = SageMakerRunner(env="cloud", project_path=PROJECT_PATH, runtime_params=params, dry_run=True)
        capsys.readouterr()
        session.run(pipeline_names=["canvas"], runner=runner)
    return _printed_requests(capsys.readouterr().out)


def test_canvas_job_gets_the_role_and_autopilots_time_caps(cloud_env, capsys):
    planned = _dry_run(capsys, enabled=True)
    assert [p["operation"] for p in planned] == [
        "CreateProcessingJob",
        "CreateAutoMLJobV2",
        "CreateTransformJob",
    ]
    job = planned[0]["request"]
    assert job["Environment"]["CF_SAGEMAKER_ROLE_ARN"] == ROLE == job["RoleArn"]
    # 600 s of its own work + AutoML cap 1800 + grace 600 + transform limit 1800 + 2 polls of 300 s
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 600 + 1800 + 600 + 1800 + 600}
    automl, transform = planned[1]["request"], planned[2]["request"]
    assert automl["RoleArn"] == ROLE and automl["AutoMLJobName"].startswith("cf-canvas-")
    criteria = automl["AutoMLProblemTypeConfig"]["TimeSeriesForecastingJobConfig"]["CompletionCriteria"]
    assert criteria["MaxAutoMLJobRuntimeInSeconds"] == 1800
    assert transform["MaxPayloadInMB"] == 100 and transform["TransformInput"]["SplitType"] == "None"
    assert transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"].endswith("/transform-input/")
    _validate_with_stubber(planned)


def test_canvas_disabled_keeps_the_default_runtime_and_sends_no_autopilot_request(cloud_env, capsys):
    planned = _dry_run(capsys)
    assert [p["operation"] for p in planned] == ["CreateProcessingJob"]
    assert planned[0]["request"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
