"""The runner's only door to AWS: SageMaker Processing jobs, their CloudWatch logs, and S3 transfers.

Clients are passed in (so tests hand in clients pointed at moto's server or wrapped in botocore's Stubber).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from capacity_forecaster.progress import track
from capacity_forecaster.runner.config import SageMakerSettings
from capacity_forecaster.runner.constants import LOG_GROUP, QUOTA_CODE, TERMINAL_STATUSES, THROTTLING_CODES
from capacity_forecaster.runner.jobs import JobSpec

log = logging.getLogger(__name__)
BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


class JobFailedError(RuntimeError):
    """A job ended Failed or Stopped (or was not submitted); carries SageMaker's reason and the log tail."""

    def __init__(
        self,
        job_name: str,
        status: str,
        reason: str,
        log_tail: list[str] | None = None,
        arn: str | None = None,
    ):
        self.job_name, self.status, self.reason, self.arn = job_name, status, reason, arn
        self.log_tail = list(log_tail or [])
        message = f"Job {job_name} ended {status}: {reason or 'no FailureReason given'}"
        if self.log_tail:
            message += "\nLast log lines:\n  " + "\n  ".join(self.log_tail)
        super().__init__(message)


class JobTimeoutError(JobFailedError):
    """The runner stopped waiting for a job (and asked SageMaker to stop it)."""


def make_clients(region: str) -> dict[str, Any]:
    """boto3 clients for SageMaker, CloudWatch Logs and S3 with standard retries (endpoint from the env)."""
    session = boto3.session.Session(region_name=region)
    return {name: session.client(name, config=BOTO_CONFIG) for name in ("sagemaker", "logs", "s3")}


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"Not an S3 URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class S3Store:
    """Folder-level S3 transfers used to ship code and to stand in for Processing inputs and outputs."""

    def __init__(self, s3_client: Any):
        self._s3 = s3_client

    def upload_dir(self, folder: Path, s3_uri: str) -> list[str]:
        """Uploads every file below ``folder`` under ``s3_uri``; returns the keys written."""
        bucket, prefix = split_s3_uri(s3_uri)
        keys = []
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}".lstrip("/")
            self._s3.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def download_prefix(self, s3_uri: str, folder: Path) -> list[Path]:
        """Downloads every object under ``s3_uri`` (a prefix) into ``folder``, keeping the relative layout."""
        bucket, prefix = split_s3_uri(s3_uri)
        files = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in track(
            paginator.paginate(Bucket=bucket, Prefix=prefix),
            f"Download {s3_uri}",
            size=lambda page: len(page.get("Contents", [])),
            unit="objects",
        ):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :].lstrip("/")
                if not rel:
                    continue
                target = Path(folder) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._s3.download_file(bucket, obj["Key"], str(target))
                files.append(target)
        if not files:
            raise FileNotFoundError(f"Nothing under {s3_uri}")
        return files


def create_request(spec: JobSpec, settings: SageMakerSettings) -> dict[str, Any]:
    """The ``CreateProcessingJob`` request for a job spec."""
    return {
        "ProcessingJobName": spec.name,
        "ProcessingInputs": [
            {
                "InputName": i.name,
                "AppManaged": False,
                "S3Input": {
                    "S3Uri": i.s3_uri,
                    "LocalPath": i.local_path,
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                    "S3CompressionType": "None",
                },
            }
            for i in spec.inputs
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": o.name,
                    "AppManaged": False,
                    "S3Output": {"S3Uri": o.s3_uri, "LocalPath": o.local_path, "S3UploadMode": "EndOfJob"},
                }
                for o in spec.outputs
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": spec.resources.instance_count,
                "InstanceType": spec.resources.instance_type,
                "VolumeSizeInGB": spec.resources.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.resources.max_runtime_s},
        "AppSpecification": {
            "ImageUri": settings.image,
            "ContainerEntrypoint": list(spec.command[:2]),
            "ContainerArguments": list(spec.command[2:]),
        },
        "Environment": dict(spec.environment),
        "RoleArn": settings.role,
        "Tags": [{"Key": k, "Value": v} for k, v in spec.tags.items()],
    }


def console_links(region: str, job_name: str) -> dict[str, str]:
    """The job's page in the SageMaker console and its log streams in the CloudWatch console.

    Processing jobs log to ``/aws/sagemaker/ProcessingJobs`` in streams ``<job name>/algo-<n>-<epoch>``; the
    stream names are known only once the job starts, so the link filters the group's streams by the job name.
    """
    group = LOG_GROUP.replace("/", "$252F")
    return {
        "console": f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
        f"#/processing-jobs/{job_name}",
        "logs": f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
        f"#logsV2:log-groups/log-group/{group}$3FlogStreamNameFilter$3D{job_name}",
    }


def job_seconds(desc: dict[str, Any], fallback: float) -> float:
    """Billable seconds from ``ProcessingStartTime``/``ProcessingEndTime``, else ``fallback`` (wall clock)."""
    start, end = desc.get("ProcessingStartTime"), desc.get("ProcessingEndTime")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max((end - start).total_seconds(), 0.0)
    return fallback


class SageMakerClient:
    """Create, describe (with throttling retries), wait for and stop Processing jobs; read their log tails.

    Args:
        sagemaker: boto3 ``sagemaker`` client.
        logs: boto3 ``logs`` client (optional; without it failures carry no log lines).
        sleep: Injected for tests.
        clock: Injected for tests (monotonic seconds).
        max_throttle_retries: Throttled describe/stop calls retried this many times (with backoff).
        quota_retry_wait_s: Wait before resubmitting a job refused with ResourceLimitExceeded.
        quota_max_wait_s: Stop resubmitting (and raise) once this much time has been spent waiting.
    """

    def __init__(
        self,
        sagemaker: Any,
        logs: Any = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_throttle_retries: int = 8,
        quota_retry_wait_s: float = 300.0,
        quota_max_wait_s: float = 3600.0,
    ):
        self._sm, self._logs = sagemaker, logs
        self._sleep, self._clock = sleep, clock
        self._max_throttle_retries = max_throttle_retries
        self._quota_wait, self._quota_max = quota_retry_wait_s, quota_max_wait_s

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        delay = 1.0
        for attempt in range(self._max_throttle_retries + 1):
            try:
                return getattr(self._sm, method)(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in THROTTLING_CODES or attempt == self._max_throttle_retries:
                    raise
                log.warning("%s throttled (%s); retrying in %.1f s", method, code, delay)
                self._sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def submit(self, spec: JobSpec, settings: SageMakerSettings) -> str:
        """Creates the job and logs its console and log links; returns its ARN.

        A request refused with ResourceLimitExceeded (an account quota: instances of that type, or jobs
        running at once) is resubmitted every ``quota_retry_wait_s`` until ``quota_max_wait_s`` has passed.

        Raises:
            JobFailedError: Still over the quota after ``quota_max_wait_s`` (with SageMaker's message).
        """
        request = create_request(spec, settings)
        waited = 0.0
        while True:
            try:
                arn = self._call("create_processing_job", **request)["ProcessingJobArn"]
                break
            except ClientError as exc:
                error = exc.response.get("Error", {})
                if error.get("Code") != QUOTA_CODE:
                    raise
                resources = spec.resources
                if waited + self._quota_wait > self._quota_max:
                    raise JobFailedError(
                        spec.name,
                        "NotSubmitted",
                        f"{QUOTA_CODE} after waiting {waited:.0f} s: {error.get('Message', '')}. Ask for a "
                        f"higher 'Processing' quota of {resources.instance_type} (Service Quotas console, "
                        "service SageMaker), lower max_concurrent_jobs, or use another instance_type",
                    ) from exc
                log.warning(
                    "Job %s not accepted yet: account quota reached for %d x %s (%s). Waiting %.0f s before "
                    "resubmitting (gives up after %.0f s; raise the quota in the Service Quotas console or "
                    "lower max_concurrent_jobs)",
                    spec.name,
                    resources.instance_count,
                    resources.instance_type,
                    error.get("Message", ""),
                    self._quota_wait,
                    self._quota_max,
                )
                self._sleep(self._quota_wait)
                waited += self._quota_wait
        links = console_links(settings.region, spec.name)
        log.info("Job %s: console %s", spec.name, links["console"])
        log.info("Job %s: logs %s", spec.name, links["logs"])
        return arn

    def describe(self, job_name: str) -> dict[str, Any]:
        return self._call("describe_processing_job", ProcessingJobName=job_name)

    def stop(self, job_name: str) -> None:
        """Asks SageMaker to stop the job; a job that already ended is left alone."""
        try:
            self._call("stop_processing_job", ProcessingJobName=job_name)
            log.warning("Requested stop of SageMaker job %s", job_name)
        except ClientError as exc:
            log.warning("Could not stop %s: %s", job_name, exc)

    def wait(
        self,
        job_name: str,
        *,
        poll_s: float = 15.0,
        backoff: float = 1.5,
        max_poll_s: float = 60.0,
        timeout_s: float = 1200.0,
        log_tail_lines: int = 30,
        on_status: Callable[[str, dict[str, Any]], None] | None = None,
        on_poll: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Polls until the job ends; returns the final description when it Completed.

        The wait grows by ``backoff`` while the status stays the same, and drops back to ``poll_s`` on a
        change. ``on_status`` is called on each change of status, ``on_poll`` with the status of every poll.

        Raises:
            JobFailedError: Failed or Stopped, with ``FailureReason`` and the CloudWatch log tail.
            JobTimeoutError: Still running after ``timeout_s``; the job is stopped first.
        """
        deadline = self._clock() + timeout_s
        interval, last_status = poll_s, None
        while True:
            desc = self.describe(job_name)
            status = desc["ProcessingJobStatus"]
            if on_poll:
                on_poll(status)
            if status != last_status:
                if on_status:
                    on_status(status, desc)
                last_status, interval = status, poll_s
            if status in TERMINAL_STATUSES:
                break
            if self._clock() >= deadline:
                self.stop(job_name)
                raise JobTimeoutError(
                    job_name,
                    status,
                    f"still {status} after {timeout_s:.0f} s; stop requested",
                    self.log_tail(job_name, log_tail_lines),
                    desc.get("ProcessingJobArn"),
                )
            self._sleep(interval)
            interval = min(interval * backoff, max_poll_s)
        if status != "Completed":
            reason = desc.get("FailureReason") or desc.get("ExitMessage") or ""
            raise JobFailedError(
                job_name,
                status,
                reason,
                self.log_tail(job_name, log_tail_lines),
                desc.get("ProcessingJobArn"),
            )
        return desc

    def log_tail(self, job_name: str, lines: int = 30) -> list[str]:
        """Last ``lines`` messages of the job's streams (``/aws/sagemaker/ProcessingJobs``, ``<job>/...``)."""
        if self._logs is None or lines <= 0:
            return []
        try:
            streams = self._logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=job_name)
            messages: list[str] = []
            for stream in streams.get("logStreams", []):
                events = self._logs.get_log_events(
                    logGroupName=LOG_GROUP,
                    logStreamName=stream["logStreamName"],
                    limit=lines,
                    startFromHead=False,
                )["events"]
                messages.extend(e["message"].rstrip() for e in events)
            return messages[-lines:]
        except ClientError as exc:
            log.debug("No CloudWatch logs for %s: %s", job_name, exc)
            return []
