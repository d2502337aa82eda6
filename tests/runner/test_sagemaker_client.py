"""SageMakerClient: real requests against moto's server (botocore validates them against the real API model),
and botocore's Stubber for the states moto cannot produce (Failed with a reason, Stopped, throttling,
timeout)."""

import time
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import Stubber

from capacity_forecaster.runner.config import JobResources
from capacity_forecaster.runner.jobs import CodeBundle, JobGroup, build_job_specs
from capacity_forecaster.runner.sagemaker_client import (
    JobFailedError,
    JobTimeoutError,
    S3Store,
    SageMakerClient,
    console_links,
    create_request,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ARN = "arn:aws:sagemaker:us-east-1:123456789012:processing-job/"
BUNDLE = CodeBundle(
    s3_uri="s3://cf-test/sagemaker/runs/r1/code",
    package="capacity_forecaster",
    wheel="capacity_forecaster-0.1.0-py3-none-any.whl",
    conf="conf-capacity_forecaster.tar.gz",
)


def _spec(group: str = "risk_analysis", resources: JobResources | None = None):
    groups = [JobGroup(group, (f"{group}.score_node", f"{group}.plan_node"))]
    return build_job_specs(
        groups,
        run_id="r1",
        run_uri="s3://cf-test/sagemaker/runs/r1",
        bundle=BUNDLE,
        kedro_env="cloud",
        environment={"CF_BUCKET": "cf-test"},
        tags={"owner": "t"},
        resources={group: resources} if resources else None,
    )[0]


def _desc(name: str, status: str, **extra):
    return {
        "ProcessingJobName": name,
        "ProcessingJobArn": ARN + name,
        "ProcessingJobStatus": status,
        "CreationTime": NOW,
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.t3.medium", "VolumeSizeInGB": 30}
        },
        "AppSpecification": {
            "ImageUri": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
        },
        **extra,
    }


@pytest.fixture
def offline_sm():
    """A client that never reaches a network: every call must be stubbed."""
    return boto3.client(
        "sagemaker",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        endpoint_url="http://127.0.0.1:9",
    )


class FakeClock:
    """Injected ``sleep``/``clock``: sleeping advances time instantly and is recorded."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_create_request_passes_botocore_validation_on_moto(aws, make_settings):
    settings = make_settings()
    spec = _spec()
    sm = boto3.client("sagemaker")
    client = SageMakerClient(sm, boto3.client("logs"))
    arn = client.submit(spec, settings)
    assert arn == ARN + "cf-r1-risk-analysis"
    statuses = []
    desc = client.wait(spec.name, poll_s=0, on_status=lambda status, d: statuses.append(status))
    assert statuses == ["Completed"] and desc["ProcessingJobStatus"] == "Completed"
    stored = sm.describe_processing_job(ProcessingJobName=spec.name)
    assert stored["AppSpecification"]["ContainerEntrypoint"] == [
        "python3",
        "/opt/ml/processing/input/code/cf_entrypoint.py",
    ]
    assert "--node" in stored["AppSpecification"]["ContainerArguments"]
    assert stored["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
    assert stored["ProcessingInputs"][0]["S3Input"]["LocalPath"] == "/opt/ml/processing/input/code"
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {"owner": "t", "project": "capacity-forecaster", "run_id": "r1", "group": "risk_analysis"}


def test_request_carries_the_groups_resources_and_the_settings(make_settings):
    request = create_request(_spec(resources=JobResources("ml.m5.large", 1, 50, 1800)), make_settings())
    assert request["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 1,
        "InstanceType": "ml.m5.large",
        "VolumeSizeInGB": 50,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
    assert request["Environment"]["KEDRO_DISABLE_TELEMETRY"] == "true"
    assert request["RoleArn"] == "arn:aws:iam::123456789012:role/cf-test"
    assert request["AppSpecification"]["ImageUri"] == make_settings().image_uri


def _quota_error(stubber: Stubber, request: dict) -> None:
    stubber.add_client_error(
        "create_processing_job",
        service_error_code="ResourceLimitExceeded",
        service_message="The account-level service limit 'ml.m5.large for processing job usage' "
        "is 4 Instances",
        http_status_code=400,
        expected_params=request,
    )


def test_quota_refusal_waits_and_resubmits_with_a_clear_message(offline_sm, make_settings, caplog):
    spec, settings, clock = (
        _spec(resources=JobResources("ml.m5.large", 1, 30, 600)),
        make_settings(),
        FakeClock(),
    )
    request = create_request(spec, settings)
    caplog.set_level("INFO", logger="capacity_forecaster")
    client = SageMakerClient(offline_sm, sleep=clock.sleep, quota_retry_wait_s=120, quota_max_wait_s=600)
    with Stubber(offline_sm) as st:
        _quota_error(st, request)
        _quota_error(st, request)
        st.add_response("create_processing_job", {"ProcessingJobArn": ARN + spec.name}, request)
        assert client.submit(spec, settings) == ARN + spec.name
        st.assert_no_pending_responses()
    assert clock.sleeps == [120, 120]
    waiting = [r.getMessage() for r in caplog.records if "quota reached" in r.getMessage()]
    assert len(waiting) == 2 and "1 x ml.m5.large" in waiting[0] and "is 4 Instances" in waiting[0]
    assert "Waiting 120 s before resubmitting" in waiting[0]
    links = console_links("us-east-1", spec.name)
    assert links["console"] == (
        "https://us-east-1.console.aws.amazon.com/sagemaker/home?region=us-east-1"
        "#/processing-jobs/cf-r1-risk-analysis"
    )
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert links["console"] in logged and links["logs"] in logged
    assert (
        "$252Faws$252Fsagemaker$252FProcessingJobs$3FlogStreamNameFilter$3Dcf-r1-risk-analysis"
        in links["logs"]
    )


def test_quota_refusal_gives_up_after_the_longest_wait(offline_sm, make_settings):
    spec, settings, clock = _spec(), make_settings(), FakeClock()
    request = create_request(spec, settings)
    client = SageMakerClient(offline_sm, sleep=clock.sleep, quota_retry_wait_s=300, quota_max_wait_s=600)
    with Stubber(offline_sm) as st:
        for _ in range(3):
            _quota_error(st, request)
        with pytest.raises(JobFailedError, match=r"ResourceLimitExceeded after waiting 600 s: .*4 Instances"):
            client.submit(spec, settings)
    assert clock.sleeps == [300, 300]


def test_failed_job_raises_with_reason_and_cloudwatch_tail(aws, offline_sm):
    name = "cf-r1-risk-analysis"
    logs = boto3.client("logs")
    group, stream = "/aws/sagemaker/ProcessingJobs", f"{name}/algo-1-1700000000"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now_ms = int(time.time() * 1000)
    lines = [
        "[cf-entrypoint] running python -m capacity_forecaster",
        "Traceback (most recent call last):",
        "KeyError: 'cpu_p95'",
    ]
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": now_ms + i, "message": m} for i, m in enumerate(lines)],
    )
    with Stubber(offline_sm) as st:
        st.add_response("describe_processing_job", _desc(name, "InProgress"), {"ProcessingJobName": name})
        st.add_response(
            "describe_processing_job",
            _desc(name, "Failed", FailureReason="AlgorithmError: command exited with code 1"),
            {"ProcessingJobName": name},
        )
        clock = FakeClock()
        client = SageMakerClient(offline_sm, logs, sleep=clock.sleep, clock=clock.clock)
        with pytest.raises(
            JobFailedError, match="ended Failed: AlgorithmError: command exited with code 1"
        ) as err:
            client.wait(name, poll_s=5)
        st.assert_no_pending_responses()
    assert err.value.log_tail == lines
    assert "KeyError: 'cpu_p95'" in str(err.value)


def test_stopped_job_raises(offline_sm):
    name = "cf-r1-etl"
    with Stubber(offline_sm) as st:
        st.add_response("describe_processing_job", _desc(name, "Stopping"), {"ProcessingJobName": name})
        st.add_response(
            "describe_processing_job",
            _desc(name, "Stopped", ExitMessage="Stopped by user"),
            {"ProcessingJobName": name},
        )
        clock = FakeClock()
        with pytest.raises(JobFailedError, match="cf-r1-etl ended Stopped: Stopped by user"):
            SageMakerClient(offline_sm, sleep=clock.sleep, clock=clock.clock).wait(name, poll_s=1)


def test_throttling_is_retried_then_the_job_completes(offline_sm):
    name = "cf-r1-etl"
    with Stubber(offline_sm) as st:
        st.add_client_error("describe_processing_job", "ThrottlingException", "Rate exceeded", 400)
        st.add_client_error("describe_processing_job", "ThrottlingException", "Rate exceeded", 400)
        st.add_response("describe_processing_job", _desc(name, "InProgress"), {"ProcessingJobName": name})
        st.add_response("describe_processing_job", _desc(name, "InProgress"), {"ProcessingJobName": name})
        st.add_response("describe_processing_job", _desc(name, "Completed"), {"ProcessingJobName": name})
        clock = FakeClock()
        statuses = []
        desc = SageMakerClient(offline_sm, sleep=clock.sleep, clock=clock.clock).wait(
            name, poll_s=10, backoff=2, max_poll_s=15, on_status=lambda s, d: statuses.append(s)
        )
        st.assert_no_pending_responses()
    assert desc["ProcessingJobStatus"] == "Completed" and statuses == ["InProgress", "Completed"]
    assert clock.sleeps == [1.0, 2.0, 10, 15]  # two throttling backoffs, then polling backoff capped at 15


def test_other_errors_are_not_retried(offline_sm):
    with Stubber(offline_sm) as st:
        st.add_client_error(
            "describe_processing_job", "ValidationException", "Could not find processing job", 400
        )
        with pytest.raises(Exception, match="Could not find processing job"):
            SageMakerClient(offline_sm, sleep=FakeClock().sleep).wait("cf-x", poll_s=0)


def test_timeout_stops_the_job_and_raises(offline_sm):
    name = "cf-r1-modelling"
    with Stubber(offline_sm) as st:
        for _ in range(4):
            st.add_response("describe_processing_job", _desc(name, "InProgress"), {"ProcessingJobName": name})
        st.add_response("stop_processing_job", {}, {"ProcessingJobName": name})
        clock = FakeClock()
        with pytest.raises(JobTimeoutError, match="still InProgress after 30 s; stop requested"):
            SageMakerClient(offline_sm, sleep=clock.sleep, clock=clock.clock).wait(
                name, poll_s=10, backoff=1, timeout_s=30
            )
        st.assert_no_pending_responses()


def test_s3_store_round_trip(aws, tmp_path):
    boto3.client("s3").create_bucket(Bucket="cf-test")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    store = S3Store(boto3.client("s3"))
    assert store.upload_dir(src, "s3://cf-test/x/code") == ["x/code/a.txt", "x/code/sub/b.txt"]
    files = store.download_prefix("s3://cf-test/x/code/", tmp_path / "dst")
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in files) == ["a.txt", "sub/b.txt"]
    with pytest.raises(FileNotFoundError, match="Nothing under s3://cf-test/nope"):
        store.download_prefix("s3://cf-test/nope/", tmp_path / "none")
