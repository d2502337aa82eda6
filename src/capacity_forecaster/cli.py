"""Project command line: ``kedro run`` picks the runner named for the environment, and project commands.

Kedro finds this module before its built-in commands, so ``kedro run`` here is the built-in run command with
one change: when ``--runner`` is not given, the environment's default runner (``DEFAULT_RUNNERS``) is used.
"""

import importlib.util
import os
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from capacity_forecaster.cloud.cli import cloud
from capacity_forecaster.extras import missing_extra, missing_extra_message

DEFAULT_RUNNERS: dict[str, str] = {"cloud": "capacity_forecaster.runner.SageMakerRunner"}
"""Environment name -> import path of the runner that ``kedro run --env <name>`` uses without ``--runner``."""
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
    """The message of a configuration, S3 or SageMaker job error, or of a missing extra, that already says
    what to do (shown as a one-paragraph ``Error:`` instead of a traceback), or ``None`` for anything else."""
    from capacity_forecaster.cloud.errors import user_error  # noqa: PLC0415

    found = user_error(exc)
    if found is None and _is_job_failure(exc):
        found = exc
    return str(found) if found is not None else missing_extra(exc)


def _is_job_failure(exc: BaseException) -> bool:
    try:
        from capacity_forecaster.runner.sagemaker_client import JobFailedError  # noqa: PLC0415
    except ModuleNotFoundError:  # no boto3 (the [cloud] extra), so no SageMaker job ran
        return False
    return isinstance(exc, JobFailedError)


run = click.Command(name="run", params=list(kedro_run.params), callback=_run, help=kedro_run.help)
cli.add_command(run)
cli.add_command(cloud)

if importlib.util.find_spec("kedro_viz") is None:  # kedro-viz's own `kedro viz` takes over once installed

    @cli.command(name="viz", context_settings={"ignore_unknown_options": True}, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def viz(args: tuple[str, ...]) -> None:
        """Not installed: kedro-viz comes with the [viz] extra (pip install -e '.[viz]')."""
        raise click.ClickException(missing_extra_message("kedro-viz", "viz"))
