"""AutopilotClient against moto's server (real HTTP, botocore-validated requests) and botocore's Stubber."""

import dataclasses
import io
import logging
import os
import signal
from datetime import UTC, datetime

import boto3
import pandas as pd
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends

from capacity_forecaster.canvas.client import (
    AutopilotClient,
    CanvasUnavailableError,
    PollSettings,
    sigterm_as_interrupt,
)
from capacity_forecaster.canvas.requests import (
    AutopilotSettings,
    build_automl_request,
    build_model_request,
    build_transform_request,
    make_job_names,
    s3_uris,
)
from capacity_forecaster.canvas.transform_input import add_future_regressors
from capacity_forecaster.pipelines.canvas import nodes

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "cf-test"
NOW = datetime(2026, 11, 23, 14, 5, 9, tzinfo=UTC)
SETTINGS = AutopilotSettings(
    role_arn=ROLE, s3_prefix=f"s3://{BUCKET}/canvas/autopilot", horizon=2, country="US"
)
NAMES = make_job_names(SETTINGS.job_prefix, NOW)
URIS = s3_uris(SETTINGS, NAMES)
FAST = PollSettings(interval_s=1.0, backoff=2.0, max_interval_s=3.0, timeout_s=60.0)
ONE_TRY = Config(retries={"total_max_attempts": 1})
TRAINING = pd.DataFrame(
    {
        "item_id": ["s1|cpu_p95"] * 3,
        "timestamp": ["2024-01-01", "2024-01-02", "2024-01-03"],
        "target_value": [40.0, 41.0, 42.0],
        "is_end_of_quarter": 0,
        "is_month_end": 0,
        "is_holiday": [1, 0, 0],
    }
)
REGRESSORS = ["is_end_of_quarter", "is_month_end", "is_holiday"]
INFERENCE = add_future_regressors(TRAINING, 2, REGRESSORS, "US", 2, 5)
OUT = (
    "item_id,timestamp,p10,p50,p90,mean\n"
    "s1|cpu_p95,2024-01-04,38,42,47,42.1\ns1|cpu_p95,2024-01-05,37,43,49,43\n"
)


_SESSIONS: list[boto3.Session] = []  # one session: the SageMaker API model is loaded once for the module


@pytest.fixture
def clients(aws):
    if not _SESSIONS:
        _SESSIONS.append(boto3.Session(region_name="us-east-1"))
    session = _SESSIONS[0]
    sm, s3 = session.client("sagemaker", config=ONE_TRY), session.client("s3", config=ONE_TRY)
    s3.create_bucket(Bucket=BUCKET)
    return sm, s3


def _keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_requests_are_accepted_by_the_sagemaker_api(clients):
    """botocore validates every request against the API model, moto's server accepts them."""
    sm, _ = clients
    sm.create_auto_ml_job_v2(**build_automl_request(SETTINGS, NAMES))
    job = sm.describe_auto_ml_job_v2(AutoMLJobName=NAMES.automl)
    assert job["AutoMLProblemTypeConfigName"] == "TimeSeriesForecasting"
    assert job["AutoMLProblemTypeConfig"]["TimeSeriesForecastingJobConfig"]["ForecastQuantiles"] == [
        "p10",
        "p50",
        "p90",
    ]
    sm.create_model(**build_model_request(SETTINGS, NAMES, job["BestCandidate"]))
    assert sm.describe_model(ModelName=NAMES.model)["ExecutionRoleArn"] == ROLE
    sm.create_transform_job(**build_transform_request(SETTINGS, NAMES))
    transform = sm.describe_transform_job(TransformJobName=NAMES.transform)
    assert transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == URIS["transform_input"]
    assert transform["MaxPayloadInMB"] == 100 and transform["TransformInput"]["SplitType"] == "None"


def test_whole_run_on_moto_uploads_trains_predicts_and_cleans_up(clients):
    """moto never finishes an AutoML job nor writes transform output: the fake sleep does."""
    sm, s3 = clients

    def sagemaker_works(seconds: float) -> None:
        sagemaker_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].auto_ml_jobs[
            NAMES.automl
        ].auto_ml_job_status = "Completed"

    # moto reports the transform Completed at once but writes nothing: write its outputs when it is created
    sm.meta.events.register(
        "after-call.sagemaker.CreateTransformJob", lambda **kwargs: fake_transform(s3, lambda text: OUT)
    )

    s3.put_object(Bucket=BUCKET, Key="canvas/autopilot/" + NAMES.automl + "/output/report.json", Body=b"{}")
    forecasts, record = AutopilotClient(sm, s3, sleep=sagemaker_works).forecast(
        TRAINING, INFERENCE, SETTINGS, FAST, FAST, now=NOW
    )

    assert forecasts[["p10", "p50", "p90"]].to_numpy().tolist() == [[38, 42, 47], [37, 43, 49]]
    assert forecasts["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-01-04", "2024-01-05"]
    assert record["automl_job"] == NAMES.automl and record["best_candidate"] == "best_candidate"
    assert f"model {NAMES.model}" in record["cleaned_up"]
    with pytest.raises(ClientError, match="Could not find model"):
        sm.describe_model(ModelName=NAMES.model)
    assert _keys(s3) == [f"canvas/autopilot/{NAMES.automl}/output/report.json"]  # input and transform deleted
    assert record["estimated_cost_usd"] >= 0 and record["wall_seconds"] >= 0


def fake_transform(s3, predict) -> None:
    """Plays SageMaker batch transform: writes ``<file>.out`` (``predict(input text)``) for every input file,
    in the documented layout (under the output prefix, named after the input file)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="canvas/autopilot/"):
        for listed in page.get("Contents", []):
            key = listed["Key"]
            if "/transform-input/" in key:
                text = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
                out = key.replace("/transform-input/", "/transform/") + ".out"
                s3.put_object(Bucket=BUCKET, Key=out, Body=predict(text).encode())


def _described(status: str, secondary: str, **extra) -> dict:
    return {
        "AutoMLJobName": NAMES.automl,
        "AutoMLJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:automl-job/{NAMES.automl}",
        "AutoMLJobInputDataConfig": build_automl_request(SETTINGS, NAMES)["AutoMLJobInputDataConfig"],
        "OutputDataConfig": {"S3OutputPath": URIS["output"]},
        "RoleArn": ROLE,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        "AutoMLJobStatus": status,
        "AutoMLJobSecondaryStatus": secondary,
        **extra,
    }


BEST = {
    "CandidateName": "cf-best",
    "ObjectiveStatus": "Succeeded",
    "CandidateStatus": "Completed",
    "CandidateSteps": [
        {
            "CandidateStepType": "AWS::SageMaker::TrainingJob",
            "CandidateStepArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/t1",
            "CandidateStepName": "t1",
        }
    ],
    "CreationTime": NOW,
    "LastModifiedTime": NOW,
    "FinalAutoMLJobObjectiveMetric": {"MetricName": "AverageWeightedQuantileLoss", "Value": 0.042},
    "InferenceContainers": [
        {
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/forecast:1",
            "ModelDataUrl": f"{URIS['output']}model.tar.gz",
        }
    ],
}


def _transform(status: str, **extra) -> dict:
    return {
        "TransformJobName": NAMES.transform,
        "ModelName": NAMES.model,
        "CreationTime": NOW,
        "TransformJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{NAMES.transform}",
        "TransformJobStatus": status,
        "TransformInput": build_transform_request(SETTINGS, NAMES)["TransformInput"],
        "TransformResources": {"InstanceType": "ml.m5.2xlarge", "InstanceCount": 1},
        **extra,
    }


def test_state_machine_in_progress_to_parsed_forecasts(clients, caplog):
    sm, s3 = clients
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        fake_transform(s3, lambda text: OUT)

    job = {"AutoMLJobName": NAMES.automl}
    with Stubber(sm) as stub:
        stub.add_response(
            "create_auto_ml_job_v2",
            {"AutoMLJobArn": "arn:aws:sagemaker:us-east-1:1:automl-job/x"},
            build_automl_request(SETTINGS, NAMES),
        )
        stub.add_response("describe_auto_ml_job_v2", _described("InProgress", "AnalyzingData"), job)
        stub.add_response("describe_auto_ml_job_v2", _described("InProgress", "TrainingModels"), job)
        stub.add_response("describe_auto_ml_job_v2", _described("InProgress", "TrainingModels"), job)
        stub.add_response("describe_auto_ml_job_v2", _described("InProgress", "TrainingModels"), job)
        stub.add_response(
            "describe_auto_ml_job_v2", _described("Completed", "Completed", BestCandidate=BEST), job
        )
        stub.add_response(
            "create_model",
            {"ModelArn": "arn:aws:sagemaker:us-east-1:1:model/m"},
            build_model_request(SETTINGS, NAMES, BEST),
        )
        stub.add_response(
            "create_transform_job",
            {"TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/t"},
            build_transform_request(SETTINGS, NAMES),
        )
        stub.add_response(
            "describe_transform_job", _transform("InProgress"), {"TransformJobName": NAMES.transform}
        )
        stub.add_response(
            "describe_transform_job", _transform("Completed"), {"TransformJobName": NAMES.transform}
        )
        stub.add_response("delete_model", {}, {"ModelName": NAMES.model})
        with caplog.at_level(logging.INFO, logger="capacity_forecaster.canvas.client"):
            forecasts, record = AutopilotClient(sm, s3, sleep=sleep).forecast(
                TRAINING, INFERENCE, SETTINGS, FAST, FAST, now=NOW
            )
        stub.assert_no_pending_responses()
    assert waits == [1.0, 1.0, 2.0, 3.0, 1.0]  # reset on a status change, backoff x2 up to 3 s
    assert "InProgress / TrainingModels" in caplog.text and "Completed / Completed" in caplog.text
    assert record["objective"] == {"metric": "AverageWeightedQuantileLoss", "value": 0.042}
    assert len(forecasts) == 2 and (forecasts["model"] == "canvas").all()


def test_failed_job_raises_with_its_reason_and_cleans_up(clients):
    sm, s3 = clients
    job = {"AutoMLJobName": NAMES.automl}
    with Stubber(sm) as stub:
        stub.add_response(
            "create_auto_ml_job_v2", {"AutoMLJobArn": "arn:aws:sagemaker:us-east-1:1:automl-job/x"}, None
        )
        stub.add_response(
            "describe_auto_ml_job_v2",
            _described(
                "Failed", "Failed", FailureReason="ClientError: not enough data points for item s1|cpu_p95"
            ),
            job,
        )
        with pytest.raises(CanvasUnavailableError, match="job_failed: .*not enough data points") as failure:
            AutopilotClient(sm, s3, sleep=lambda s: None).forecast(
                TRAINING, INFERENCE, SETTINGS, FAST, FAST, now=NOW
            )
        stub.assert_no_pending_responses()  # no model was created, so none is deleted
    assert failure.value.record["automl_job"] == NAMES.automl
    assert _keys(s3) == []  # the uploaded training copy was deleted


def test_timeout_stops_the_job():
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    clock = iter(range(0, 10_000, 50))
    with Stubber(sm) as stub:
        for _ in range(2):  # clock 50 s after the first check, 100 s (the limit) after the second
            stub.add_response("describe_auto_ml_job_v2", _described("InProgress", "TrainingModels"), None)
        stub.add_response("stop_auto_ml_job", {}, {"AutoMLJobName": NAMES.automl})
        client = AutopilotClient(sm, s3=None, sleep=lambda s: None, clock=lambda: next(clock))
        with pytest.raises(CanvasUnavailableError, match="timeout: .*still InProgress"):
            client.wait_for_automl(NAMES.automl, PollSettings(1, 1.5, 10, timeout_s=100))
        stub.assert_no_pending_responses()


def test_access_denied_is_classified(clients):
    sm, s3 = clients
    with Stubber(sm) as stub:
        stub.add_client_error(
            "create_auto_ml_job_v2",
            service_error_code="AccessDeniedException",
            service_message="User is not authorized to perform: sagemaker:CreateAutoMLJobV2",
            http_status_code=400,
        )
        with pytest.raises(CanvasUnavailableError, match="access_denied"):
            AutopilotClient(sm, s3, sleep=lambda s: None).forecast(
                TRAINING, INFERENCE, SETTINGS, FAST, FAST, now=NOW
            )


def test_unknown_region_is_unsupported(aws):
    with pytest.raises(CanvasUnavailableError, match="unsupported_region"):
        AutopilotClient.create("xx-nowhere-1")


# -- the node falls back on every failure ------------------------------------------------------------

NODE_ARGS = dict(
    enabled=True,
    role_arn=ROLE,
    s3_prefix=SETTINGS.s3_prefix,
    region="us-east-1",
    job_prefix="cf-canvas",
    horizon=2,
    country="US",
    max_runtime_s=1800,
    max_runtime_per_training_job_s=900,
    max_candidates=2,
    transform_instance_type="ml.m5.2xlarge",
    transform_max_file_mb=100,
    regressors=REGRESSORS,
    month_end_business_days=2,
    quarter_end_business_days=5,
    poll_interval_s=0.0,
    poll_backoff=1.5,
    poll_max_interval_s=0.0,
    transform_timeout_s=60,
    wait_grace_s=600,
    training_usd_per_hour=1.0,
    transform_usd_per_hour=0.5,
)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"enabled": False}, "disabled"),
        ({"role_arn": ""}, "no_role"),
        ({"region": "xx-nowhere-1"}, "unsupported_region"),
        ({"s3_prefix": "not-s3"}, "bad_settings"),
    ],
)
def test_node_falls_back_without_calling_a_job(aws, overrides, reason):
    forecasts, run = nodes.forecast_with_autopilot(TRAINING, **{**NODE_ARGS, **overrides})
    assert forecasts.empty and (run["path"], run["model"], run["reason"]) == (
        "fallback",
        "canvas_local",
        reason,
    )


def _stubbed_factory(monkeypatch, clients, script, sleep=lambda s: None):
    sm, s3 = clients
    stub = Stubber(sm)
    script(stub)
    stub.activate()
    monkeypatch.setattr(
        AutopilotClient, "create", classmethod(lambda cls, region="": cls(sm, s3, sleep=sleep))
    )
    return stub


def test_node_falls_back_on_a_failed_job(monkeypatch, clients):
    def script(stub):
        stub.add_response(
            "create_auto_ml_job_v2", {"AutoMLJobArn": "arn:aws:sagemaker:us-east-1:1:automl-job/x"}, None
        )
        stub.add_response(
            "describe_auto_ml_job_v2",
            _described("Failed", "Failed", FailureReason="AlgorithmError: boom"),
            None,
        )

    stub = _stubbed_factory(monkeypatch, clients, script)
    forecasts, run = nodes.forecast_with_autopilot(TRAINING, **NODE_ARGS)
    stub.assert_no_pending_responses()
    assert forecasts.empty and run["reason"] == "job_failed" and "AlgorithmError: boom" in run["detail"]
    assert run["automl_job"].startswith("cf-canvas-") and "estimated_cost_usd" in run


def test_node_falls_back_on_access_denied(monkeypatch, clients):
    def script(stub):
        stub.add_client_error(
            "create_auto_ml_job_v2",
            service_error_code="AccessDeniedException",
            service_message="not authorized",
            http_status_code=400,
        )

    _stubbed_factory(monkeypatch, clients, script)
    forecasts, run = nodes.forecast_with_autopilot(TRAINING, **NODE_ARGS)
    assert forecasts.empty and (run["path"], run["reason"]) == ("fallback", "access_denied")


def _stub_completed_job(monkeypatch, clients, transform_output: str, *progress: dict) -> Stubber:
    """Autopilot completes after ``progress``; its batch transform writes ``transform_output``."""

    def script(stub):
        stub.add_response(
            "create_auto_ml_job_v2", {"AutoMLJobArn": "arn:aws:sagemaker:us-east-1:1:automl-job/x"}, None
        )
        for described in progress:
            stub.add_response("describe_auto_ml_job_v2", described, None)
        stub.add_response(
            "describe_auto_ml_job_v2", _described("Completed", "Completed", BestCandidate=BEST), None
        )
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:1:model/m"}, None)
        stub.add_response(
            "create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/t"}, None
        )
        stub.add_response("describe_transform_job", _transform("InProgress"), None)
        stub.add_response("describe_transform_job", _transform("Completed"), None)
        stub.add_response("delete_model", {}, None)

    return _stubbed_factory(
        monkeypatch,
        clients,
        script,
        sleep=lambda s: fake_transform(clients[1], lambda text: transform_output),
    )


def test_node_rejects_output_that_misses_the_horizon(monkeypatch, clients):
    """A transform output with one day instead of two is bad output: fall back rather than trust it."""
    short = "item_id,timestamp,p10,p50,p90\ns1|cpu_p95,2024-01-04,38,42,47\n"
    _stub_completed_job(monkeypatch, clients, short)
    forecasts, run = nodes.forecast_with_autopilot(TRAINING, **NODE_ARGS)
    assert forecasts.empty and run["reason"] == "bad_output" and "lack a 2-day forecast" in run["detail"]


def test_node_returns_autopilot_forecasts_when_everything_works(monkeypatch, clients):
    stub = _stub_completed_job(monkeypatch, clients, OUT, _described("InProgress", "TrainingModels"))
    forecasts, run = nodes.forecast_with_autopilot(TRAINING, **NODE_ARGS)
    stub.assert_no_pending_responses()
    assert (run["path"], run["model"], run["reason"]) == ("autopilot", "canvas", "completed")
    assert run["best_candidate"] == "cf-best" and run["sagemaker_model"].endswith("-model")
    assert forecasts["p50"].tolist() == [42.0, 43.0] and (forecasts["model"] == "canvas").all()
    canvas, weights = nodes.build_canvas_forecasts(
        forecasts, run, forecasts.iloc[0:0], pd.DataFrame(), "mase", 3
    )
    assert canvas.equals(forecasts) and weights.empty


def test_a_fleet_over_the_file_limit_is_forecast_from_several_transform_files(clients):
    """Every item's history and future rows in exactly one input file; one ``.out`` per file, all parsed."""
    sm, s3 = clients
    days = pd.date_range("2024-01-01", periods=60, freq="D").strftime("%Y-%m-%d")
    training = pd.concat(
        [
            TRAINING.iloc[:0]
            .reindex(range(60))
            .assign(
                item_id=f"srv-{n:03d}|cpu_p95",
                timestamp=days,
                target_value=float(n),
                is_end_of_quarter=0,
                is_month_end=0,
                is_holiday=0,
            )
            for n in range(40)
        ],
        ignore_index=True,
    )
    inference = add_future_regressors(training, 2, REGRESSORS, "US", 2, 5)
    settings = dataclasses.replace(SETTINGS, transform_max_file_mb=0.02)
    assert len(inference.to_csv(index=False)) > 3 * 0.02 * 1_048_576

    def predict(text: str) -> str:
        """One forecast row per future row of each item in this file: p50 = the item's number."""
        frame = pd.read_csv(io.StringIO(text))
        future = frame[frame["target_value"].isna()]
        level = frame.groupby("item_id")["target_value"].max()
        rows = [
            f"{i},{t},{level[i] - 1},{level[i]},{level[i] + 1}"
            for i, t in zip(future.item_id, future.timestamp, strict=True)
        ]
        return "item_id,timestamp,p10,p50,p90\n" + "\n".join(rows) + "\n"

    def sagemaker_works(seconds: float) -> None:
        sagemaker_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].auto_ml_jobs[
            NAMES.automl
        ].auto_ml_job_status = "Completed"

    sm.meta.events.register(
        "after-call.sagemaker.CreateTransformJob", lambda **kwargs: fake_transform(s3, predict)
    )
    forecasts, record = AutopilotClient(sm, s3, sleep=sagemaker_works).forecast(
        training, inference, settings, FAST, FAST, now=NOW
    )
    assert record["transform_input_files"] >= 4
    transform = sm.describe_transform_job(TransformJobName=NAMES.transform)
    assert transform["MaxPayloadInMB"] == 1 and transform["TransformInput"]["SplitType"] == "None"
    assert len(forecasts) == 40 * 2 and forecasts.groupby("server_id").size().eq(2).all()
    assert forecasts.groupby("server_id")["p50"].first().tolist() == [float(n) for n in range(40)]
    assert _keys(s3) == []  # training copy, transform input and output all deleted


def _automl_created(stub: Stubber) -> None:
    stub.add_response(
        "create_auto_ml_job_v2", {"AutoMLJobArn": "arn:aws:sagemaker:us-east-1:1:automl-job/x"}, None
    )
    stub.add_response("describe_auto_ml_job_v2", _described("InProgress", "TrainingModels"), None)


def test_an_interrupted_run_stops_its_automl_job_and_cleans_up(clients):
    """Ctrl-C (or SIGTERM, below) while waiting for Autopilot: the AutoML job is stopped, not left billing."""
    sm, s3 = clients

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with Stubber(sm) as stub:
        _automl_created(stub)
        stub.add_response("stop_auto_ml_job", {}, {"AutoMLJobName": NAMES.automl})
        with pytest.raises(KeyboardInterrupt):
            AutopilotClient(sm, s3, sleep=interrupted).forecast(
                TRAINING, INFERENCE, SETTINGS, FAST, FAST, now=NOW
            )
        stub.assert_no_pending_responses()
    assert _keys(s3) == []


def test_sigterm_during_the_transform_stops_the_transform_job(clients):
    """SageMaker stops a Processing job with SIGTERM; inside the node it becomes an interrupt that stops the
    transform job (the model is deleted and the staging objects removed as after any run)."""
    sm, s3 = clients
    handler = signal.getsignal(signal.SIGTERM)

    def sigterm(seconds: float) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with Stubber(sm) as stub:
        stub.add_response(
            "create_auto_ml_job_v2", {"AutoMLJobArn": "arn:aws:sagemaker:us-east-1:1:automl-job/x"}, None
        )
        stub.add_response(
            "describe_auto_ml_job_v2", _described("Completed", "Completed", BestCandidate=BEST), None
        )
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:1:model/m"}, None)
        stub.add_response(
            "create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/t"}, None
        )
        stub.add_response("describe_transform_job", _transform("InProgress"), None)
        stub.add_response("stop_transform_job", {}, {"TransformJobName": NAMES.transform})
        stub.add_response("delete_model", {}, {"ModelName": NAMES.model})
        with pytest.raises(KeyboardInterrupt, match="being stopped"), sigterm_as_interrupt():
            AutopilotClient(sm, s3, sleep=sigterm).forecast(
                TRAINING, INFERENCE, SETTINGS, FAST, FAST, now=NOW
            )
        stub.assert_no_pending_responses()
    assert signal.getsignal(signal.SIGTERM) is handler  # restored after the block
    assert _keys(s3) == []
