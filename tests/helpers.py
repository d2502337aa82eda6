"""Helpers shared by tests in several folders."""

import subprocess
import sys
from collections.abc import Mapping

from tests.conftest import PROJECT_PATH


def run_kedro(*args: str, env: Mapping[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m kedro <args>`` in the project folder, output captured, never raising on a failure.

    Args:
        args: The command line after ``kedro``.
        env: The whole environment of the command (pass ``{**os.environ, ...}`` to add to the current one);
            wide columns and this checkout's ``src`` on ``PYTHONPATH`` are added.
        timeout: Seconds before the command is killed (``subprocess.TimeoutExpired``).
    """
    return subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        cwd=PROJECT_PATH,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**env, "COLUMNS": "200", "PYTHONPATH": str(PROJECT_PATH / "src")},
    )
