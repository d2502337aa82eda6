"""The modelling pipeline end to end through a KedroSession on a tiny fleet (temp data root, never data/)."""

import json

import pandas as pd
import pytest

from capacity_forecaster.pipelines.modelling.pipeline import MODELS
from tests.models.sample_series import clean_tables

H = 14
_TREE = {"max_train_rows": 1500, "train_window_days": 150}
SMALL_RUN = {
    "horizon": H,
    "modelling": {
        "backtest": {"n_origins": 3, "holdout_share": 0.3},
        "seasonal_naive": {"hyperparameters": {"residual_window": 70}},
        "prophet": {
            "backtest_folds": 2,
            "hyperparameters": {"yearly_seasonality": False, "fit_window_days": 120, "n_jobs": 1},
        },  # fmt: skip
        "random_forest": {"hyperparameters": {"n_estimators": 8, "max_depth": 4, "n_jobs": 1, **_TREE}},
        "gradient_boosting": {"hyperparameters": {"n_estimators": 8, **_TREE}},
        "quantile_gbm": {
            "hyperparameters": {"max_iter": 8, "max_leaf_nodes": 8, "min_samples_leaf": 10, **_TREE}
        },
    },
}


@pytest.mark.slow
def test_modelling_pipeline_runs_through_a_session(kedro_session, data_root):
    clean, inventory = clean_tables(n_servers=2, days=240)
    (data_root / "03_primary").mkdir()
    (data_root / "01_raw").mkdir()
    clean.to_parquet(data_root / "03_primary" / "clean_server_metrics.parquet")
    inventory.to_csv(data_root / "01_raw" / "server_inventory.csv", index=False)

    kedro_session(runtime_params=SMALL_RUN).run(pipeline_names=["modelling"])

    forecasts = pd.read_parquet(data_root / "07_model_output" / "forecasts.parquet")
    assert set(forecasts["model"]) == {*MODELS, "ensemble"}
    per_model = forecasts.groupby(["server_id", "metric", "model"])["date"].agg(["min", "size"])
    assert (per_model["size"] == H).all()
    assert (per_model["min"] == clean["date"].max() + pd.Timedelta(days=1)).all()
    assert (forecasts["p10"] <= forecasts["p50"]).all() and (forecasts["p50"] <= forecasts["p90"]).all()
    assert forecasts[["p10", "p50", "p90"]].stack().between(0, 100).all()
    selected = forecasts[forecasts["is_selected"]].groupby(["server_id", "metric"])["model"].nunique()
    assert len(selected) == 8 and (selected == 1).all()

    metrics = pd.read_parquet(data_root / "08_reporting" / "model_metrics.parquet")
    assert {"mase", "smape", "coverage", "pinball_p90", "eoq_mase", "eoq_coverage"} <= set(metrics.columns)
    assert set(metrics.loc[metrics["model"] == "prophet", "fold"]) == {1, 2}
    assert set(metrics.loc[metrics["model"] == "seasonal_naive", "fold"]) == {0, 1, 2}

    observed_days = clean.groupby(["server_id", "metric"])["value"].count()  # 230 for the series with a gap
    history_days = forecasts.groupby(["server_id", "metric"])["history_days"].agg(["min", "max"])
    assert (history_days["min"] == observed_days).all() and (history_days["max"] == observed_days).all()
    backtest = pd.read_parquet(data_root / "07_model_output" / "backtest_forecasts.parquet")
    columns = ["server_id", "metric", "origin", "date", "h", "model", "p10", "p50", "p90", "actual"]
    assert list(backtest.columns) == columns
    assert (
        backtest["h"].between(1, H).all()
        and (backtest["date"] - backtest["origin"]).dt.days.eq(backtest["h"]).all()
    )
    chosen = forecasts[forecasts["is_selected"]][["server_id", "metric", "model"]].drop_duplicates()
    assert len(backtest.merge(chosen)) == len(backtest)  # only each series' selected model
    assert backtest["actual"].notna().all()  # the NaN gap (days 100-110) lies before the folds

    leaderboard = json.loads((data_root / "08_reporting" / "model_leaderboard.json").read_text())
    assert leaderboard["backtest"]["origins"] == 3 and leaderboard["backtest"]["reason"] is None
    ranked = [r["model"] for r in leaderboard["models"]]
    assert set(ranked) == {*MODELS, "ensemble", "selected"} and leaderboard["common_folds"] == [1, 2]
    assert [r["mase"] for r in leaderboard["models"]] == sorted(r["mase"] for r in leaderboard["models"])
    assert {r["archetype"] for r in leaderboard["by_archetype"]} == {"web", "database"}

    for model in MODELS:  # fitted models are persisted (versioned) and reusable
        assert list((data_root / "06_models" / f"{model}_forecaster.pkl").iterdir())


def _short_ragged_fleet() -> tuple[pd.DataFrame, pd.DataFrame]:
    """77 days without a quarter-end (2023-04-03 .. 2023-06-18), a server onboarded 22 days before the end and
    one whose data stopped 10 days before it (ragged ends)."""
    clean, inventory = clean_tables(n_servers=4, days=77)
    clean["date"] = clean["date"] - clean["date"].min() + pd.Timestamp("2023-04-03")
    last = clean["date"].max()
    late = (clean["server_id"] == "srv-0002") & (clean["date"] <= last - pd.Timedelta(days=22))
    stopped = (clean["server_id"] == "srv-0003") & (clean["date"] > last - pd.Timedelta(days=10))
    return clean[~late & ~stopped].reset_index(drop=True), inventory


@pytest.mark.slow
def test_modelling_adapts_to_a_short_ragged_history_with_a_long_horizon(kedro_session, data_root):
    clean, inventory = _short_ragged_fleet()
    (data_root / "03_primary").mkdir()
    (data_root / "01_raw").mkdir()
    clean.to_parquet(data_root / "03_primary" / "clean_server_metrics.parquet")
    inventory.to_csv(data_root / "01_raw" / "server_inventory.csv", index=False)
    params = {
        **SMALL_RUN,
        "horizon": 90,
        "modelling": {k: v for k, v in SMALL_RUN["modelling"].items() if k != "backtest"},
    }

    kedro_session(runtime_params=params).run(pipeline_names=["modelling"])

    leaderboard = json.loads((data_root / "08_reporting" / "model_leaderboard.json").read_text())
    plan = leaderboard["backtest"]
    assert (plan["requested_origins"], plan["requested_horizon"]) == (5, 90)
    # median series: 72 days (two of 77, one of 67, one of 22) - min_train_days 35 = 37 days for 3 origins
    assert (plan["origins"], plan["horizon"]) == (3, 23) and plan["origin_offsets_days"] == [37, 30, 23]
    assert (
        "backtest horizon 23 days instead of 90" in plan["reason"]
        and "3 origins instead of 5" in plan["reason"]
    )
    for model in ("prophet", "quantile_gbm", "changepoint_regression"):  # no quarter-end, no 2 years
        assert leaderboard["seasonal_terms_off"][model]["quarter_end"] == 12
    assert leaderboard["seasonal_terms_off"]["prophet"]["yearly"] == 12

    forecasts = pd.read_parquet(data_root / "07_model_output" / "forecasts.parquet")
    selected = forecasts[forecasts["is_selected"]]
    starts = selected.groupby("server_id")["date"].min()
    ends = clean.dropna(subset=["value"]).groupby("server_id")["date"].max()
    assert (starts == ends + pd.Timedelta(days=1)).all()  # each from the day after its own last day
    assert (selected.groupby(["server_id", "metric"]).size() == 90).all()
    late = selected[selected["server_id"] == "srv-0002"]
    assert set(late["model"]) == {"fallback"} and (late["history_days"] == 22).all()
    assert leaderboard["selection"]["basis"]["short_history"] == 4
    backtest = pd.read_parquet(data_root / "07_model_output" / "backtest_forecasts.parquet")
    assert "srv-0002" not in set(backtest["server_id"]) and backtest["h"].max() == 23
    stopped = backtest[backtest["server_id"] == "srv-0003"]
    assert stopped["origin"].max() == ends["srv-0003"] - pd.Timedelta(days=23)  # folds from its own end
