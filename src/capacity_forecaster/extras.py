"""The project's optional dependencies (``[project.optional-dependencies]`` of pyproject.toml).

``pip install -e .`` installs what ``kedro run`` needs locally. The AWS clients come with the ``cloud`` extra
and kedro-viz with the ``viz`` extra; a command that needs a missing one says which extra to install.
"""

import importlib.util

from capacity_forecaster.cloud.errors import error_chain

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "cloud": ("boto3", "botocore", "s3fs", "aiobotocore", "s3transfer"),
    "viz": ("kedro_viz",),
}
"""Extra -> the top-level modules it installs that the project imports."""


class MissingExtraError(ModuleNotFoundError):
    """A module of an extra is not installed; the message names the extra and the install command."""


def missing_extra_message(module: str, extra: str) -> str:
    """What to install for ``module`` of ``extra``."""
    return (
        f"{module} is not installed: it comes with the project's [{extra}] extra. "
        f"Install it with: pip install -e '.[{extra}]'"
    )


def require(extra: str) -> None:
    """Raises ``MissingExtraError`` if a module of ``extra`` is not installed."""
    for module in EXTRA_MODULES[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(missing_extra_message(module, extra), name=module)


def missing_extra(exc: BaseException) -> str | None:
    """The install message when ``exc`` (or an error it was raised from, as fsspec's "Install s3fs to access
    S3") is a missing module of an extra; ``None`` for anything else."""
    for err in error_chain(exc):
        if isinstance(err, ModuleNotFoundError):
            module = (err.name or "").partition(".")[0]
            for extra, modules in EXTRA_MODULES.items():
                if module in modules:
                    return missing_extra_message(module, extra)
    return None
