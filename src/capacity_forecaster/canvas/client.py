"""``AutopilotClient``: trains a Canvas / Autopilot time-series model and forecasts with it (plain boto3).

The only module of the canvas code that imports boto3. The clients come in through the constructor (tests pass
clients wired to moto's server or wrapped in botocore's ``Stubber``); ``AutopilotClient.create`` builds them
from the standard AWS chain (environment, profile, instance role; ``AWS_ENDPOINT_URL`` is honoured by boto3).

One run (``AutopilotClient.forecast``): upload the training CSV -> ``create_auto_ml_job_v2`` -> poll with
backoff -> ``create_model`` from the best candidate -> ``create_transform_job`` over the same CSV ->
poll -> read and parse ``<input>.out`` -> delete the model and the temporary S3 objects (always, also
after a failure).
Every AWS failure becomes ``CanvasUnavailableError`` with a short ``reason``, recorded by the pipeline,
which then falls back.
"""

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from .output import parse_transform_output
from .requests import (
    AutopilotSettings,
    JobNames,
    build_automl_request,
    build_model_request,
    build_transform_request,
    make_job_names,
    s3_uris,
)

logger = logging.getLogger(__name__)

_ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "403", "UnauthorizedOperation"}
_NO_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "InvalidAccessKeyId",
}
_DONE = {"Completed", "Failed", "Stopped"}


class CanvasUnavailableError(RuntimeError):
    """Canvas could not produce forecasts.

    ``reason`` is one of ``access_denied``, ``no_credentials``, ``unsupported_region``, ``job_failed``,
    ``transform_failed``, ``timeout``, ``bad_output`` or ``aws_error``; ``detail`` says more.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.record: dict = {}  # what the run did before it failed (job names, clean-up)


@dataclass(frozen=True)
class PollSettings:
    """How to wait for a job: first interval, growth while nothing changes, ceiling and time limit."""

    interval_s: float = 30.0
    backoff: float = 1.5
    max_interval_s: float = 300.0
    timeout_s: float = 2400.0


@dataclass(frozen=True)
class CostRates:
    """USD per hour used for the logged cost estimate (Autopilot bills the instances its jobs use)."""

    training_usd_per_hour: float = 1.0
    transform_usd_per_hour: float = 0.46


def _reason_of(error: Exception) -> str:
    if isinstance(error, NoCredentialsError):
        return "no_credentials"
    if isinstance(error, EndpointConnectionError):
        return "unsupported_region"
    if not isinstance(error, ClientError):
        return "aws_error"
    code = str(error.response.get("Error", {}).get("Code", ""))
    if code in _ACCESS_DENIED or "AccessDenied" in str(error):  # moto's JSON APIs: code "403", XML message
        return "access_denied"
    if code in _NO_CREDENTIALS:
        return "no_credentials"
    return "unsupported_region" if code == "UnknownEndpoint" else "aws_error"


def classify_error(error: Exception) -> CanvasUnavailableError:
    """Maps a boto3/botocore exception to a ``CanvasUnavailableError`` with a fallback reason."""
    if isinstance(error, CanvasUnavailableError):
        return error
    detail = (
        str(error) if isinstance(error, ClientError | BotoCoreError) else f"{type(error).__name__}: {error}"
    )
    return CanvasUnavailableError(_reason_of(error), detail[:500])


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class AutopilotClient:
    """Runs Autopilot time-series jobs with the given boto3 ``sagemaker`` and ``s3`` clients."""

    def __init__(
        self,
        sagemaker,
        s3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._sm = sagemaker
        self._s3 = s3
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def create(cls, region: str = "", config: Config | None = None) -> "AutopilotClient":
        """Builds the clients from the standard AWS chain; ``region`` empty means the chain's region.

        Raises:
            CanvasUnavailableError: ``unsupported_region`` if SageMaker is not offered in the region,
                ``no_credentials`` if no region or credentials can be found.
        """
        session = boto3.Session(region_name=region or None)
        name = session.region_name
        if not name:
            raise CanvasUnavailableError(
                "no_credentials", "no AWS region configured (params canvas.region or AWS_REGION)"
            )
        known = set(session.get_available_regions("sagemaker"))
        if known and name not in known:
            raise CanvasUnavailableError("unsupported_region", f"SageMaker is not available in {name}")
        if session.get_credentials() is None:
            raise CanvasUnavailableError("no_credentials", "no AWS credentials found in the standard chain")
        config = config or Config(retries={"mode": "standard", "max_attempts": 5})
        return cls(session.client("sagemaker", config=config), session.client("s3", config=config))

    # -- single steps --------------------------------------------------------------------------------

    def upload_csv(self, frame: pd.DataFrame, uri: str) -> None:
        """Writes ``frame`` as CSV with a header (no index) to ``uri``."""
        bucket, key = _split_s3(uri)
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        self._s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue().encode("utf-8"))
        logger.info("canvas: uploaded %d rows to %s", len(frame), uri)

    def read_text(self, uri: str) -> str:
        """Reads an S3 object as UTF-8 text."""
        bucket, key = _split_s3(uri)
        return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")

    def wait_for_automl(self, name: str, poll: PollSettings) -> dict:
        """Polls ``describe_auto_ml_job_v2`` with backoff until the job ends; returns the last description.

        Raises:
            CanvasUnavailableError: ``job_failed`` (with the ``FailureReason``) if the job failed or stopped,
                ``timeout`` if it ran past ``poll.timeout_s`` (the job is then stopped).
        """
        return self._wait(
            describe=lambda: self._sm.describe_auto_ml_job_v2(AutoMLJobName=name),
            status_keys=("AutoMLJobStatus", "AutoMLJobSecondaryStatus"),
            stop=lambda: self._sm.stop_auto_ml_job(AutoMLJobName=name),
            what=f"AutoML job {name}",
            failed_reason="job_failed",
            poll=poll,
        )

    def wait_for_transform(self, name: str, poll: PollSettings) -> dict:
        """Polls ``describe_transform_job`` like ``wait_for_automl``; failure reason ``transform_failed``."""
        return self._wait(
            describe=lambda: self._sm.describe_transform_job(TransformJobName=name),
            status_keys=("TransformJobStatus",),
            stop=lambda: self._sm.stop_transform_job(TransformJobName=name),
            what=f"transform job {name}",
            failed_reason="transform_failed",
            poll=poll,
        )

    def _wait(
        self, describe, status_keys, stop, *, what: str, failed_reason: str, poll: PollSettings
    ) -> dict:
        start = self._clock()
        interval = poll.interval_s
        last = None
        while True:
            desc = describe()
            state = tuple(desc.get(k, "") for k in status_keys)
            elapsed = self._clock() - start
            if state != last:
                logger.info("canvas: %s is %s after %.0f s", what, " / ".join(state), elapsed)
                interval, last = poll.interval_s, state
            else:
                interval = min(interval * poll.backoff, poll.max_interval_s)
            if state[0] in _DONE:
                break
            if elapsed >= poll.timeout_s:
                try:
                    stop()
                except (ClientError, BotoCoreError) as error:
                    logger.warning("canvas: could not stop %s: %s", what, error)
                raise CanvasUnavailableError(
                    "timeout", f"{what} still {state[0]} after {elapsed:.0f} s; stopped"
                )
            self._sleep(interval)
        if state[0] != "Completed":
            raise CanvasUnavailableError(
                failed_reason, f"{what} {state[0]}: {desc.get('FailureReason') or 'no reason given'}"
            )
        return desc

    def cleanup(self, names: JobNames, uris: dict[str, str], model_created: bool) -> list[str]:
        """Deletes the model and the temporary S3 objects (training copy, transform output); never raises.

        Returns:
            What was deleted, for the run record.
        """
        deleted = []
        if model_created:
            try:
                self._sm.delete_model(ModelName=names.model)
                deleted.append(f"model {names.model}")
            except (ClientError, BotoCoreError) as error:
                logger.warning("canvas: could not delete model %s: %s", names.model, error)
        for prefix in (uris["input_prefix"], uris["transform_output"]):
            bucket, key = _split_s3(prefix)
            try:  # DeleteObject per key (a few files); DeleteObjects reports denials only in its body
                for listed in self._s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", []):
                    self._s3.delete_object(Bucket=bucket, Key=listed["Key"])
                    deleted.append(f"s3://{bucket}/{listed['Key']}")
            except (ClientError, BotoCoreError) as error:
                logger.warning("canvas: could not delete objects under %s: %s", prefix, error)
        logger.info("canvas: cleaned up %d resources", len(deleted))
        return deleted

    # -- the whole run --------------------------------------------------------------------------------

    def forecast(
        self,
        training: pd.DataFrame,
        settings: AutopilotSettings,
        poll: PollSettings,
        transform_poll: PollSettings,
        *,
        rates: CostRates = CostRates(),
        now: datetime | None = None,
    ) -> tuple[pd.DataFrame, dict]:
        """Trains on ``training`` and forecasts ``settings.horizon`` days for every item.

        Returns:
            The parsed forecasts (model ``canvas``) and a run record: job names, statuses, best candidate
            and its objective, run times, estimated cost and what was cleaned up.

        Raises:
            CanvasUnavailableError: For any AWS failure (access denied, failed job, timeout, bad output, ...).
        """
        names = make_job_names(settings.job_prefix, now)
        uris = s3_uris(settings, names)
        record: dict = {
            "automl_job": names.automl,
            "sagemaker_model": names.model,
            "transform_job": names.transform,
            "s3_output": uris["output"],
        }
        model_created = False
        wall = self._clock()
        try:
            self.upload_csv(training, uris["input_file"])
            self._sm.create_auto_ml_job_v2(**build_automl_request(settings, names))
            job = self.wait_for_automl(names.automl, poll)
            best = job.get("BestCandidate") or {}
            if not best:
                raise CanvasUnavailableError(
                    "job_failed", f"AutoML job {names.automl} completed without a best candidate"
                )
            objective = best.get("FinalAutoMLJobObjectiveMetric", {})
            record.update(
                best_candidate=best.get("CandidateName"),
                objective={"metric": objective.get("MetricName"), "value": objective.get("Value")},
                automl_seconds=_job_seconds(job, "CreationTime", "EndTime", self._clock() - wall),
            )
            self._sm.create_model(**build_model_request(settings, names, best))
            model_created = True
            transform_start = self._clock()
            self._sm.create_transform_job(**build_transform_request(settings, names))
            transform = self.wait_for_transform(names.transform, transform_poll)
            record["transform_seconds"] = _job_seconds(
                transform, "TransformStartTime", "TransformEndTime", self._clock() - transform_start
            )
            try:
                forecasts = parse_transform_output(self.read_text(uris["transform_result"]))
            except ValueError as error:
                raise CanvasUnavailableError("bad_output", str(error)) from error
        except CanvasUnavailableError as error:
            error.record = record
            raise
        except (ClientError, BotoCoreError) as error:
            converted = classify_error(error)
            converted.record = record
            raise converted from error
        finally:
            record["cleaned_up"] = self.cleanup(names, uris, model_created)
            record["wall_seconds"] = round(self._clock() - wall, 1)
            hours_train = record.get("automl_seconds", record["wall_seconds"]) / 3600
            hours_transform = record.get("transform_seconds", 0.0) / 3600
            record["estimated_cost_usd"] = round(
                hours_train * rates.training_usd_per_hour + hours_transform * rates.transform_usd_per_hour, 2
            )
            logger.info(
                "canvas: Autopilot run %s took %.0f s wall time, estimated cost %.2f USD",
                names.automl,
                record["wall_seconds"],
                record["estimated_cost_usd"],
            )
        return forecasts, record


def _job_seconds(desc: dict, start_key: str, end_key: str, fallback: float) -> float:
    """Job duration from its own time stamps when both are there, else the measured wall time."""
    start, end = desc.get(start_key), desc.get(end_key)
    if isinstance(start, datetime) and isinstance(end, datetime):
        return round((end - start).total_seconds(), 1)
    return round(fallback, 1)
