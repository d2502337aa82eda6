"""Fixtures shared by all tests: no telemetry, and Kedro sessions that write into a temp dir, never data/."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT_PATH = Path(__file__).resolve().parents[1]


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
