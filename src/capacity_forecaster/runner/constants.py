"""Names and numbers the SageMaker runner shares between its modules: environment variables, container paths,
SageMaker limits, the scikit-learn image registry table and the instance price table."""

# Bucket, prefix and region are the cloud environment's own variables (conf/cloud/globals.yml reads them).
from capacity_forecaster.cloud.settings import ENV_BUCKET, ENV_PREFIX, ENV_REGION

# Environment variables --------------------------------------------------------------------------------------
ENV_RUN_ID = "CF_RUN_ID"
ENV_JOB_NAME = "CF_JOB_NAME"
ENV_TELEMETRY = "KEDRO_DISABLE_TELEMETRY"
ENV_PYTHONPATH = "PYTHONPATH"
FORWARDED_ENV = (ENV_BUCKET, ENV_PREFIX, ENV_REGION)
"""Variables copied from the submitting shell into every job (when set), so jobs resolve the same catalog."""

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

RUNNING_STATUSES = frozenset({"InProgress", "Stopping"})
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)

# Default image: SageMaker's scikit-learn image. Account ids per region from the SageMaker Python SDK's
# image_uri_config/sklearn.json (aws/sagemaker-python-sdk); the same for every version of the image.
SKLEARN_IMAGE_REPOSITORY = "sagemaker-scikit-learn"
SKLEARN_IMAGE_TAG = "1.2-1-cpu-py3"
SKLEARN_IMAGE_ACCOUNTS: dict[str, str] = {
    "af-south-1": "510948584623",
    "ap-east-1": "651117190479",
    "ap-northeast-1": "354813040037",
    "ap-northeast-2": "366743142698",
    "ap-northeast-3": "867004704886",
    "ap-south-1": "720646828776",
    "ap-southeast-1": "121021644041",
    "ap-southeast-2": "783357654285",
    "ca-central-1": "341280168497",
    "eu-central-1": "492215442770",
    "eu-north-1": "662702820516",
    "eu-south-1": "978288397137",
    "eu-west-1": "141502667606",
    "eu-west-2": "764974769150",
    "eu-west-3": "659782779980",
    "me-south-1": "801668240914",
    "sa-east-1": "737474898029",
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-west-1": "746614075791",
    "us-west-2": "246618743249",
}

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
