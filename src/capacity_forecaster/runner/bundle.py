"""Builds what a job needs to run the project: the wheel, the conf tarball and the entrypoint script.

The wheel is built like ``kedro package`` does (``python -m build --wheel``), but from a copy of the sources
in a temp dir so the work tree gets no ``build/`` or ``dist/`` folders. The conf tarball leaves out
``conf/local`` (credentials stay on the machine that submits).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from capacity_forecaster.runner import entrypoint
from capacity_forecaster.runner.constants import ENTRYPOINT_FILE

log = logging.getLogger(__name__)


class BundleError(RuntimeError):
    """Raised when the project cannot be packaged."""


@dataclass(frozen=True)
class LocalBundle:
    """Files ready for upload: all in ``folder``."""

    folder: Path
    wheel: str
    conf: str
    entrypoint: str = ENTRYPOINT_FILE


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder (from ``start``, default cwd) with a ``pyproject.toml`` that has ``[tool.kedro]``.

    Raises:
        BundleError: Outside a Kedro project.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.kedro]" in pyproject.read_text():
            return folder
    raise BundleError(
        f"No Kedro project found at or above {here}: the SageMaker runner packages the project's sources, "
        "so run it from the project folder (or pass project_path=...)."
    )


def package_name(project_root: Path) -> str:
    """``[tool.kedro] package_name`` of the project."""
    with open(project_root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["kedro"]["package_name"]


def build_wheel(project_root: Path, out_dir: Path) -> Path:
    """``python -m build --wheel`` on a copy of ``pyproject.toml``, ``README.md`` and ``src/``.

    Raises:
        BundleError: With the build's output when it fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / "_src"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
        if (project_root / name).is_file():
            shutil.copy2(project_root / name, staging / name)
    shutil.copytree(
        project_root / "src",
        staging / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".ipynb_checkpoints"),
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out_dir), str(staging)],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(staging, ignore_errors=True)
    wheels = sorted(out_dir.glob(f"{package_name(project_root)}-*.whl"))
    if proc.returncode or not wheels:
        raise BundleError(f"Building the wheel failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    log.info("Built %s in %.1f s", wheels[-1].name, time.perf_counter() - started)
    return wheels[-1]


def _without_local(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if len(parts) > 2 and parts[1] == "local":
        return None  # credentials and personal overrides never leave the machine
    if "__pycache__" in parts or info.name.endswith(".pyc"):
        return None
    return info


def build_conf_tarball(conf_dir: Path, out_dir: Path, package: str) -> Path:
    """``conf-<package>.tar.gz``: top-level ``conf/``, empty ``conf/local`` (like ``kedro package``)."""
    if not conf_dir.is_dir():
        raise BundleError(f"Configuration folder {conf_dir} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"conf-{package}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(conf_dir, arcname="conf", filter=_without_local)
    return target


def build_bundle(project_root: Path, conf_dir: Path, out_dir: Path, wheel: Path | None = None) -> LocalBundle:
    """Wheel (built, or the given one copied), conf tarball and entrypoint script, all in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        wheel = build_wheel(project_root, out_dir)
    elif wheel.parent.resolve() != out_dir.resolve():
        wheel = Path(shutil.copy2(wheel, out_dir / wheel.name))
    conf = build_conf_tarball(conf_dir, out_dir, package_name(project_root))
    shutil.copy2(entrypoint.__file__, out_dir / ENTRYPOINT_FILE)
    return LocalBundle(folder=out_dir, wheel=wheel.name, conf=conf.name)
