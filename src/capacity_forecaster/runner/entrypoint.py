"""Bootstrap executed inside every job (SageMaker container or local subprocess). Standard library only.

It is shipped next to the wheel as ``cf_entrypoint.py`` and run as::

    python3 cf_entrypoint.py --wheel <whl> --site <dir> --report <json> -- \\
        --package capacity_forecaster --env cloud --conf-source <conf.tar.gz> --runner SequentialRunner \\
        --node <n1> --node <n2> --param k=v

1. refuses a Python older than the wheel's ``Requires-Python`` (a clear message instead of a syntax error);
2. unpacks the wheel into ``--site`` (which the job's ``PYTHONPATH`` points at);
3. installs into ``--site`` only the requirements the image does not already satisfy (none on a machine that
   has the project's dependencies, so the local backend needs no network);
4. runs ``python -m <package> <kedro args>`` with ``--nodes n1,n2`` and ``--params k=v,...``
   (nodes and params come one per argument because SageMaker caps each argument at 256 characters);
5. writes a JSON report (command, exit code, duration) to ``--report`` and exits with Kedro's exit code.

SIGTERM (how SageMaker's StopProcessingJob stops the container) is passed on to Kedro, whose S3 saves then
abort their multipart uploads instead of leaving them unfinished in the bucket.
"""

from __future__ import annotations  # the Python check must run on old images too

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path


def _say(message: str) -> None:
    print(f"[cf-entrypoint] {message}", file=sys.stderr, flush=True)


def _packaging():
    try:
        from packaging.requirements import Requirement  # noqa: PLC0415
        from packaging.specifiers import SpecifierSet  # noqa: PLC0415
    except ImportError:  # the image's pip always vendors it
        from pip._vendor.packaging.requirements import Requirement  # noqa: PLC0415
        from pip._vendor.packaging.specifiers import SpecifierSet  # noqa: PLC0415
    return Requirement, SpecifierSet


def _wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


_JOB_EXTRAS = ("", "cloud")
"""A job needs the core requirements and the [cloud] extra (it reads and writes S3)."""


def _missing_requirements(requires: list[str]) -> list[str]:
    """The job's requirements (``Requires-Dist`` lines) that are not installed at a fitting version, without
    their markers (so pip installs an extra's requirement too)."""
    Requirement, _ = _packaging()
    missing = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in _JOB_EXTRAS):
            continue
        req.marker = None
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if not req.specifier.contains(installed, prereleases=True):
            missing.append(str(req))
    return missing


def _kedro_command(args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable,
        "-m",
        args.package,
        "--env",
        args.env,
        "--conf-source",
        args.conf_source,
        "--runner",
        args.runner,
    ]
    if args.node:
        command += ["--nodes", ",".join(args.node)]
    if args.param:
        command += ["--params", ",".join(args.param)]
    return command


def _run_forwarding_sigterm(command: list[str], env: dict[str, str]) -> int:
    """Runs Kedro as a child and passes SIGTERM on to it.

    SageMaker stops a job by sending SIGTERM to the container's entrypoint (this process); without the
    forwarding Kedro would never hear of it, and a canvas node could not stop the AutoML job it started.
    """
    children: list[subprocess.Popen] = []
    early: list[int] = []  # signals that came before the child existed

    def forward(signum: int, frame: object) -> None:
        _say(f"received signal {signum}: passing it on to kedro")
        if children:
            children[0].send_signal(signum)
        else:
            early.append(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        children.append(subprocess.Popen(command, env=env))
        for signum in early:
            children[0].send_signal(signum)
        return children[0].wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    boot = argparse.ArgumentParser(prog="cf_entrypoint")
    boot.add_argument("--wheel", required=True, type=Path)
    boot.add_argument("--site", required=True, type=Path)
    boot.add_argument("--report", type=Path)
    kedro = argparse.ArgumentParser(prog="cf_entrypoint --")
    kedro.add_argument("--package", required=True)
    kedro.add_argument("--env", required=True)
    kedro.add_argument("--conf-source", required=True)
    kedro.add_argument("--runner", default="SequentialRunner")
    kedro.add_argument("--node", action="append", default=[])
    kedro.add_argument("--param", action="append", default=[])
    opts, args = boot.parse_args(argv[:split]), kedro.parse_args(argv[split + 1 :])
    start = time.time()
    report = {
        "job": os.environ.get("CF_JOB_NAME", ""),
        "nodes": args.node,
        "python": platform.python_version(),
        "started": start,
    }

    meta = _wheel_metadata(opts.wheel)
    requires_python = meta.get("Requires-Python")
    _, SpecifierSet = _packaging()
    if requires_python and not SpecifierSet(requires_python).contains(platform.python_version()):
        _say(
            f"{args.package} requires Python {requires_python} "
            f"but this image has {platform.python_version()}: "
            "set image_uri in conf/cloud/sagemaker.yml to an image with a suitable Python"
        )
        return 3

    opts.site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(opts.wheel) as zf:
        zf.extractall(opts.site)
    _say(f"unpacked {opts.wheel.name} into {opts.site}")

    missing = _missing_requirements(meta.get_all("Requires-Dist") or [])
    report["installed_requirements"] = missing
    if missing:
        _say(f"installing {len(missing)} missing requirement(s): {missing}")
        pip = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
            "--target",
            str(opts.site),
            *missing,
        ]
        if subprocess.run(pip, check=False).returncode:
            _say("pip install failed")
            return 4
    env = dict(os.environ)
    paths = [str(opts.site)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(opts.site)
    ]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

    command = _kedro_command(args)
    _say("running " + " ".join(command))
    returncode = _run_forwarding_sigterm(command, env)
    report.update(command=command, returncode=returncode, duration_s=round(time.time() - start, 3))
    if opts.report:
        opts.report.parent.mkdir(parents=True, exist_ok=True)
        opts.report.write_text(json.dumps(report, indent=2))
    _say(f"kedro exited with {returncode} after {report['duration_s']} s")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
