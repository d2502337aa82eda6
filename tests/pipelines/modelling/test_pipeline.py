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

    leaderboard = json.loads((data_root / "08_reporting" / "model_leaderboard.json").read_text())
    ranked = [r["model"] for r in leaderboard["models"]]
    assert set(ranked) == {*MODELS, "ensemble", "selected"} and leaderboard["common_folds"] == [1, 2]
    assert [r["mase"] for r in leaderboard["models"]] == sorted(r["mase"] for r in leaderboard["models"])
    assert {r["archetype"] for r in leaderboard["by_archetype"]} == {"web", "database"}

    for model in MODELS:  # fitted models are persisted (versioned) and reusable
        assert list((data_root / "06_models" / f"{model}_forecaster.pkl").iterdir())
