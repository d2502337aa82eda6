"""A command that needs a missing extra (``[cloud]``, ``[viz]``) stops with the command that installs it."""

import pytest
from click.testing import CliRunner

from capacity_forecaster import extras
from capacity_forecaster.cli import _diagnosis
from capacity_forecaster.cloud.cli import cloud

CLOUD_HINT = "Install it with: pip install -e '.[cloud]'"


def _fsspec_without_s3fs() -> ImportError:
    """The error fsspec raises for an ``s3://`` path when s3fs is missing (raised from the import's)."""
    try:
        try:
            raise ModuleNotFoundError("No module named 's3fs'", name="s3fs")
        except ModuleNotFoundError as missing:
            raise ImportError("Install s3fs to access S3") from missing
    except ImportError as exc:
        return exc


def test_a_missing_module_of_an_extra_is_named_with_its_install_command():
    assert extras.missing_extra(RuntimeError("a node's own bug")) is None
    wrapped = RuntimeError("Failed while loading data from dataset")
    wrapped.__cause__ = _fsspec_without_s3fs()
    expected = f"s3fs is not installed: it comes with the project's [cloud] extra. {CLOUD_HINT}"
    assert extras.missing_extra(wrapped) == expected
    assert _diagnosis(wrapped) == extras.missing_extra(wrapped)  # `kedro run` shows it as one Error: line


def test_other_missing_modules_are_left_alone():
    assert extras.missing_extra(ModuleNotFoundError("No module named 'nope'", name="nope")) is None


def test_require_names_the_first_missing_module(monkeypatch):
    extras.require("cloud")  # installed here (the test extra includes it)
    monkeypatch.setitem(extras.EXTRA_MODULES, "cloud", ("boto3", "surely_not_installed_cf"))
    with pytest.raises(
        extras.MissingExtraError, match=r"^surely_not_installed_cf is not installed: .*\[cloud\]"
    ):
        extras.require("cloud")


def test_kedro_cloud_without_the_cloud_extra_is_one_error_line(monkeypatch):
    monkeypatch.setitem(extras.EXTRA_MODULES, "cloud", ("surely_not_installed_cf",))
    result = CliRunner().invoke(cloud, ["check"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: surely_not_installed_cf is not installed: it comes with the project's [cloud] extra. "
        + CLOUD_HINT
    )
