"""canvas nodes on a tiny fleet, and the pipeline through a KedroSession with canvas disabled."""

import json

import numpy as np
import pandas as pd
import pytest
from kedro.runner import SequentialRunner

from capacity_forecaster.pipelines.canvas import create_pipeline
from capacity_forecaster.pipelines.canvas.nodes import (
    build_canvas_forecasts,
    compare_canvas_forecasts,
    export_canvas_training_data,
)

from .conftest import HISTORY_DAYS, HORIZON, SERIES

REGRESSORS = ["is_end_of_quarter", "is_month_end", "is_holiday"]
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
FALLBACK = {"path": "fallback", "model": "canvas_local", "reason": "disabled", "detail": "off"}


def test_export_is_autopilot_layout(fleet):
    clean, features = fleet["clean_server_metrics"], fleet["server_features"]
    before = clean.copy()
    training = export_canvas_training_data(clean, REGRESSORS, **CALENDAR)
    pd.testing.assert_frame_equal(clean, before)  # input not mutated
    assert list(training.columns) == ["item_id", "timestamp", "target_value", *REGRESSORS]
    assert training["item_id"].nunique() == len(SERIES) and len(training) == len(SERIES) * HISTORY_DAYS
    assert training["timestamp"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert set(training["is_holiday"].unique()) <= {0, 1} and training["is_holiday"].sum() > 0
    # the calendar flags are those of etl's server_features (rows of both are in item and day order)
    np.testing.assert_array_equal(
        training[REGRESSORS].to_numpy(), features[REGRESSORS].astype("int8").to_numpy()
    )
    assert training.loc[training["item_id"] == "srv-001|cpu_p95", "target_value"].tolist() == pytest.approx(
        clean.loc[(clean["server_id"] == "srv-001") & (clean["metric"] == "cpu_p95"), "value"].tolist(),
        abs=1e-4,
    )


def test_export_of_a_categorical_history_is_the_same(fleet):
    clean = fleet["clean_server_metrics"]
    categorical = clean.astype({"server_id": "category", "metric": "category"})
    pd.testing.assert_frame_equal(
        export_canvas_training_data(categorical, REGRESSORS, **CALENDAR),
        export_canvas_training_data(clean, REGRESSORS, **CALENDAR),
    )


def test_export_is_skipped_for_a_long_history_only_when_autopilot_is_off(fleet, caplog):
    clean = fleet["clean_server_metrics"]
    limit = len(clean) - 1
    skipped = export_canvas_training_data(
        clean, REGRESSORS, **CALENDAR, enabled=False, max_rows_when_disabled=limit
    )
    assert skipped.empty and list(skipped.columns) == ["item_id", "timestamp", "target_value", *REGRESSORS]
    assert "canvas export skipped" in caplog.text
    full = export_canvas_training_data(clean, REGRESSORS, **CALENDAR)
    for enabled, max_rows in ((True, limit), (False, len(clean)), (False, None)):
        pd.testing.assert_frame_equal(
            export_canvas_training_data(
                clean, REGRESSORS, **CALENDAR, enabled=enabled, max_rows_when_disabled=max_rows
            ),
            full,
        )


def test_export_needs_the_history_columns_and_calendar_regressors(fleet):
    with pytest.raises(ValueError, match=r"lacks columns \['value'\]"):
        export_canvas_training_data(
            fleet["clean_server_metrics"].drop(columns="value"), REGRESSORS, **CALENDAR
        )
    with pytest.raises(ValueError, match=r"\['lag_7'\] are not calendar flags"):
        export_canvas_training_data(fleet["clean_server_metrics"], ["is_holiday", "lag_7"], **CALENDAR)


def test_fallback_is_a_backtest_weighted_ensemble(fleet):
    empty = fleet["forecasts"].iloc[0:0]
    local, weights = build_canvas_forecasts(
        empty, FALLBACK, fleet["forecasts"], fleet["model_metrics"], "mase", 3
    )
    assert (local["model"] == "canvas_local").all() and not local["is_selected"].any()
    assert len(local) == len(SERIES) * HORIZON
    assert (local["p10"] <= local["p50"]).all() and (local["p50"] <= local["p90"]).all()
    mean_weight = weights.groupby("model")["weight"].mean()
    assert mean_weight["good"] > mean_weight["seasonal_naive"] > mean_weight["trees"]  # MASE 0.5 < 1 < 2
    assert mean_weight.to_dict() == pytest.approx({"good": 4 / 7, "seasonal_naive": 2 / 7, "trees": 1 / 7})


def test_autopilot_path_passes_its_forecasts_through(fleet):
    canvas = fleet["forecasts"].query("model == 'good'").assign(model="canvas", is_selected=False)
    out, weights = build_canvas_forecasts(
        canvas, {"path": "autopilot"}, fleet["forecasts"], fleet["model_metrics"], "mase", 3
    )
    assert (out["model"] == "canvas").all() and len(out) == len(canvas) and weights.empty


def test_comparison_on_a_small_fleet(fleet):
    local, weights = build_canvas_forecasts(
        fleet["forecasts"].iloc[0:0], FALLBACK, fleet["forecasts"], fleet["model_metrics"], "mase", 3
    )
    comparison = compare_canvas_forecasts(
        local,
        FALLBACK,
        weights,
        fleet["forecasts"],
        fleet["model_metrics"],
        fleet["future_metrics"],
        fleet["clean_server_metrics"],
        10.0,
        ["smape", "mase", "coverage", "not_there"],
    )
    json.dumps(comparison)  # JSON-ready
    holdout = {row["model"]: row for row in comparison["holdout"]["models"]}
    assert set(holdout) == {"canvas_local", "good", "seasonal_naive", "trees", "selected"}
    assert holdout["good"]["smape"] == 0.0 and holdout["good"]["coverage_p10_p90"] == 1.0
    assert holdout["trees"]["coverage_p10_p90"] == 0.0  # 6 points low with a +-2 band
    assert holdout["selected"]["mase"] == holdout["good"]["mase"]
    assert 0 < holdout["canvas_local"]["mase"] < holdout["seasonal_naive"]["mase"] < holdout["trees"]["mase"]
    assert holdout["canvas_local"]["n_points"] == len(SERIES) * HORIZON
    assert (
        comparison["bar"]["passed"] is True and comparison["bar"]["value"] == holdout["canvas_local"]["smape"]
    )
    assert (comparison["path"], comparison["reason"]) == ("fallback", "disabled")
    assert [row["model"] for row in comparison["backtest"]["models"]] == ["good", "seasonal_naive", "trees"]
    assert set(comparison["backtest"]["models"][0]) == {"model", "smape", "mase", "coverage"}


def test_comparison_without_actuals_says_so(fleet):
    local, weights = build_canvas_forecasts(
        fleet["forecasts"].iloc[0:0], FALLBACK, fleet["forecasts"], fleet["model_metrics"], "mase", 3
    )
    comparison = compare_canvas_forecasts(
        local,
        FALLBACK,
        weights,
        fleet["forecasts"],
        fleet["model_metrics"],
        pd.DataFrame(),
        fleet["clean_server_metrics"],
        10.0,
        ["mase"],
    )
    assert comparison["holdout"]["actuals_available"] is False and comparison["holdout"]["models"] == []
    assert comparison["bar"]["passed"] is None


def test_pipeline_nodes_are_named_and_namespaced():
    names = {node.name for node in create_pipeline().nodes}
    assert names == {
        f"canvas.{n}_node"
        for n in (
            "export_canvas_training_data",
            "forecast_with_autopilot",
            "build_canvas_forecasts",
            "compare_canvas_forecasts",
        )
    }


def test_pipeline_run_falls_back_locally(fleet, kedro_session, data_root):
    paths = {
        "clean_server_metrics": "03_primary/clean_server_metrics.parquet",
        "forecasts": "07_model_output/forecasts.parquet",
        "model_metrics": "08_reporting/model_metrics.parquet",
        "future_metrics": "01_raw/future_metrics.parquet",
    }
    for name, path in paths.items():
        (data_root / path).parent.mkdir(parents=True, exist_ok=True)
        fleet[name].to_parquet(data_root / path)
    session = kedro_session(runtime_params={"horizon": HORIZON})
    session.run(pipeline_names=["canvas"], runner=SequentialRunner())

    canvas = pd.read_parquet(data_root / "07_model_output/canvas_forecasts.parquet")
    assert (canvas["model"] == "canvas_local").all() and len(canvas) == len(SERIES) * HORIZON
    training = pd.read_csv(data_root / "05_model_input/canvas_training_data.csv")
    assert len(training) == len(SERIES) * HISTORY_DAYS
    comparison = json.loads((data_root / "08_reporting/canvas_comparison.json").read_text())
    assert (comparison["path"], comparison["model"], comparison["reason"]) == (
        "fallback",
        "canvas_local",
        "disabled",
    )
    assert comparison["holdout"]["actuals_available"] and comparison["bar"]["threshold"] == 10.0
