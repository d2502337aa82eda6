"""Runs Kedro pipelines as SageMaker Processing jobs (``SageMakerRunner``), or as local stand-ins of them."""

from capacity_forecaster.runner.config import ConfigError, SageMakerSettings, load_settings
from capacity_forecaster.runner.jobs import GroupingError, JobSpec, JobSpecError, NonPersistedDatasetError
from capacity_forecaster.runner.sagemaker_client import JobFailedError, JobTimeoutError
from capacity_forecaster.runner.sagemaker_runner import SageMakerRunner

__all__ = [
    "ConfigError",
    "GroupingError",
    "JobFailedError",
    "JobSpec",
    "JobSpecError",
    "JobTimeoutError",
    "NonPersistedDatasetError",
    "SageMakerRunner",
    "SageMakerSettings",
    "load_settings",
]
