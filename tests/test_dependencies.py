"""The dependency bounds resolve without backtracking, and constraints.txt is a complete lock of them.

``tools/deps.py`` runs ``pip install --dry-run --ignore-installed --report`` and fails when pip fetched more
than one version of a package. The tests marked ``pypi`` resolve against the package index (CI has it).
"""

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PROJECT_PATH

TOOL = PROJECT_PATH / "tools" / "deps.py"
LOCK = PROJECT_PATH / "constraints.txt"

_spec = importlib.util.spec_from_file_location("deps", TOOL)
deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deps)

PIP_LOG = """\
Collecting boto3>=1.43 (from capacity_forecaster==0.1.0)
  Obtaining dependency information for boto3>=1.43 from https://files.example/boto3-1.44.8-py3-none-any.whl.metadata
  Downloading boto3-1.44.8-py3-none-any.whl.metadata (6.7 kB)
  Downloading boto3-1.44.7-py3-none-any.whl (140 kB)
  Using cached boto3-1.44.7-py3-none-any.whl (140 kB)
Processing /opt/pypi/files/numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl (from x)
  Downloading prophet-1.5.0.tar.gz (1.2 MB)
  Link requires a different Python (3.11.7 not in: '>=3.12'): https://files.example/numpy-2.5.3.tar.gz
INFO: pip is looking at multiple versions of boto3 to determine which version is compatible
"""


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=PROJECT_PATH, capture_output=True, text=True, check=False
    )


def test_fetched_versions_are_read_from_pips_log():
    fetched = deps.fetched_versions(PIP_LOG)
    assert fetched == {"boto3": {"1.44.8", "1.44.7"}, "numpy": {"2.4.6"}, "prophet": {"1.5.0"}}
    resolution = deps.Resolution(installed={"boto3": "1.44.7"}, fetched=fetched)
    assert deps.check(resolution) == [
        "pip fetched 2 versions of boto3: 1.44.7, 1.44.8 (bounds that disagree)"
    ]


def test_check_against_a_lock_names_unpinned_and_differing_packages(tmp_path: Path):
    lock = tmp_path / "constraints.txt"
    deps.write_lock(deps.Resolution(installed={"capacity-forecaster": "0.1.0", "boto3": "1.43.117"}), lock)
    assert deps.read_lock(lock) == {"boto3": "1.43.117"}  # the project itself is not pinned
    resolution = deps.Resolution(
        installed={"capacity-forecaster": "0.1.0", "boto3": "1.43.116", "jmespath": "1.0.1"},
        fetched={"boto3": {"1.43.116"}},
    )
    assert deps.check(resolution, lock) == [
        "boto3 resolved to 1.43.116, constraints.txt pins 1.43.117",
        "jmespath==1.0.1 is installed but not pinned in constraints.txt",
    ]


@pytest.mark.pypi
def test_check_fails_on_a_constructed_conflicting_bound(tmp_path: Path):
    """boto3 1.44.N needs botocore>=1.44.N: with botocore capped below 1.44.7, pip must try boto3 1.44.8,
    1.44.7 and 1.44.6 before one fits, as it did with aiobotocore's botocore pin (issue 18)."""
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "conflicting-bounds"
            version = "0.1"
            dependencies = ["boto3>=1.44.6,<1.44.9", "botocore<1.44.7"]

            [tool.setuptools]
            py-modules = []
            """
        )
    )
    result = _run_tool("check", "--target", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pip fetched 3 versions of boto3: 1.44.6, 1.44.7, 1.44.8" in result.stdout


def test_lock_satisfies_the_project_bounds():
    """constraints.txt pins every direct dependency within pyproject's bounds (else: tools/deps.py lock)."""
    assert deps.stale_pins(PROJECT_PATH / "pyproject.toml", LOCK) == []


def test_stale_lock_is_named(tmp_path: Path):
    lock = tmp_path / "constraints.txt"
    lock.write_text(LOCK.read_text().replace("\nboto3==", "\nboto3==1.42.0\n# was boto3=="))
    stale = deps.stale_pins(PROJECT_PATH / "pyproject.toml", lock)
    assert len(stale) == 1 and stale[0].startswith("constraints.txt pins boto3==1.42.0, outside boto3")
    lock.write_text("".join(f"{n}=={v}\n" for n, v in deps.read_lock(LOCK).items() if n != "prophet"))
    assert deps.stale_pins(PROJECT_PATH / "pyproject.toml", lock) == [
        "prophet>=1.5 is not pinned in constraints.txt"
    ]


def _project_copy(folder: Path) -> Path:
    """What pip reads to resolve the project (pyproject.toml, README.md, src/), copied into ``folder``.

    pip's editable resolution runs setuptools' egg_info, which rewrites ``src/*.egg-info``: on a copy, so
    that tests running at the same time never see the work tree's metadata half written.
    """
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_PATH / name, folder / name)
    shutil.copytree(
        PROJECT_PATH / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return folder


@pytest.mark.pypi
def test_test_extras_resolve_without_backtracking(tmp_path: Path):
    """``pip install -e ".[test]"`` (what CI installs) fetches each package once."""
    result = _run_tool("check", "--target", str(_project_copy(tmp_path)), "--extras", "test")
    assert result.returncode == 0, result.stdout + result.stderr
