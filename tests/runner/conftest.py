"""Runner test fixtures: a throwaway Kedro project and its wheel (built once), settings, S3 buckets."""

from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from capacity_forecaster.runner.bundle import build_wheel
from capacity_forecaster.runner.config import SageMakerSettings
from tests.runner.toy_project import write_toy_project

ROLE = "arn:aws:iam::123456789012:role/cf-test"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/capacity-forecaster:test"


@pytest.fixture(scope="session")
def toy_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_project(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_wheel(toy_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (``python -m build --wheel``, ~3 s)."""
    return build_wheel(toy_project, tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def make_settings() -> Callable[..., SageMakerSettings]:
    def make(**kwargs) -> SageMakerSettings:
        values = {
            "role_arn": ROLE,
            "s3_prefix": "s3://cf-test/sagemaker",
            "image_uri": IMAGE,
            "poll_interval_s": 0.0,
            "poll_max_interval_s": 0.0,
            **kwargs,
        }
        return SageMakerSettings(**values)

    return make


@pytest.fixture
def bucket(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty ``cf-test`` bucket on moto; CF_BUCKET points at it."""
    boto3.client("s3").create_bucket(Bucket="cf-test")
    monkeypatch.setenv("CF_BUCKET", "cf-test")
    yield "cf-test"


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The capacity_forecaster wheel, built once per session from the work tree."""
    return build_wheel(Path(__file__).resolve().parents[2], tmp_path_factory.mktemp("project-wheel"))
