"""Names and numbers the SageMaker runner shares between its modules: environment variables, container paths,
SageMaker limits and the instance price table."""

# Bucket, prefix and region are the cloud environment's own variables (conf/cloud/globals.yml reads them).
from capacity_forecaster.cloud.settings import ENV_BUCKET, ENV_PREFIX, ENV_REGION

# Environment variables --------------------------------------------------------------------------------------
ENV_RUN_ID = "CF_RUN_ID"
ENV_JOB_NAME = "CF_JOB_NAME"
ENV_TELEMETRY = "KEDRO_DISABLE_TELEMETRY"
ENV_PYTHONPATH = "PYTHONPATH"
ENV_ROLE_ARN = "CF_SAGEMAKER_ROLE_ARN"
ENV_IMAGE_URI = "CF_SAGEMAKER_IMAGE_URI"
FORWARDED_ENV = (ENV_BUCKET, ENV_PREFIX, ENV_REGION)
"""Variables copied from the submitting shell into every job (when set), so jobs resolve the same catalog.
The runner also sets ``CF_SAGEMAKER_ROLE_ARN`` to the jobs' role (the canvas job passes it to Autopilot)."""

# Container layout (SageMaker Processing mounts inputs and collects outputs under /opt/ml/processing) --------
CONTAINER_ROOT = "/opt/ml/processing"
CODE_DIR = f"{CONTAINER_ROOT}/input/code"
SITE_DIR = f"{CONTAINER_ROOT}/site"
META_DIR = f"{CONTAINER_ROOT}/output/meta"
ENTRYPOINT_FILE = "cf_entrypoint.py"
JOB_REPORT_FILE = "job.json"

# SageMaker API limits (botocore model; moto checks none of them) --------------------------------------------
JOB_NAME_MAX = 63
JOB_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
CONTAINER_ARG_MAX_LEN = 256
CONTAINER_ARGS_MAX = 100
ENV_VALUE_MAX_LEN = 256
ENV_ENTRIES_MAX = 100
TAG_VALUE_MAX_LEN = 256
LOG_GROUP = "/aws/sagemaker/ProcessingJobs"

# Sharding (names of capacity_forecaster.sharding) ----------------------------------------------------------
SHARD_TAG = "sharded"
"""Node tag: a job group whose nodes all carry it runs as one job per shard."""
SHARDS_PARAM = "modelling.shards"
"""Parameter with the shard count: an integer, or ``auto`` (then read from ``SHARD_PLAN_DATASET``)."""
SHARD_PARAM = "modelling.shard"
"""Runtime parameter selecting the one shard a job (or a resumed run) processes; ``null`` = every shard."""
SHARD_PLAN_DATASET = "shard_plan"
"""Dataset written by the ``model_input`` job: ``{"shards": K, "servers": {shard name: n}}``."""

RUNNING_STATUSES = frozenset({"InProgress", "Stopping"})
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
QUOTA_CODE = "ResourceLimitExceeded"
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)

# Approximate on-demand USD per instance-hour for SageMaker Processing in us-east-1 (public price list, 2025).
# Only used for the cost estimate in the logs; unknown types log "cost unknown".
PRICE_PER_HOUR_USD: dict[str, float] = {
    "ml.t3.medium": 0.05,
    "ml.t3.large": 0.10,
    "ml.t3.xlarge": 0.20,
    "ml.t3.2xlarge": 0.40,
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
    "ml.r5.large": 0.151,
    "ml.r5.xlarge": 0.302,
}
