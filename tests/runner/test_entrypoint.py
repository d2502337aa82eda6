"""The in-job bootstrap: requirement check (what it would install) and the Python version guard."""

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from capacity_forecaster.runner import entrypoint


def _wheel(tmp_path, requires_python: str, requires: list[str]):
    path = tmp_path / "demo-0.1-py3-none-any.whl"
    metadata = "Metadata-Version: 2.1\nName: demo\nVersion: 0.1\n"
    metadata += f"Requires-Python: {requires_python}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo/__init__.py", "")
        zf.writestr("demo-0.1.dist-info/METADATA", metadata)
    return path


def test_only_unsatisfied_requirements_are_installed():
    """The core and the [cloud] extra (a job reads S3), not the test extra; markers dropped for pip."""
    missing = entrypoint._missing_requirements(
        ["kedro>=1.7", "pandas>=999", "surely-not-installed-cf>=1", "pytest>=1; extra == 'test'",
         "boto3>=1; extra == 'cloud'", "surely-not-installed-cloud-cf>=1; extra == 'cloud'"]
    )  # fmt: skip
    assert missing == ["pandas>=999", "surely-not-installed-cf>=1", "surely-not-installed-cloud-cf>=1"]


def test_an_image_with_too_old_a_python_stops_with_a_clear_message(tmp_path, capsys):
    wheel = _wheel(tmp_path, ">=3.99", [])
    code = entrypoint.main(
        ["--wheel", str(wheel), "--site", str(tmp_path / "site"), "--", "--package", "demo", "--env", "cloud",
         "--conf-source", "c.tar.gz"]
    )  # fmt: skip
    assert code == 3
    assert "demo requires Python >=3.99 but this image has 3." in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def _python39() -> str | None:
    """A working Python 3.9 (PATH, or a pyenv install), else None."""
    pyenv = map(str, Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))
    candidates = [shutil.which("python3.9"), *pyenv]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


PY39 = _python39()


@pytest.mark.skipif(PY39 is None, reason="needs a python3.9 (the default scikit-learn image's Python)")
def test_the_bootstrap_itself_runs_on_the_default_images_python_3_9(tmp_path):
    wheel = _wheel(tmp_path, ">=3.11", ["kedro>=1.7"])
    proc = subprocess.run(
        [PY39, entrypoint.__file__, "--wheel", str(wheel), "--site", str(tmp_path / "site"), "--",
         "--package", "demo", "--env", "cloud", "--conf-source", "c.tar.gz"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "demo requires Python >=3.11 but this image has 3.9" in proc.stderr


DEMO_MAIN = """
import os, pathlib, signal, sys, time

folder = pathlib.Path(os.environ["DEMO_DIR"])


def on_sigterm(signum, frame):
    (folder / "sigterm").write_text("kedro got SIGTERM")
    sys.exit(143)


signal.signal(signal.SIGTERM, on_sigterm)
(folder / "ready").write_text("running")
time.sleep(300)
"""


def test_sigterm_to_the_bootstrap_reaches_kedro(tmp_path):
    """SageMaker stops a job with SIGTERM to the container's main process (this bootstrap): it must reach
    the Kedro process, whose S3 saves then abort their uploads, and the bootstrap exits with Kedro's code."""
    wheel = _wheel(tmp_path, ">=3.9", [])
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("demo/__main__.py", DEMO_MAIN)
    proc = subprocess.Popen(
        [sys.executable, entrypoint.__file__, "--wheel", str(wheel), "--site", str(tmp_path / "site"), "--",
         "--package", "demo", "--env", "cloud", "--conf-source", "c.tar.gz"],
        env={**os.environ, "DEMO_DIR": str(tmp_path)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "ready").exists():  # waits for the event (a file), however slow the machine
            assert proc.poll() is None and time.monotonic() < deadline, "the kedro stand-in never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "sigterm").read_text() == "kedro got SIGTERM"


CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *args: sys.exit(42))
os.kill(os.getppid(), signal.SIGTERM)  # as SageMaker does to the container's entrypoint
time.sleep(60)
"""


def test_sigterm_to_the_entrypoint_reaches_kedro(capsys):
    """SageMaker stops a job with SIGTERM to the entrypoint; Kedro (the child) must get it to clean up."""
    handler = signal.getsignal(signal.SIGTERM)
    assert entrypoint._run_forwarding_sigterm([sys.executable, "-c", CHILD], env=None) == 42
    assert "received signal 15: passing it on to kedro" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is handler
