"""Fixtures shared by all tests: no telemetry, and Kedro sessions that write into a temp dir, never data/."""

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT_PATH = Path(__file__).resolve().parents[1]
LONG_RUNNING = ("slow", "pypi")
"""Markers of the tests of a minute or so: started first, so that the xdist workers end about together."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts the long-running tests first, otherwise keeping the collection's order (the sort is stable)."""
    items.sort(key=lambda item: not any(item.get_closest_marker(name) for name in LONG_RUNNING))


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points the catalog's ``${globals:data_root}`` (``CF_DATA_ROOT``) at a fresh temp dir."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CF_DATA_ROOT", str(root))
    return root


@pytest.fixture
def kedro_session(data_root: Path) -> Iterator[Callable[..., KedroSession]]:
    """Makes Kedro sessions on the real project whose local catalog lives under ``data_root``.

    Call it with ``env=`` and ``runtime_params=`` (parameter overrides such as a small fleet).
    """
    bootstrap_project(PROJECT_PATH)
    sessions: list[KedroSession] = []

    def make(env: str | None = None, runtime_params: dict[str, Any] | None = None) -> KedroSession:
        session = KedroSession.create(project_path=PROJECT_PATH, env=env, runtime_params=runtime_params)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Starts one moto server (real HTTP S3, SageMaker, IAM and CloudWatch Logs APIs) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - 1.5 s to import, for the AWS tests only

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean moto account for one test: fake credentials, endpoint and region in the environment.

    Yields the endpoint URL. Everything created in moto is wiped after the test.
    """
    import requests  # noqa: PLC0415 - AWS tests only, like moto above
    import s3fs  # noqa: PLC0415

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    yield moto_endpoint
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10)
    s3fs.S3FileSystem.clear_instance_cache()
