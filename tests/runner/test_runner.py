"""SageMakerRunner in process: dry run, refusals before submitting, the sagemaker backend against moto,
pipeline filtering, Ctrl-C, and a failing job through the local backend."""

import json
import os
import signal
import sys
import threading
import time

import boto3
import pytest
from botocore.stub import Stubber

from capacity_forecaster.runner import JobFailedError, JobSpecError, NonPersistedDatasetError, SageMakerRunner
from capacity_forecaster.runner.backends import LocalBackend, SageMakerBackend
from capacity_forecaster.runner.config import JobResources
from capacity_forecaster.runner.constants import CODE_DIR, META_DIR
from capacity_forecaster.runner.jobs import JobInput, JobOutput, JobSpec
from capacity_forecaster.runner.sagemaker_client import S3Store, SageMakerClient
from tests.runner.toy_project import TOY, toy_catalog


@pytest.fixture
def runner_for(toy_project, toy_wheel, make_settings):
    def make(**kwargs):
        settings = make_settings(**kwargs)
        return SageMakerRunner(
            settings=settings, project_path=toy_project, wheel=toy_wheel, runtime_params={"run_id": "t1"}
        )

    return make


def _jobs_on_moto() -> list[str]:
    summaries = boto3.client("sagemaker").list_processing_jobs()["ProcessingJobSummaries"]
    return sorted(s["ProcessingJobName"] for s in summaries)


def _keys(bucket: str = "cf-test", prefix: str = "") -> list[str]:
    return sorted(
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    )


def test_runner_accepts_the_kedro_cli_arguments(toy_project, make_settings):
    runner = SageMakerRunner(
        is_async=False,
        settings=make_settings(),
        project_path=toy_project,
        max_concurrent_jobs="2",
        dry_run="true",
    )
    assert runner.settings.max_concurrent_jobs == 2 and runner.settings.dry_run is True


def _printed_requests(out: str) -> list[dict]:
    """The JSON list a dry run prints (Kedro's rich log handler may write to stdout too)."""
    printed, _ = json.JSONDecoder().raw_decode(out[out.index("[\n  {") :])
    return printed


def _validate_with_stubber(planned: list[dict]) -> None:
    """Sends every printed request through botocore (model validation) to a Stubber expecting exactly it."""
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    responses = {
        "CreateProcessingJob": ("create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:x"}),
        "CreateAutoMLJobV2": ("create_auto_ml_job_v2", {"AutoMLJobArn": "arn:aws:sagemaker:x"}),
        "CreateTransformJob": ("create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:x"}),
    }
    with Stubber(sm) as st:
        for item in planned:
            method, response = responses[item["operation"]]
            st.add_response(method, response, item["request"])
            getattr(sm, method)(**item["request"])
        st.assert_no_pending_responses()


def test_dry_run_prints_the_exact_requests_and_submits_nothing(bucket, runner_for, capsys):
    runner = runner_for(
        dry_run=True,
        resources={"plot": {"instance_type": "ml.m5.xlarge", "max_runtime_s": 1800, "volume_size_gb": 50}},
    )
    runner.run(TOY, toy_catalog())
    printed = _printed_requests(capsys.readouterr().out)
    assert {p["operation"] for p in printed} == {"CreateProcessingJob"}
    requests = [p["request"] for p in printed]
    assert [r["ProcessingJobName"] for r in requests] == ["cf-t1-prep", "cf-t1-plot", "cf-t1-stats"]
    assert printed[1]["depends_on"] == printed[2]["depends_on"] == ["cf-t1-prep"]
    assert requests[1]["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 1,
        "InstanceType": "ml.m5.xlarge",
        "VolumeSizeInGB": 50,
    }
    assert requests[1]["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
    assert requests[0]["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.t3.medium"
    assert requests[0]["AppSpecification"]["ImageUri"] == runner.settings.image_uri
    assert requests[0]["RoleArn"] == runner.settings.role_arn
    assert requests[0]["Environment"]["CF_SAGEMAKER_ROLE_ARN"] == runner.settings.role_arn
    _validate_with_stubber(printed)
    assert _jobs_on_moto() == [] and _keys() == []


def test_more_than_one_instance_is_refused_before_submitting(bucket, runner_for):
    with pytest.raises(
        JobSpecError, match="'stats' asks for instance_count=3: every instance would run the same nodes"
    ):
        runner_for(resources={"stats": {"instance_count": 3}}).run(TOY, toy_catalog())
    assert _jobs_on_moto() == [] and _keys() == []


def test_memory_dataset_crossing_jobs_is_refused_before_submitting(bucket, runner_for):
    runner = runner_for()
    with pytest.raises(NonPersistedDatasetError, match=r"scaled \(read by job group\(s\) plot, stats\)"):
        runner.run(TOY, toy_catalog(scaled_in_memory=True))
    assert _jobs_on_moto() == [] and _keys() == []


def test_per_node_grouping_needs_every_intermediate_persisted(bucket, runner_for):
    with pytest.raises(
        NonPersistedDatasetError, match=r"raw_numbers \(read by job group\(s\) prep.scale_node\)"
    ):
        runner_for(grouping="per_node").run(TOY, toy_catalog())


def test_sagemaker_backend_on_moto_submits_one_job_per_group_and_completes(bucket, runner_for, caplog):
    caplog.set_level("INFO", logger="capacity_forecaster")
    runner = runner_for(max_concurrent_jobs=2)
    runner.run(TOY, toy_catalog())
    assert _jobs_on_moto() == ["cf-t1-plot", "cf-t1-prep", "cf-t1-stats"]
    assert [r.status for r in runner.results] == ["Completed"] * 3
    assert runner.results[0].name == "cf-t1-prep"  # dependencies first
    assert _keys(prefix="sagemaker/runs/t1/code/") == [
        "sagemaker/runs/t1/code/cf_entrypoint.py",
        "sagemaker/runs/t1/code/cf_toy-0.1.0-py3-none-any.whl",
        "sagemaker/runs/t1/code/conf-cf_toy.tar.gz",
    ]
    assert "Estimated compute cost of this run" in caplog.text
    assert "Submitted SageMaker job cf-t1-prep" in caplog.text


def test_only_missing_outputs_submits_only_the_missing_group(bucket, runner_for):
    s3 = boto3.client("s3")
    for name, body in {"scaled": [1.5], "summary": {"count": 1}}.items():
        s3.put_object(Bucket="cf-test", Key=f"toy/{name}.json", Body=json.dumps(body).encode())
    runner = runner_for()
    runner.run(TOY, toy_catalog(), only_missing_outputs=True)
    assert _jobs_on_moto() == ["cf-t1-plot"]


def test_from_nodes_filtering_is_respected(bucket, runner_for):
    runner = runner_for()
    runner.run(TOY.from_nodes("stats.summarise_node"), toy_catalog())
    assert [s.name for s in runner.job_specs] == ["cf-t1-stats"]


@pytest.mark.parametrize("attempt", range(20))
def test_ctrl_c_stops_running_jobs(bucket, runner_for, attempt):
    """Ctrl-C while a job runs: the runner stops it and re-raises. Run 20 times: no step waits on the clock.

    The poller's ``sleep`` sends SIGINT to the main thread and then blocks until the stop request was made,
    so the stubbed calls come in one order only: create, describe (InProgress), stop, describe (Stopped).
    """
    sm = boto3.client("sagemaker")
    name = "cf-t1-stats"
    stop_requested, poller_done = threading.Event(), threading.Event()

    def interrupt(seconds: float) -> None:  # the poller's sleep: Ctrl-C reaches the main thread
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        if not stop_requested.wait(timeout=300):
            raise AssertionError("the runner never asked to stop the job after Ctrl-C")

    class RecordingBackend(SageMakerBackend):
        def run(self, job):
            try:
                return super().run(job)
            finally:
                poller_done.set()

        def stop(self, job):
            super().stop(job)
            stop_requested.set()

    desc = {
        "ProcessingJobName": name,
        "ProcessingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{name}",
        "CreationTime": time.time(),
        "AppSpecification": {"ImageUri": "img"},
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.t3.medium", "VolumeSizeInGB": 30}
        },
    }
    with Stubber(sm) as st:
        st.add_response("create_processing_job", {"ProcessingJobArn": desc["ProcessingJobArn"]})
        st.add_response("describe_processing_job", {**desc, "ProcessingJobStatus": "InProgress"})
        st.add_response("stop_processing_job", {}, {"ProcessingJobName": name})
        st.add_response("describe_processing_job", {**desc, "ProcessingJobStatus": "Stopped"})
        runner = runner_for()
        runner._backend = RecordingBackend(SageMakerClient(sm, sleep=interrupt), runner.settings)
        with pytest.raises(KeyboardInterrupt):
            runner.run(TOY.only_nodes_with_namespaces(["stats"]), toy_catalog())
        assert stop_requested.is_set()
        assert poller_done.wait(timeout=300), "the poller did not end after the job was stopped"
        st.assert_no_pending_responses()


def _fail_when_created(sm, job_name: str, reason: str) -> None:
    """moto completes every job at once; this marks ``job_name`` Failed in moto's in-process backend as soon
    as it is created, as SageMaker would report a failed container."""
    from moto.core import DEFAULT_ACCOUNT_ID  # noqa: PLC0415
    from moto.sagemaker.models import sagemaker_backends  # noqa: PLC0415

    def mark_failed(parsed, **kwargs):
        if parsed["ProcessingJobArn"].endswith(f"/{job_name}"):
            job = sagemaker_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].processing_jobs[job_name]
            job.processing_job_status, job.failure_reason = "Failed", reason

    sm.meta.events.register("after-call.sagemaker.CreateProcessingJob", mark_failed)


def test_failed_job_error_message_says_how_to_resume(bucket, runner_for):
    sm = boto3.client("sagemaker")
    _fail_when_created(sm, "cf-t1-stats", "AlgorithmError: summarise failed")
    runner = runner_for(max_concurrent_jobs=1)  # prep, then plot, then stats
    runner._backend = SageMakerBackend(SageMakerClient(sm), runner.settings)
    with pytest.raises(JobFailedError) as err:
        runner.run(TOY, toy_catalog())
    message = str(err.value)
    assert message.startswith("Job cf-t1-stats ended Failed: AlgorithmError: summarise failed")
    assert "2 of 3 job(s) finished; 1 node(s) have not run" in message
    assert message.endswith('your previous command: --from-nodes "stats.summarise_node"')
    assert err.value.resume_hint in message


def test_resume_hint_when_the_first_job_fails(bucket, runner_for):
    sm = boto3.client("sagemaker")
    _fail_when_created(sm, "cf-t1-prep", "AlgorithmError: boom")
    runner = runner_for()
    runner._backend = SageMakerBackend(SageMakerClient(sm), runner.settings)
    with pytest.raises(
        JobFailedError, match="No job finished: once the cause is fixed, run the same command"
    ):
        runner.run(TOY, toy_catalog())


def test_local_backend_runs_python3_with_the_interpreter_that_runs_kedro(
    bucket, make_settings, tmp_path, monkeypatch
):
    """A ``python3`` first on PATH (an unactivated venv's system Python) must not run the job."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text("#!/bin/sh\necho 'system python3 from PATH' >&2\nexit 7\n")
    (fake_bin / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    s3 = boto3.client("s3")
    s3.put_object(Bucket="cf-test", Key="code/placeholder.txt", Body=b"x")
    spec = JobSpec(
        name="cf-t1-python",
        group="python",
        nodes=("python_node",),
        depends_on=(),
        command=(
            "python3",
            "-c",
            f"import sys, pathlib; pathlib.Path('{META_DIR}/python.txt').write_text(sys.executable)",
        ),
        environment={},
        inputs=(JobInput("code", "s3://cf-test/code/", CODE_DIR),),
        outputs=(JobOutput("meta", META_DIR, "s3://cf-test/meta/"),),
    )
    result = LocalBackend(S3Store(s3), make_settings(), keep_failed=False).run(spec)
    assert result.status == "Completed"
    assert s3.get_object(Bucket="cf-test", Key="meta/python.txt")["Body"].read().decode() == sys.executable


@pytest.mark.slow
def test_failing_job_on_local_backend_raises_with_log_tail(
    bucket, runner_for, toy_project, monkeypatch, caplog
):
    """Real subprocess jobs (cf_toy wheel, conf tarball from S3, data on moto S3); n=0 breaks summarise."""
    caplog.set_level("INFO", logger="kedro")
    runner = runner_for(backend="local", max_runtime_s=900)  # a limit, not a timing: ~13 s here
    runner._backend = LocalBackend(S3Store(boto3.client("s3")), runner.settings, keep_failed=False)
    runner._runtime_params = {"run_id": "t1", "n": 0}
    with pytest.raises(JobFailedError, match="cf-t1-stats ended Failed: AlgorithmError") as err:
        runner.run(TOY.only_nodes_with_namespaces(["prep", "stats"]), toy_catalog())
    assert any("max() iterable argument is empty" in line or "empty" in line for line in err.value.log_tail)
    assert (
        json.loads(boto3.client("s3").get_object(Bucket="cf-test", Key="toy/scaled.json")["Body"].read())
        == []
    )
    assert '--from-nodes "stats.summarise_node"' in str(err.value)  # the resume hint is in the error
    assert "--from-nodes" in caplog.text


def test_local_backend_stops_a_job_at_its_own_max_runtime(bucket, make_settings):
    """A job group's ``max_runtime_s`` (resources in sagemaker.yml) is the local limit, not the global one."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket="cf-test", Key="code/placeholder.txt", Body=b"x")
    spec = JobSpec(
        name="cf-t1-sleep",
        group="sleep",
        nodes=("sleep_node",),
        depends_on=(),
        command=("python3", "-c", "import time; time.sleep(600)"),
        environment={},
        inputs=(JobInput("code", "s3://cf-test/code/", CODE_DIR),),
        outputs=(JobOutput("meta", META_DIR, "s3://cf-test/meta/"),),
        resources=JobResources("ml.t3.medium", 1, 30, 1),
    )
    backend = LocalBackend(S3Store(s3), make_settings(max_runtime_s=900), keep_failed=False)
    with pytest.raises(JobFailedError, match="ended Stopped: MaxRuntimeExceeded: job ran longer than 1 s"):
        backend.run(spec)
