"""Node tests of the modelling pipeline: hand-computed scores, leakage, calibration, selection."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.pipelines.modelling.nodes import (
    _in_sample_scale,
    assemble_forecasts,
    backtest_forecaster,
    backtest_origins,
    calibrate_intervals,
    fit_forecaster,
    prepare_model_input,
    score_forecasts,
    select_models,
)
from capacity_forecaster.schema import METRICS
from tests.models.sample_series import clean_tables

H = 14
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
SMALL = {
    "seasonal_naive": {"residual_window": 70},
    "random_forest": {"n_estimators": 8, "max_depth": 4, "max_train_rows": 1500, "train_window_days": 150},
    "gradient_boosting": {"n_estimators": 8, "max_train_rows": 1500, "train_window_days": 150},
    "quantile_gbm": {
        "max_iter": 8,
        "max_leaf_nodes": 8,
        "min_samples_leaf": 10,
        "max_train_rows": 1500,
        "train_window_days": 150,
    },
    "prophet": {"yearly_seasonality": False, "fit_window_days": 120, "n_jobs": 1},
    "changepoint_regression": {"window_days": 150},
}


@pytest.fixture(scope="module")
def model_input() -> pd.DataFrame:
    clean, inventory = clean_tables(n_servers=3, days=240)
    return prepare_model_input(clean, inventory)


def test_prepare_model_input_fills_gaps_for_fitting_only(model_input):
    gap = model_input[(model_input["unique_id"] == "srv-0000|cpu_p95") & ~model_input["is_observed"]]
    assert len(gap) == 10 and gap["y"].notna().all()
    assert model_input["y"].notna().all()
    assert set(model_input["archetype"]) == {"web", "database", "batch"}


def test_prepare_model_input_rejects_unknown_metrics():
    clean, inventory = clean_tables(n_servers=1, days=20)
    with pytest.raises(ValueError, match="unknown metrics"):
        prepare_model_input(clean.assign(metric="gpu_p95"), inventory)


def test_scores_match_hand_computed_values():
    frame = pd.DataFrame({"y": [10.0, 20.0, 40.0], "p10": [8.0, 21.0, 30.0], "p50": [12.0, 20.0, 36.0],
                          "p90": [14.0, 25.0, 38.0]})  # fmt: skip
    scores = score_forecasts(frame, np.array([2.0]))
    # errors y - p50: -2, 0, 4
    assert scores["mae"] == pytest.approx(2.0)
    assert scores["rmse"] == pytest.approx(np.sqrt(20 / 3))
    assert scores["mape"] == pytest.approx((0.2 + 0 + 0.1) / 3 * 100)
    assert scores["smape"] == pytest.approx((4 / 22 + 0 + 8 / 76) / 3 * 100)
    assert scores["mase"] == pytest.approx(1.0)
    assert scores["wape"] == pytest.approx(6 / 70)
    # pinball p10: y - q = 2, -1, 10 -> 0.2, 0.9, 1.0 ; p90: y - q = -4, -5, 2 -> 0.4, 0.5, 1.8
    assert scores["pinball_p10"] == pytest.approx((0.2 + 0.9 + 1.0) / 3)
    assert scores["pinball_p50"] == pytest.approx((1 + 0 + 2) / 3)
    assert scores["pinball_p90"] == pytest.approx((0.4 + 0.5 + 1.8) / 3)
    assert scores["coverage"] == pytest.approx(1 / 3)  # only 10 in [8, 14]; 20 < 21, 40 > 38


def test_mase_scale_is_the_in_sample_seasonal_naive_error():
    days = pd.date_range("2024-01-01", periods=21)
    y = np.arange(21, dtype=float) ** 2
    frame = pd.DataFrame({"unique_id": "a", "ds": days, "y": y, "is_observed": True})
    scale = _in_sample_scale(frame, pd.DataFrame({"unique_id": ["a"], "origin": [days[9]]}), season_length=7)
    assert scale["scale"].iloc[0] == pytest.approx(np.mean(np.abs(y[7:10] - y[0:3])))


def test_origins_sit_in_the_holdout_and_leave_a_full_horizon():
    last = pd.Timestamp("2025-12-31")
    origins = backtest_origins(last, 1461, 5, 0.2, 90)
    assert len(origins) == 5 and origins.max() == last - pd.Timedelta(days=90)
    assert origins.min() == last - pd.Timedelta(days=292)
    with pytest.raises(ValueError, match="too short"):
        backtest_origins(last, 100, 5, 0.2, 90)


def _node_args(kind: str, hyperparameters: dict, enabled: bool = True, metric_jobs: int = 1) -> dict:
    return {"enabled": enabled, "kind": kind, "hyperparameters": hyperparameters, "backtest_folds": None,
            "horizon": H, "metric_jobs": metric_jobs, "n_origins": 3, "holdout_share": 0.3,
            **CALENDAR}  # fmt: skip


def _backtest(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    forecasts, stats = backtest_forecaster(frame, **_node_args(kind, SMALL[kind]))
    assert stats["folds"] == 3 and stats["fit_seconds"] > 0
    return forecasts


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_backtest_has_no_leakage(model_input, kind):
    """Changing every value after an origin leaves that origin's forecast unchanged, for every model."""
    frame = model_input[model_input["metric"].isin(["cpu_p95", "disk_io_p95"])]  # 2 global fits per fold
    if kind == "prophet":  # one model per series: one series keeps the test fast
        frame = frame[frame["unique_id"] == "srv-0001|disk_io_p95"]
    before = _backtest(frame, kind)
    origin = before.loc[before["fold"] == 1, "origin"].iloc[0]
    changed = frame.assign(y=frame["y"].where(frame["ds"] <= origin, 99.0))
    after = _backtest(changed, kind)
    cols = ["unique_id", "ds", "p10", "p50", "p90"]
    for fold in (0, 1):
        pd.testing.assert_frame_equal(
            before.loc[before["fold"] == fold, cols].reset_index(drop=True),
            after.loc[after["fold"] == fold, cols].reset_index(drop=True),
        )
    # a later origin sees the change, so the comparison above is not vacuous
    assert not np.allclose(before.loc[before["fold"] == 2, "p50"], after.loc[after["fold"] == 2, "p50"])
    assert (
        before.groupby("fold")["ds"].min() == before.groupby("fold")["origin"].first() + pd.Timedelta(days=1)
    ).all()


def test_metrics_fitted_in_parallel_processes_match_one_at_a_time(model_input):
    one, _ = backtest_forecaster(model_input, **_node_args("quantile_gbm", SMALL["quantile_gbm"]))
    args = _node_args("quantile_gbm", SMALL["quantile_gbm"], metric_jobs=2)
    two, _ = backtest_forecaster(model_input, **args)
    assert set(one["metric"]) == set(METRICS)
    pd.testing.assert_frame_equal(one, two)
    for backtest_only in ("backtest_folds", "n_origins", "holdout_share"):
        del args[backtest_only]
    fitted = fit_forecaster(model_input, **args)
    assert sorted(fitted) == sorted(METRICS) and all(m.alias == "quantile_gbm" for m in fitted.values())


def test_disabled_model_backtests_nothing(model_input):
    forecasts, stats = backtest_forecaster(model_input, **_node_args("prophet", {}, enabled=False))
    assert forecasts.empty and stats["folds"] == 0


def test_unknown_kind_is_rejected(model_input):
    with pytest.raises(ValueError, match="unknown model kind"):
        backtest_forecaster(model_input, **_node_args("arima", {}))


def _toy_backtest(n: int = 400, folds: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    ds = pd.date_range("2024-01-01", periods=n // folds)
    rows = []
    for fold in range(folds):
        y = 50 + rng.normal(0, 4, len(ds))
        rows.append(pd.DataFrame({"unique_id": "a|cpu_p95", "metric": "cpu_p95", "fold": fold,
                                  "origin": ds[0] - pd.Timedelta(days=1), "ds": ds, "model": "m",
                                  "p10": 49.0, "p50": 50.0, "p90": 51.0, "y": y}))  # fmt: skip
    backtest = pd.concat(rows, ignore_index=True)
    actuals = (
        backtest[["unique_id", "ds", "y"]]
        .drop_duplicates(["unique_id", "ds"])
        .assign(is_observed=True, server_id="a", archetype="web")
    )
    return backtest.drop(columns="y"), actuals


def test_calibration_widens_a_too_narrow_interval_to_the_target():
    backtest, _ = _toy_backtest()
    # one actual per day and fold: make the actuals differ per fold through distinct ds per fold
    backtest["ds"] = backtest["ds"] + pd.to_timedelta(backtest["fold"] * 200, "D")
    rng = np.random.default_rng(4)
    actuals = backtest[["unique_id", "ds"]].assign(
        y=50 + rng.normal(0, 4, len(backtest)), is_observed=True, server_id="a", archetype="web"
    )
    calibrated, scales = calibrate_intervals(actuals, True, 0.8, [], backtest)
    assert scales["scale"].iloc[0] > 3  # +-1 point was far too narrow for noise with sd 4
    inside = (calibrated["y"] >= calibrated["p10"]) & (calibrated["y"] <= calibrated["p90"])
    assert 0.7 < inside.mean() < 0.9  # cross-fitted: each fold is scaled by the other folds only
    uncalibrated, ones = calibrate_intervals(actuals, False, 0.8, [], backtest)
    assert (ones["scale"] == 1.0).all() and (uncalibrated["p90"] == 51.0).all()


def _metrics(rows: list[tuple]) -> pd.DataFrame:
    columns = ["server_id", "metric", "model", "fold", "mase"]
    return pd.DataFrame(rows, columns=columns).assign(archetype="web")


def test_selection_picks_the_better_model_per_server():
    metrics = _metrics(
        [
            ("a", "cpu_p95", "prophet", 3, 0.8),
            ("a", "cpu_p95", "prophet", 4, 0.9),
            ("a", "cpu_p95", "seasonal_naive", 3, 1.0),
            ("a", "cpu_p95", "seasonal_naive", 4, 1.0),
            ("b", "cpu_p95", "prophet", 3, 1.4),
            ("b", "cpu_p95", "prophet", 4, 1.2),
            ("b", "cpu_p95", "seasonal_naive", 3, 1.0),
            ("b", "cpu_p95", "seasonal_naive", 4, 1.0),
            ("b", "cpu_p95", "seasonal_naive", 0, 9.0),
        ]  # fmt: skip
    )  # fold 0 only exists for one model: it does not count
    selection = select_models(metrics, "mase", 0.0).set_index("server_id")
    assert selection["model"].to_dict() == {"a": "prophet", "b": "seasonal_naive"}
    assert selection["mase"].to_dict() == {"a": pytest.approx(0.85), "b": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="not a model_metrics column"):
        select_models(metrics, "crps", 0.0)
    with pytest.raises(ValueError, match="pooling must be within"):
        select_models(metrics, "mase", 1.5)


def test_pooled_selection_needs_strong_evidence_to_leave_the_archetype_choice():
    # On servers a-d prophet is better by 0.2; on e seasonal naive looks better by 0.05, on f by 0.6.
    rows = [(s, "cpu_p95", "prophet", 4, 0.8) for s in "abcd"]
    rows += [(s, "cpu_p95", "seasonal_naive", 4, 1.0) for s in "abcd"]
    rows += [("e", "cpu_p95", "prophet", 4, 1.0), ("e", "cpu_p95", "seasonal_naive", 4, 0.95)]
    rows += [("f", "cpu_p95", "prophet", 4, 1.6), ("f", "cpu_p95", "seasonal_naive", 4, 1.0)]
    metrics = _metrics(rows)
    own = select_models(metrics, "mase", 0.0).set_index("server_id")["model"]
    assert own[["e", "f"]].tolist() == ["seasonal_naive", "seasonal_naive"]
    pooled = select_models(metrics, "mase", 0.8).set_index("server_id")
    # pooled: prophet (4 x 0.8 + 1.0 + 1.6) / 6 = 0.967, seasonal naive (4 x 1.0 + 0.95 + 1.0) / 6 = 0.992
    assert pooled.loc["e", "model"] == "prophet"  # a 0.05 edge on one fold is noise
    assert pooled.loc["f", "model"] == "seasonal_naive"  # a 0.6 edge is evidence
    assert pooled.loc["f", "expected_mase"] == pytest.approx(0.2 * 1.0 + 0.8 * (4 * 1.0 + 0.95 + 1.0) / 6)
    one_choice = select_models(metrics, "mase", 1.0)["model"]
    assert set(one_choice) == {"prophet"}


def test_assemble_flags_exactly_one_model_and_applies_scales():
    dates = pd.date_range("2025-01-01", periods=3)
    forecasts = [
        pd.DataFrame(
            {
                "server_id": s,
                "metric": "cpu_p95",
                "date": dates,
                "model": m,
                "p10": 40.0,
                "p50": 50.0,
                "p90": 60.0,
            }
        )  # fmt: skip
        for m in ("seasonal_naive", "prophet")
        for s in ("a", "b")
    ]
    selection = pd.DataFrame({"server_id": ["a"], "metric": ["cpu_p95"], "model": ["prophet"]})
    scales = pd.DataFrame({"model": ["prophet"], "metric": ["cpu_p95"], "scale": [2.0]})
    out = assemble_forecasts(selection, scales, [], pd.concat(forecasts[:2]), pd.concat(forecasts[2:]))
    chosen = out[out["is_selected"]].groupby("server_id")["model"].unique().map(list).to_dict()
    assert chosen == {"a": ["prophet"], "b": ["seasonal_naive"]}  # b falls back to the baseline
    prophet = out[out["model"] == "prophet"]
    assert (prophet["p10"] == 30.0).all() and (prophet["p90"] == 70.0).all()
    assert (out.loc[out["model"] == "seasonal_naive", "p90"] == 60.0).all()


def test_ensemble_is_the_members_mean_where_all_of_them_forecast():
    dates = pd.date_range("2025-01-01", periods=2)
    one = pd.DataFrame({"server_id": "a", "metric": "cpu_p95", "date": dates, "model": "prophet",
                        "p10": [10.0, 10.0], "p50": [20.0, 20.0], "p90": [30.0, 30.0]})  # fmt: skip
    two = one.assign(model="quantile_gbm", p10=[20.0, 20.0], p50=[40.0, 40.0], p90=[50.0, 50.0])
    baseline = one.assign(model="seasonal_naive")
    selection = pd.DataFrame({"server_id": ["a"], "metric": ["cpu_p95"], "model": ["ensemble"]})
    scales = pd.DataFrame(columns=["model", "metric", "scale"])
    out = assemble_forecasts(selection, scales, ["prophet", "quantile_gbm"], one, two.iloc[:1], baseline)
    ensemble = out[out["model"] == "ensemble"]
    assert len(ensemble) == 1 and ensemble["is_selected"].all()  # day 2 lacks quantile_gbm: no ensemble row
    assert ensemble[["p10", "p50", "p90"]].iloc[0].tolist() == [15.0, 30.0, 40.0]
