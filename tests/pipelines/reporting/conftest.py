"""Fixtures of the reporting tests."""

from typing import Any

import pytest

from tests.pipelines.reporting.sample_inputs import make_reporting_inputs


@pytest.fixture
def reporting_inputs() -> dict[str, Any]:
    """Every reporting input, fresh for each test."""
    return make_reporting_inputs()
