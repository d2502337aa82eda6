"""Pure builders of the SageMaker requests that train and apply a Canvas / Autopilot time-series model.

Nothing here talks to AWS: every function returns the keyword arguments of one boto3 call, so the requests can
be shown (notebook), validated by botocore against moto's server (tests) and sent by
``client.AutopilotClient``.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from capacity_forecaster.schema import QUANTILES

ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
TARGET = "target_value"
ITEM_SEPARATOR = "|"
"""``item_id`` = ``<server_id>|<metric>``; metric names never contain the separator."""

TRAINING_FILE = "canvas_training_data.csv"
TRANSFORM_FILE = "part-{:05d}.csv"
"""Transform input files; batch transform writes ``<file>.out`` for each."""
AUTOML_NAME_MAX = 32  # AutoMLJobName: 1-32 chars, [a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}
RESOURCE_NAME_MAX = 63  # ModelName, TransformJobName
_NAME_OK = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")


@dataclass(frozen=True)
class AutopilotSettings:
    """Everything an Autopilot time-series run needs, from ``params:canvas.*`` and the shared parameters.

    Attributes:
        role_arn: IAM role SageMaker assumes for the AutoML job, the model and the transform job.
        s3_prefix: ``s3://bucket/prefix``; each run writes ``<job name>/{input,output,transform}/``.
        horizon: Days to forecast (``params:horizon``).
        country: ISO country code of the holiday calendar (``params:calendar.country``).
        max_runtime_s: Cap on the whole AutoML job (``MaxAutoMLJobRuntimeInSeconds``): caps time and cost.
        max_runtime_per_training_job_s: Cap on each candidate's training job.
        max_candidates: Cap on the number of candidates Autopilot trains.
        transform_instance_type: Instance type of the batch transform job.
        transform_max_file_mb: Transform input files hold whole items and stay below this many MiB; also
            the transform's ``MaxPayloadInMB`` (rounded up; SageMaker allows at most 100).
        job_prefix: Start of every job name (letters, digits and hyphens).
        region: AWS region; empty means the standard AWS chain (AWS_REGION, profile, ...).
    """

    role_arn: str
    s3_prefix: str
    horizon: int
    country: str
    max_runtime_s: int = 1800
    max_runtime_per_training_job_s: int = 900
    max_candidates: int = 4
    transform_instance_type: str = "ml.m5.2xlarge"
    transform_max_file_mb: float = 100.0
    job_prefix: str = "cf-canvas"
    region: str = ""


def settings_from_params(
    canvas: Mapping[str, Any], horizon: int, country: str, role_arn: str = ""
) -> AutopilotSettings:
    """``AutopilotSettings`` from the ``canvas`` parameters; ``role_arn`` wins over ``canvas.role_arn``."""
    known = {f.name for f in fields(AutopilotSettings)} - {"role_arn", "horizon", "country"}
    return AutopilotSettings(
        role_arn=role_arn or str(canvas.get("role_arn") or ""),
        horizon=int(horizon),
        country=str(country),
        **{name: canvas[name] for name in known if name in canvas},
    )


@dataclass(frozen=True)
class JobNames:
    """Names of the resources one run creates (all unique per run)."""

    automl: str
    model: str
    transform: str


def make_job_names(prefix: str, now: datetime | None = None) -> JobNames:
    """Builds valid, unique resource names from ``prefix`` and the current UTC time.

    Characters outside ``[a-zA-Z0-9-]`` become hyphens; the AutoML job name is cut to 32 characters.

    Raises:
        ValueError: If the prefix leaves no room for the time stamp or is not usable as a name.
    """
    stamp = (now or datetime.now(UTC)).strftime("%y%m%d-%H%M%S")
    clean = re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9-]", "-", prefix)).strip("-")
    room = AUTOML_NAME_MAX - len(stamp) - 1
    if not clean or room < 1:
        raise ValueError(f"canvas job_prefix {prefix!r} is empty or too long (at most {room} characters)")
    automl = f"{clean[:room].rstrip('-')}-{stamp}"
    if not _NAME_OK.match(automl):
        raise ValueError(f"invalid AutoML job name {automl!r}")
    return JobNames(automl=automl, model=f"{automl}-model", transform=f"{automl}-transform")


def s3_uris(settings: AutopilotSettings, names: JobNames) -> dict[str, str]:
    """Returns the S3 locations of one run: training input, AutoML output and transform output.

    Raises:
        ValueError: If ``s3_prefix`` is not an ``s3://`` URI.
    """
    if not settings.s3_prefix.startswith("s3://") or len(settings.s3_prefix.rstrip("/")) <= len("s3://"):
        raise ValueError(f"canvas s3_prefix must be an s3://bucket/prefix URI, got {settings.s3_prefix!r}")
    base = f"{settings.s3_prefix.rstrip('/')}/{names.automl}"
    return {
        "input_prefix": f"{base}/input/",
        "input_file": f"{base}/input/{TRAINING_FILE}",
        "output": f"{base}/output/",
        "transform_input": f"{base}/transform-input/",
        "transform_output": f"{base}/transform/",
    }


def payload_mb(max_file_mb: float) -> int:
    """``MaxPayloadInMB`` for files below ``max_file_mb`` MiB: whole MB, at least 1, at most 100."""
    return max(1, min(100, math.ceil(max_file_mb)))


def autopilot_wait_s(
    max_runtime_s: float, wait_grace_s: float, transform_timeout_s: float, poll_max_interval_s: float
) -> int:
    """Longest time the canvas node can wait on AWS: the AutoML cap and its grace, the transform's time
    limit, and one polling interval after each (the job running the node must be allowed this long)."""
    return int(math.ceil(max_runtime_s + wait_grace_s + transform_timeout_s + 2 * poll_max_interval_s))


def build_automl_request(settings: AutopilotSettings, names: JobNames) -> dict:
    """Builds the ``create_auto_ml_job_v2`` request of a daily p10/p50/p90 time-series forecasting job."""
    uris = s3_uris(settings, names)
    return {
        "AutoMLJobName": names.automl,
        "AutoMLJobInputDataConfig": [
            {
                "ChannelType": "training",
                "ContentType": "text/csv;header=present",
                "CompressionType": "None",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uris["input_prefix"]}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": uris["output"]},
        "AutoMLProblemTypeConfig": {
            "TimeSeriesForecastingJobConfig": {
                "ForecastFrequency": "1D",
                "ForecastHorizon": int(settings.horizon),
                "ForecastQuantiles": list(QUANTILES),
                "TimeSeriesConfig": {
                    "TargetAttributeName": TARGET,
                    "TimestampAttributeName": TIMESTAMP,
                    "ItemIdentifierAttributeName": ITEM_ID,
                },
                "HolidayConfig": [{"CountryCode": settings.country}],
                "CompletionCriteria": {
                    "MaxCandidates": int(settings.max_candidates),
                    "MaxRuntimePerTrainingJobInSeconds": int(settings.max_runtime_per_training_job_s),
                    "MaxAutoMLJobRuntimeInSeconds": int(settings.max_runtime_s),
                },
            }
        },
        "RoleArn": settings.role_arn,
        "Tags": [{"Key": "project", "Value": "capacity-forecaster"}, {"Key": "pipeline", "Value": "canvas"}],
    }


def planned_requests(settings: AutopilotSettings, now: datetime | None = None) -> list[tuple[str, dict]]:
    """The requests a run will send that can be known before it starts, for a dry run.

    ``CreateModel`` is left out: it is built from the best candidate's inference containers, which exist
    only once Autopilot has finished.
    """
    names = make_job_names(settings.job_prefix, now)
    return [
        ("CreateAutoMLJobV2", build_automl_request(settings, names)),
        ("CreateTransformJob", build_transform_request(settings, names)),
    ]


def build_model_request(settings: AutopilotSettings, names: JobNames, best_candidate: dict) -> dict:
    """Builds the ``create_model`` request from the best candidate's inference containers.

    Raises:
        ValueError: If the candidate has no inference containers.
    """
    containers = best_candidate.get("InferenceContainers") or []
    if not containers:
        raise ValueError(f"best candidate {best_candidate.get('CandidateName')!r} has no InferenceContainers")
    return {
        "ModelName": names.model,
        "ExecutionRoleArn": settings.role_arn,
        "Containers": [
            {
                key: value
                for key, value in container.items()
                if key in ("Image", "ModelDataUrl", "Environment")
            }
            for container in containers
        ],
    }


def build_transform_request(settings: AutopilotSettings, names: JobNames) -> dict:
    """Builds the ``create_transform_job`` request over the transform input prefix.

    Autopilot batch forecasting as the SageMaker developer guide documents it ("Batch forecasting" of
    Autopilot time-series models): CSV in, ``SplitType`` ``None`` (each file is one request, so an item's
    history reaches the model whole; ``transform_input.split_whole_items`` keeps items whole per file),
    ``MaxPayloadInMB`` at least the largest file (botocore: ">= the size of a single record", at most 100),
    output assembled by line into ``<input file>.out`` under ``S3OutputPath``.
    """
    uris = s3_uris(settings, names)
    return {
        "TransformJobName": names.transform,
        "ModelName": names.model,
        "MaxPayloadInMB": payload_mb(settings.transform_max_file_mb),
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uris["transform_input"]}},
            "ContentType": "text/csv",
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": uris["transform_output"], "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": settings.transform_instance_type, "InstanceCount": 1},
        "Tags": [{"Key": "project", "Value": "capacity-forecaster"}, {"Key": "pipeline", "Value": "canvas"}],
    }
