"""Project command line: ``kedro run`` picks the runner named for the environment, and project commands.

Kedro finds this module before its built-in commands, so ``kedro run`` here is the built-in run command with
one change: when ``--runner`` is not given, the environment's default runner (``DEFAULT_RUNNERS``) is used.
"""

import os
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from capacity_forecaster.cloud.cli import cloud

DEFAULT_RUNNERS: dict[str, str] = {"cloud": "capacity_forecaster.runner.SageMakerRunner"}
"""Environment name -> import path of the runner ``kedro run --env <name>`` uses when ``--runner`` is absent."""
_SAGEMAKER_RUNNERS = {
    "capacity_forecaster.runner.SageMakerRunner",
    "capacity_forecaster.runners.SageMakerRunner",
    "capacity_forecaster.runner.sagemaker_runner.SageMakerRunner",
}


@click.group(name="capacity_forecaster")
def cli() -> None:
    """Capacity Forecaster project commands."""


def _run(**kwargs: Any) -> Any:
    env = kwargs.get("env") or os.getenv("KEDRO_ENV")
    if not kwargs.get("runner"):
        kwargs["runner"] = DEFAULT_RUNNERS.get(env or "")
    if kwargs["runner"] in _SAGEMAKER_RUNNERS:
        # The SageMaker runner reads conf/<env>/sagemaker.yml and forwards the run's --params to its jobs.
        kwargs["runner_params"] = {
            "env": env,
            "conf_source": kwargs.get("conf_source"),
            "runtime_params": dict(kwargs.get("params") or {}),
            **(kwargs.get("runner_params") or {}),
        }
    try:
        return kedro_run.callback(**kwargs)
    except Exception as exc:
        diagnosis = _diagnosis(exc)
        if diagnosis is None:
            raise
        raise click.ClickException(diagnosis) from exc


def _diagnosis(exc: BaseException) -> str | None:
    """The message of a configuration, S3 or SageMaker job error that already says what to do (shown as a
    one-paragraph ``Error:`` instead of a traceback), or ``None`` for anything else."""
    from capacity_forecaster.cloud.errors import user_error  # noqa: PLC0415
    from capacity_forecaster.runner.sagemaker_client import JobFailedError  # noqa: PLC0415

    found = user_error(exc)
    if found is None and isinstance(exc, JobFailedError):
        found = exc
    return None if found is None else str(found)


run = click.Command(name="run", params=list(kedro_run.params), callback=_run, help=kedro_run.help)
cli.add_command(run)
cli.add_command(cloud)
