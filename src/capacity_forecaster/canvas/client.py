"""``AutopilotClient``: trains a Canvas / Autopilot time-series model and forecasts with it (plain boto3).

The only module of the canvas code that imports boto3. The clients come in through the constructor (tests pass
clients wired to moto's server or wrapped in botocore's ``Stubber``); ``AutopilotClient.create`` builds them
from the standard AWS chain (environment, profile, instance role; ``AWS_ENDPOINT_URL`` is honoured by boto3).

One run (``AutopilotClient.forecast``): upload the training CSV -> ``create_auto_ml_job_v2`` -> poll with
backoff -> ``create_model`` from the best candidate -> upload the transform input (history plus future
regressor rows, in files of whole items below ``transform_max_file_mb``) -> ``create_transform_job`` over
them -> poll -> read and parse every ``<file>.out`` -> delete the model and the temporary S3 objects (always,
also after a failure).
Every AWS failure becomes ``CanvasUnavailableError`` with a short ``reason``, recorded by the pipeline,
which then falls back. An interrupted run (Ctrl-C, or SIGTERM when its Processing job is stopped) stops the
AutoML or transform job it was waiting for before it cleans up and re-raises, so nothing is left billing.
"""

import contextlib
import io
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from .output import parse_transform_output
from .requests import (
    TRANSFORM_FILE,
    AutopilotSettings,
    JobNames,
    build_automl_request,
    build_model_request,
    build_transform_request,
    make_job_names,
    s3_uris,
)
from .transform_input import split_whole_items

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


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turns SIGTERM into ``KeyboardInterrupt`` while the block runs (main thread only; elsewhere a no-op).

    SageMaker stops a Processing job by sending its container SIGTERM; the entrypoint forwards it to Kedro,
    and this lets ``AutopilotClient.forecast`` stop the AutoML or transform job it started before exiting.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}: the job running this node is being stopped")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    def upload_transform_input(self, frame: pd.DataFrame, prefix: str, max_file_mb: float) -> list[str]:
        """Writes the transform input as CSV files of whole items below ``max_file_mb``; returns the URIs."""
        bucket, key = _split_s3(prefix)
        uris = []
        for number, content in enumerate(split_whole_items(frame, max_file_mb)):
            name = key + TRANSFORM_FILE.format(number)
            self._s3.put_object(Bucket=bucket, Key=name, Body=content)
            uris.append(f"s3://{bucket}/{name}")
        logger.info("canvas: transform input %d rows in %d file(s) under %s", len(frame), len(uris), prefix)
        return uris

    def read_transform_output(self, inputs: list[str], output_prefix: str) -> list[str]:
        """Texts of the ``<input file>.out`` objects of every transform input file.

        Batch transform "stores the transformed data with an .out suffix in a corresponding subfolder in the
        location in the output prefix" (botocore's ``TransformOutput.S3OutputPath``), so outputs are matched
        to inputs by file name anywhere under ``output_prefix``.

        Raises:
            CanvasUnavailableError: ``bad_output`` naming the input files without an output.
        """
        bucket, key = _split_s3(output_prefix)
        found: dict[str, str] = {}
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for listed in page.get("Contents", []):
                found.setdefault(listed["Key"].rsplit("/", 1)[-1], listed["Key"])
        wanted = [uri.rsplit("/", 1)[-1] + ".out" for uri in inputs]
        missing = [name for name in wanted if name not in found]
        if missing:
            raise CanvasUnavailableError(
                "bad_output",
                f"transform wrote no {missing[:3]} under {output_prefix} ({len(missing)} missing)",
            )
        return [self.read_text(f"s3://{bucket}/{found[name]}") for name in wanted]

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

    def _transform(  # noqa: PLR0917
        self,
        inference: pd.DataFrame,
        settings: AutopilotSettings,
        names: JobNames,
        poll: PollSettings,
        record: dict,
        running: dict[str, Callable[[], object]],
    ) -> pd.DataFrame:
        """Uploads the transform input, runs the batch transform and parses every output file."""
        uris = s3_uris(settings, names)
        try:
            inputs = self.upload_transform_input(
                inference, uris["transform_input"], settings.transform_max_file_mb
            )
        except ValueError as error:
            raise CanvasUnavailableError("bad_input", str(error)) from error
        record["transform_input_files"] = len(inputs)
        start = self._clock()
        self._sm.create_transform_job(**build_transform_request(settings, names))
        running[f"transform job {names.transform}"] = lambda: self._sm.stop_transform_job(
            TransformJobName=names.transform
        )
        transform = self.wait_for_transform(names.transform, poll)
        running.clear()
        record["transform_seconds"] = _job_seconds(
            transform, "TransformStartTime", "TransformEndTime", self._clock() - start
        )
        texts = self.read_transform_output(inputs, uris["transform_output"])
        try:
            return pd.concat([parse_transform_output(text) for text in texts], ignore_index=True)
        except ValueError as error:
            raise CanvasUnavailableError("bad_output", str(error)) from error

    def _stop(self, running: dict[str, Callable[[], object]]) -> list[str]:
        """Stops the jobs of an interrupted run; returns what was stopped."""
        stopped = []
        for what, stop in running.items():
            try:
                stop()
                stopped.append(what)
                logger.warning("canvas: run interrupted; stopped %s", what)
            except (ClientError, BotoCoreError) as error:
                logger.warning("canvas: run interrupted; could not stop %s: %s", what, error)
        return stopped

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
        for prefix in (uris["input_prefix"], uris["transform_input"], uris["transform_output"]):
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
        inference: pd.DataFrame,
        settings: AutopilotSettings,
        poll: PollSettings,
        transform_poll: PollSettings,
        *,
        rates: CostRates = CostRates(),
        now: datetime | None = None,
    ) -> tuple[pd.DataFrame, dict]:
        """Trains on ``training`` and forecasts ``settings.horizon`` days for every item of ``inference``.

        ``inference`` is the transform input: the history plus each item's future regressor rows
        (``transform_input.add_future_regressors``).

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
        running: dict[str, Callable[[], object]] = {}  # jobs created and not yet seen ending
        wall = self._clock()
        try:
            self.upload_csv(training, uris["input_file"])
            self._sm.create_auto_ml_job_v2(**build_automl_request(settings, names))
            running[f"AutoML job {names.automl}"] = lambda: self._sm.stop_auto_ml_job(
                AutoMLJobName=names.automl
            )
            job = self.wait_for_automl(names.automl, poll)
            running.clear()
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
            forecasts = self._transform(inference, settings, names, transform_poll, record, running)
        except CanvasUnavailableError as error:
            error.record = record
            raise
        except (ClientError, BotoCoreError) as error:
            converted = classify_error(error)
            converted.record = record
            raise converted from error
        except BaseException:  # Ctrl-C, or SIGTERM because the Processing job running this was stopped
            record["stopped"] = self._stop(running)
            raise
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
