"""Two ways to execute a ``JobSpec``, behind one interface: ``SageMakerBackend`` submits it as a
Processing job, ``LocalBackend`` runs the very same command and environment as a subprocess on this machine.

``LocalBackend`` stands in for the container: a temp folder plays ``/opt/ml/processing`` (every occurrence of
that prefix in the command and environment is mapped onto it), the S3 inputs are downloaded into it before the
command starts and the outputs are uploaded from it when the command succeeds, as SageMaker does. The spec's
``python3`` becomes the interpreter that runs Kedro (``sys.executable``), so the project's venv is used even
when it is not activated (``python3`` from PATH could be the system Python, without the dependencies). The
entrypoint unpacks the wheel onto ``PYTHONPATH`` and finds the dependencies already installed, so no network
is needed (measured faster than ``pip install --no-deps`` into a ``--system-site-packages`` venv, which is
what it replaces: creating the venv alone costs seconds per job).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from capacity_forecaster.progress import waiting
from capacity_forecaster.runner.config import SageMakerSettings
from capacity_forecaster.runner.constants import CONTAINER_ROOT
from capacity_forecaster.runner.jobs import JobSpec
from capacity_forecaster.runner.sagemaker_client import (
    JobFailedError,
    S3Store,
    SageMakerClient,
    job_seconds,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """How a job ended: ``cost_usd`` is the price-table estimate (``None`` when unknown or local)."""

    name: str
    arn: str
    status: str
    duration_s: float
    cost_usd: float | None


class Backend(Protocol):
    """Runs one job to its end (blocking) and can stop it from another thread."""

    def run(self, job: JobSpec) -> JobResult: ...  # raises JobFailedError

    def stop(self, job: JobSpec) -> None: ...


class SageMakerBackend:
    """Submits each job with ``create_processing_job`` and polls it to its end."""

    def __init__(self, client: SageMakerClient, settings: SageMakerSettings):
        self._client, self._settings = client, settings
        self._lock = threading.Lock()
        self._submitted: set[str] = set()
        self._stop_requested: set[str] = set()

    def run(self, job: JobSpec) -> JobResult:
        s = self._settings
        started = time.monotonic()
        with self._lock:  # a stop() racing with the submission either prevents it or sees the job
            if job.name in self._stop_requested:
                raise JobFailedError(job.name, "Stopped", "Stop requested before submission")
            arn = self._client.submit(job, s)
            self._submitted.add(job.name)
        log.info(
            "Submitted SageMaker job %s (%s, %s x%d): %s",
            job.name,
            ", ".join(job.nodes),
            job.resources.instance_type,
            job.resources.instance_count,
            arn,
        )

        def on_status(status: str, desc: dict[str, Any]) -> None:
            log.info("Job %s is %s after %.0f s", job.name, status, time.monotonic() - started)

        with waiting(f"SageMaker job {job.name}") as show_status:
            desc = self._client.wait(
                job.name,
                poll_s=s.poll_interval_s,
                backoff=s.poll_backoff,
                max_poll_s=s.poll_max_interval_s,
                timeout_s=s.wait_timeout_for(job.resources),
                log_tail_lines=s.log_tail_lines,
                on_status=on_status,
                on_poll=show_status,
            )
        seconds = job_seconds(desc, time.monotonic() - started)
        cost = s.estimate_cost(seconds, job.resources)
        return JobResult(job.name, arn, desc["ProcessingJobStatus"], seconds, cost)

    def stop(self, job: JobSpec) -> None:
        with self._lock:
            self._stop_requested.add(job.name)
            submitted = job.name in self._submitted
        if submitted:
            self._client.stop(job.name)


def _to_local(text: str, root: Path) -> str:
    return text.replace(CONTAINER_ROOT, str(root))


class LocalBackend:
    """Executes job specs as local subprocesses, with S3 inputs and outputs mapped onto a temp folder.

    Args:
        store: S3 transfers (the same bucket SageMaker would read).
        settings: Log tail length; each job is stopped at its own ``resources.max_runtime_s``, as SageMaker
            would.
        work_dir: Parent of the per-job temp folders (default: the system temp dir).
        keep_failed: Keep a failed job's folder (its ``job.log``) for inspection.
    """

    def __init__(
        self,
        store: S3Store,
        settings: SageMakerSettings,
        work_dir: Path | None = None,
        keep_failed: bool = True,
    ):
        self._store, self._settings = store, settings
        self._work_dir, self._keep_failed = work_dir, keep_failed
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopped: set[str] = set()
        self._lock = threading.Lock()

    def run(self, job: JobSpec) -> JobResult:
        root = Path(tempfile.mkdtemp(prefix=f"{job.name[:40]}-", dir=self._work_dir))
        started = time.monotonic()
        for item in job.inputs:
            self._store.download_prefix(item.s3_uri, Path(_to_local(item.local_path, root)))
        for item in job.outputs:
            Path(_to_local(item.local_path, root)).mkdir(parents=True, exist_ok=True)
        command = [_to_local(arg, root) for arg in job.command]
        if command[:1] == ["python3"]:  # the interpreter running kedro, not whichever python3 is on PATH
            command[0] = sys.executable
        env = {**os.environ, **{k: _to_local(v, root) for k, v in job.environment.items()}}
        (root / "work").mkdir()
        log_path = root / "job.log"
        log.info("Starting local job %s (%s) in %s", job.name, ", ".join(job.nodes), root)
        with open(log_path, "wb") as out:
            with self._lock:
                if job.name in self._stopped:
                    shutil.rmtree(root, ignore_errors=True)
                    raise JobFailedError(job.name, "Stopped", "Stop requested before start")
                proc = subprocess.Popen(
                    command,
                    env=env,
                    cwd=root / "work",
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                self._procs[job.name] = proc
            try:
                returncode = proc.wait(timeout=job.resources.max_runtime_s)
                status, reason = "Completed", ""
            except subprocess.TimeoutExpired:
                self._terminate(proc)
                returncode, status = proc.returncode, "Stopped"
                reason = f"MaxRuntimeExceeded: job ran longer than {job.resources.max_runtime_s} s"
            finally:
                with self._lock:
                    self._procs.pop(job.name, None)
        if status == "Completed" and job.name in self._stopped:
            status, reason = "Stopped", "Stop requested"
        elif status == "Completed" and returncode != 0:
            status, reason = "Failed", f"AlgorithmError: command exited with code {returncode}"
        seconds = time.monotonic() - started
        if status != "Completed":
            tail = list(
                deque(log_path.read_text(errors="replace").splitlines(), self._settings.log_tail_lines)
            )
            if not self._keep_failed:
                shutil.rmtree(root, ignore_errors=True)
            raise JobFailedError(job.name, status, reason, tail, arn=f"local:{root}")
        for item in job.outputs:
            self._store.upload_dir(Path(_to_local(item.local_path, root)), item.s3_uri)
        log.debug("Local job %s output:\n%s", job.name, log_path.read_text(errors="replace"))
        shutil.rmtree(root, ignore_errors=True)
        return JobResult(job.name, f"local:{job.name}", status, seconds, None)

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()

    def stop(self, job: JobSpec) -> None:
        with self._lock:
            self._stopped.add(job.name)
            proc = self._procs.get(job.name)
        if proc is not None and proc.poll() is None:
            log.warning("Stopping local job %s", job.name)
            self._terminate(proc)
