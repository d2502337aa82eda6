"""The project loads: settings, registry and catalog configuration."""

import pandas as pd
from kedro.framework.cli.utils import _split_params
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project

from capacity_forecaster.calendar import calendar_features
from tests.conftest import PROJECT_PATH


def test_default_pipeline_is_every_pipeline():
    bootstrap_project(PROJECT_PATH)  # configures the registry that ``pipelines`` reads lazily
    named = [name for name in pipelines if name != "__default__"]
    assert set(pipelines["__default__"].nodes) == {n for name in named for n in pipelines[name].nodes}


def test_catalog_writes_under_data_root(kedro_session, data_root):
    catalog = kedro_session().load_context().catalog
    for name in catalog.keys():
        filepath = getattr(catalog[name], "_filepath", None)
        if filepath is not None:
            assert str(filepath).startswith(str(data_root)), name


def test_every_dataset_has_a_viz_layer(kedro_session):
    catalog = kedro_session().load_context().catalog
    datasets = set(catalog.keys()) | pipelines["__default__"].datasets()
    for name in sorted(datasets):
        if name.startswith("params:") or name == "parameters":
            continue
        metadata = getattr(catalog.get(name, fallback_to_runtime_pattern=True), "metadata", None) or {}
        assert metadata.get("kedro-viz", {}).get("layer"), f"{name} has no kedro-viz layer"


def test_calendar_windows_are_the_last_business_days():
    features = calendar_features(pd.date_range("2024-03-20", "2024-04-02"), "US", 2, 5).set_index("date")
    quarter_end = features.index[features["is_end_of_quarter"]].strftime("%m-%d").tolist()
    month_end = features.index[features["is_month_end"]].strftime("%m-%d").tolist()
    assert quarter_end == ["03-25", "03-26", "03-27", "03-28", "03-29"]  # 30th/31st are a weekend
    assert month_end == ["03-28", "03-29"]
    assert features.loc["2024-03-31", "days_to_quarter_end"] == 0
    assert features.loc["2024-04-01", "days_to_quarter_end"] == 90
    new_year = calendar_features(pd.date_range("2024-12-24", "2025-01-02"), "US").set_index("date")
    holidays = new_year["is_holiday"]
    assert holidays[holidays].index.strftime("%Y-%m-%d").tolist() == ["2024-12-25", "2025-01-01"]


def test_dotted_params_change_one_key_in_an_env_with_its_own_parameters(kedro_session):
    """`--params risk_analysis.near_term_days=14 --env bitbrains` keeps every other risk_analysis key."""
    runtime = _split_params(None, None, "risk_analysis.near_term_days=14,horizon=14,etl.max_gap_days=3")
    base = kedro_session().load_context().params
    params = kedro_session(env="bitbrains", runtime_params=runtime).load_context().params

    assert params["horizon"] == 14
    assert params["risk_analysis"] == {**base["risk_analysis"], "near_term_days": 14}
    # The env's own etl keys and base's other etl keys are both kept; the dotted key wins.
    assert params["etl"]["column_mapping"]["cpu_pct"] == "cpu_p95"
    assert params["etl"]["max_gap_days"] == 3
    assert params["etl"]["lags"] == base["etl"]["lags"]
