"""Node tests of the modelling pipeline: hand-computed scores, leakage, calibration, selection."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.models.backtest import choose_models, evidence_margin, plan_folds, recent_folds
from capacity_forecaster.pipelines.modelling.nodes import (
    _in_sample_scale,
    assemble_forecasts,
    backtest_forecaster,
    calibrate_intervals,
    evaluate_backtests,
    fit_forecaster,
    plan_backtest,
    predict_forecaster,
    prepare_model_input,
    rank_models,
    score_forecasts,
    select_models,
)
from capacity_forecaster.schema import METRICS
from tests.models.sample_series import clean_tables

H = 14
ONE = {"shards": 1, "servers": {"shard-1-of-1": 1}}
"""The shard plan of an unsharded run: the merge nodes take ``{shard name: data}`` of its one shard."""
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


def test_default_plan_keeps_origins_in_the_holdout_with_a_full_horizon():
    plan = plan_folds(1461, 90, 5, 0.2, 35, 7, 3)
    assert plan["origin_offsets_days"] == [292, 242, 191, 140, 90] and plan["horizon"] == 90
    assert plan["reason"] is None and plan["independent_folds"] == 3  # 292, 191 and 90 do not overlap


def test_short_history_plan_keeps_origins_a_week_apart():
    plan = plan_folds(77, 14, 5, 0.2, 35, 7, 3)  # was: 2 origins one day apart
    assert plan["origin_offsets_days"] == [42, 35, 28, 21, 14] and plan["horizon"] == 14
    assert plan["independent_folds"] == 3
    too_short = plan_folds(30, 14, 5, 0.2, 35, 7, 3)
    assert too_short["origins"] == 0 and "no origin" in too_short["reason"]


def _one(data):
    return {"shard-1-of-1": data}


def _node_args(kind: str, hyperparameters: dict, enabled: bool = True, metric_jobs: int = 1) -> dict:
    return {"enabled": enabled, "kind": kind, "hyperparameters": hyperparameters, "backtest_folds": None,
            "metric_jobs": metric_jobs, **CALENDAR}  # fmt: skip


def _plan(frame: pd.DataFrame) -> dict:
    return plan_backtest(frame, H, 3, 0.3, 35, 7, 3)


def _backtest(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    forecasts, stats = backtest_forecaster(frame, _plan(frame), **_node_args(kind, SMALL[kind]))
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
    plan = _plan(model_input)
    one, _ = backtest_forecaster(model_input, plan, **_node_args("quantile_gbm", SMALL["quantile_gbm"]))
    args = _node_args("quantile_gbm", SMALL["quantile_gbm"], metric_jobs=2)
    two, _ = backtest_forecaster(model_input, plan, **args)
    assert set(one["metric"]) == set(METRICS)
    pd.testing.assert_frame_equal(one, two)
    del args["backtest_folds"]
    fitted, summary = fit_forecaster(model_input, **args, horizon=H, min_history_days=28)
    assert sorted(fitted) == sorted(METRICS) and all(m.alias == "quantile_gbm" for m in fitted.values())
    assert summary["series"] == 12 and summary["seasonal_terms_off"]["yearly"] == 12  # 240 days < 2 years


def test_disabled_model_backtests_nothing(model_input):
    plan = _plan(model_input)
    forecasts, stats = backtest_forecaster(model_input, plan, **_node_args("prophet", {}, enabled=False))
    assert forecasts.empty and stats["folds"] == 0


def test_unknown_kind_is_rejected(model_input):
    with pytest.raises(ValueError, match="unknown model kind"):
        backtest_forecaster(model_input, _plan(model_input), **_node_args("arima", {}))


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


FOUR_FOLDS = {"origin_offsets_days": [800, 600, 400, 200], "horizon": 100}  # far apart: 4 independent folds


def test_calibration_widens_a_too_narrow_interval_to_the_target():
    backtest, _ = _toy_backtest()
    # one actual per day and fold: make the actuals differ per fold through distinct ds per fold
    backtest["ds"] = backtest["ds"] + pd.to_timedelta(backtest["fold"] * 200, "D")
    rng = np.random.default_rng(4)
    actuals = backtest[["unique_id", "ds"]].assign(
        y=50 + rng.normal(0, 4, len(backtest)), is_observed=True, server_id="a", archetype="web"
    )
    calibrated, scales = calibrate_intervals(
        actuals, FOUR_FOLDS, True, 0.8, 100.0, 0.0, [], ONE, _one(backtest)
    )
    assert scales["scale"].iloc[0] > 3  # +-1 point was far too narrow for noise with sd 4
    inside = (calibrated["y"] >= calibrated["p10"]) & (calibrated["y"] <= calibrated["p90"])
    assert 0.7 < inside.mean() < 0.9  # cross-fitted: each fold is scaled by the other folds only
    uncalibrated, ones = calibrate_intervals(
        actuals, FOUR_FOLDS, False, 0.8, 100.0, 0.0, [], ONE, _one(backtest)
    )
    assert (ones["scale"] == 1.0).all() and (uncalibrated["p90"] == 51.0).all()


def test_one_window_never_rescales_an_interval_on_its_own():
    backtest, actuals = _toy_backtest(n=200, folds=2)  # two folds on the same 100 days: one window
    overlapping = {"origin_offsets_days": [15, 14], "horizon": 14}
    _, shrunk = calibrate_intervals(actuals, overlapping, True, 0.8, 100.0, 1.0, [], ONE, _one(backtest))
    raw = shrunk["raw_scale"].iloc[0]
    assert raw > 4  # the window alone says 4-5x
    assert shrunk["scale"].iloc[0] == pytest.approx(1 + (raw - 1) / 2)  # 1 independent fold vs 1 prior fold
    _, capped = calibrate_intervals(actuals, overlapping, True, 0.8, 2.5, 1.0, [], ONE, _one(backtest))
    assert capped["scale"].iloc[0] == 2.5


def _means(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["server_id", "metric", "model", "mase"]).assign(archetype="web")


def test_selection_with_strong_own_evidence_picks_each_series_winner():
    means = _means([("a", "cpu_p95", "prophet", 0.85), ("a", "cpu_p95", "seasonal_naive", 1.0),
                    ("b", "cpu_p95", "prophet", 1.3), ("b", "cpu_p95", "seasonal_naive", 1.0)])  # fmt: skip
    chosen = choose_models(means, "mase", 0.0, 10_000, 0.0).set_index("server_id")["model"]
    assert chosen.to_dict() == {"a": "prophet", "b": "seasonal_naive"}


def test_pooled_selection_needs_strong_evidence_to_leave_the_group_choice():
    # On servers a-d prophet is better by 0.2; on e seasonal naive looks better by 0.05, on f by 1.0.
    rows = [(s, "cpu_p95", "prophet", 0.8) for s in "abcd"] + [
        (s, "cpu_p95", "seasonal_naive", 1.0) for s in "abcd"
    ]
    rows += [("e", "cpu_p95", "prophet", 1.0), ("e", "cpu_p95", "seasonal_naive", 0.95)]
    rows += [("f", "cpu_p95", "prophet", 2.0), ("f", "cpu_p95", "seasonal_naive", 1.0)]
    pooled = choose_models(_means(rows), "mase", 0.8, 10_000, 0.0).set_index("server_id")
    # group medians: prophet 0.8, seasonal naive 1.0; own weight ~0.2
    assert pooled.loc["e", "model"] == "prophet"  # a 0.05 edge is noise
    assert pooled.loc["f", "model"] == "seasonal_naive"  # a 1.0 edge is evidence
    assert pooled.loc["f", "expected_mase"] == pytest.approx(0.2 * 1.0 + 0.8 * 1.0, abs=1e-3)
    assert set(choose_models(_means(rows), "mase", 1.0, 10_000, 0.0)["model"]) == {"prophet"}


def test_two_overlapping_folds_hardly_move_a_series_from_its_group():
    rows = [(s, "cpu_p95", "prophet", 0.8) for s in "abcd"] + [
        (s, "cpu_p95", "seasonal_naive", 1.0) for s in "abcd"
    ]
    rows += [("e", "cpu_p95", "prophet", 1.1), ("e", "cpu_p95", "seasonal_naive", 0.95)]
    strong = choose_models(_means(rows), "mase", 0.0, 10_000, 0.0).set_index("server_id")["model"]
    weak = choose_models(_means(rows), "mase", 0.0, 1, 0.0).set_index("server_id")
    assert strong["e"] == "seasonal_naive"
    # one independent fold: own weight 1/2, so 0.5 x 1.1 + 0.5 x 0.8 < 0.5 x 0.95 + 0.5 x 1.0
    assert weak.loc["e", "model"] == "prophet"


def test_the_ensemble_is_kept_unless_beaten_by_the_margin():
    rows = [("a", "cpu_p95", "ensemble", 1.0), ("a", "cpu_p95", "prophet", 0.97),
            ("b", "cpu_p95", "ensemble", 1.0), ("b", "cpu_p95", "prophet", 0.90)]  # fmt: skip
    chosen = choose_models(_means(rows), "mase", 0.0, 10_000, 0.05).set_index("server_id")["model"]
    assert chosen.to_dict() == {"a": "ensemble", "b": "prophet"}


def _model_input(series: dict[str, int], days: int = 40) -> pd.DataFrame:
    """Long model input; ``series`` maps ``server_id`` to its history_days (cpu only, archetype web)."""
    dates = pd.date_range("2025-01-01", periods=days)
    return pd.concat(
        [pd.DataFrame({"unique_id": f"{s}|cpu_p95", "server_id": s, "metric": "cpu_p95", "archetype": "web",
                       "ds": dates[-n:], "y": 50.0, "is_observed": True, "history_days": n})
         for s, n in series.items()],
        ignore_index=True,
    )  # fmt: skip


def test_selection_covers_every_series_and_says_on_what_basis():
    metrics = pd.DataFrame(
        [("a", "cpu_p95", m, f, v) for f in (3, 4) for m, v in (("prophet", 0.8), ("seasonal_naive", 1.0))]
        + [("a", "cpu_p95", "seasonal_naive", 0, 9.0)],  # fold 0 only exists for one model: it does not count
        columns=["server_id", "metric", "model", "fold", "mase"],
    ).assign(archetype="web")
    plan = {"origin_offsets_days": [60, 50, 40, 30, 14], "horizon": 14}  # folds 3 and 4: independent
    selection = select_models(
        metrics, _model_input({"a": 40, "b": 20, "c": 40}), plan, "mase", 0.0, 0.0, 0.65, 28
    )
    chosen = selection.set_index("server_id")
    assert chosen["model"].to_dict() == {"a": "prophet", "b": "fallback", "c": "prophet"}
    assert chosen["basis"].to_dict() == {"a": "backtest", "b": "short_history", "c": "group"}
    assert chosen.loc["a", "mase"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="not a model_metrics column"):
        select_models(metrics, _model_input({"a": 40}), plan, "crps", 0.0, 0.0, 0.65, 28)
    with pytest.raises(ValueError, match="pooling must be within"):
        select_models(metrics, _model_input({"a": 40}), plan, "mase", 1.5, 0.0, 0.65, 28)


def test_assemble_flags_exactly_one_model_and_applies_scales():
    dates = pd.date_range("2025-02-10", periods=3)
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
    selection = pd.DataFrame({"server_id": ["a", "b"], "metric": "cpu_p95", "model": ["prophet", "ensemble"]})
    scales = pd.DataFrame({"model": ["prophet"], "metric": ["cpu_p95"], "scale": [2.0]})
    model_input = _model_input({"a": 40, "b": 35})
    out = assemble_forecasts(
        model_input,
        selection,
        scales,
        [],
        3,
        ONE,
        _one(pd.concat(forecasts[:2])),
        _one(pd.concat(forecasts[2:])),
    )
    chosen = out[out["is_selected"]].groupby("server_id")["model"].unique().map(list).to_dict()
    assert chosen == {"a": ["prophet"], "b": ["seasonal_naive"]}  # b has no ensemble: the baseline
    prophet = out[out["model"] == "prophet"]
    assert (prophet["p10"] == 30.0).all() and (prophet["p90"] == 70.0).all()
    assert (out.loc[out["model"] == "seasonal_naive", "p90"] == 60.0).all()
    assert out.groupby("server_id")["history_days"].first().to_dict() == {"a": 40, "b": 35}


def test_a_late_server_gets_the_fallback_forecast_from_the_day_after_its_last_day():
    model_input = _model_input({"late": 12})
    model_input["y"] = 30.0 + np.arange(12) % 3
    selection = pd.DataFrame({"server_id": ["late"], "metric": ["cpu_p95"], "model": ["fallback"]})
    scales = pd.DataFrame(columns=["model", "metric", "scale"])
    out = assemble_forecasts(model_input, selection, scales, [], 20, ONE)
    assert len(out) == 20 and out["is_selected"].all() and (out["model"] == "fallback").all()
    assert out["date"].min() == model_input["ds"].max() + pd.Timedelta(days=1)
    assert (out["history_days"] == 12).all()
    width = out["p90"] - out["p10"]
    assert (width > 5).all() and width.is_monotonic_increasing  # wide, and wider further out


def test_ensemble_is_the_members_median_where_all_of_them_forecast():
    dates = pd.date_range("2025-01-01", periods=2)
    one = pd.DataFrame({"server_id": "a", "metric": "cpu_p95", "date": dates, "model": "prophet",
                        "p10": [10.0, 10.0], "p50": [20.0, 20.0], "p90": [30.0, 30.0]})  # fmt: skip
    two = one.assign(model="quantile_gbm", p10=[20.0, 20.0], p50=[40.0, 40.0], p90=[50.0, 50.0])
    three = one.assign(model="changepoint_regression", p10=[0.0, 0.0], p50=[90.0, 90.0], p90=[95.0, 95.0])
    baseline = one.assign(model="seasonal_naive")
    selection = pd.DataFrame({"server_id": ["a"], "metric": ["cpu_p95"], "model": ["ensemble"]})
    scales = pd.DataFrame(columns=["model", "metric", "scale"])
    model_input = _model_input({"a": 40}, days=40).assign(ds=lambda f: f["ds"] - pd.Timedelta(days=40))
    pair = ["prophet", "quantile_gbm"]
    out = assemble_forecasts(
        model_input, selection, scales, pair, 2, ONE, *map(_one, (one, two.iloc[:1], baseline))
    )
    ensemble = out[out["model"] == "ensemble"]
    assert len(ensemble) == 1 and ensemble["is_selected"].all()  # day 2 lacks quantile_gbm: no ensemble row
    assert ensemble[["p10", "p50", "p90"]].iloc[0].tolist() == [15.0, 30.0, 40.0]  # two members: the mean
    members = ["prophet", "quantile_gbm", "changepoint_regression"]
    three_way = assemble_forecasts(
        model_input, selection, scales, members, 2, ONE, *map(_one, (one, two, three, baseline))
    )
    median = three_way[three_way["model"] == "ensemble"][["p10", "p50", "p90"]].iloc[0].tolist()
    assert median == [10.0, 40.0, 50.0]  # the median member per quantile, not dragged to 90 by one member


def test_the_ensemble_margin_shrinks_with_independent_backtest_days():
    assert evidence_margin(0.05, 2, 12) == 0.05  # 24 days: weak evidence, the full margin
    assert evidence_margin(0.05, 3, 90) == pytest.approx(0.05 * np.sqrt(28 / 270))


def test_a_fleet_too_short_for_any_fold_is_still_forecast(model_input):
    short = model_input[model_input["ds"] > model_input["ds"].max() - pd.Timedelta(days=30)]
    short = short.assign(history_days=30)
    plan = _plan(short)
    assert plan["origins"] == 0 and "no origin" in plan["reason"]
    args = _node_args("seasonal_naive", SMALL["seasonal_naive"])
    backtest, stats = backtest_forecaster(short, plan, **args)
    assert backtest.empty and stats["folds"] == 0
    calibrated, scales = calibrate_intervals(short, plan, True, 0.8, 3.0, 1.0, [], ONE, _one(backtest))
    metrics = evaluate_backtests(calibrated, short, season_length=7, **CALENDAR)
    selection = select_models(metrics, short, plan, "mase", 0.8, 0.05, 0.65, 28)
    assert set(selection["basis"]) == {"no_backtest"}
    del args["backtest_folds"]
    fitted, _ = fit_forecaster(short, **args, horizon=H, min_history_days=28)
    forecasts = assemble_forecasts(short, selection, scales, [], H, ONE, _one(predict_forecaster(fitted, H)))
    selected = forecasts[forecasts["is_selected"]]
    assert set(selected["model"]) == {"seasonal_naive"} and len(selected) == H * short["unique_id"].nunique()
    leaderboard = rank_models(metrics, selection, plan, "mase", 0.8, 0.05, 0.65, ONE, _one(stats))
    assert leaderboard["models"] == [] and leaderboard["backtest"]["reason"] == plan["reason"]


def test_expensive_models_get_recent_folds_that_do_not_overlap():
    assert recent_folds([42, 35, 28, 21, 14], 2, 14) == [2, 4]  # not 21 and 14, one week apart
    assert recent_folds([292, 242, 191, 140, 90], 2, 90) == [2, 4]
    assert recent_folds([20, 15, 10], 2, 14) == [1, 2]  # all overlap: the most recent ones


def test_a_model_whose_intervals_miss_is_not_selected():
    rows = [("a", "cpu_p95", "ensemble", f, 1.0, 0.8) for f in (3, 4)]
    rows += [("a", "cpu_p95", "random_forest", f, 0.5, 0.5) for f in (3, 4)]  # far better p50, p10-p90 misses
    metrics = pd.DataFrame(rows, columns=["server_id", "metric", "model", "fold", "mase", "coverage"])
    plan = {"origin_offsets_days": [60, 50, 40, 30, 14], "horizon": 14}
    model_input = _model_input({"a": 40})
    chosen = select_models(metrics.assign(archetype="web"), model_input, plan, "mase", 0.0, 0.05, 0.65, 28)
    assert chosen["model"].tolist() == ["ensemble"]
    lenient = select_models(metrics.assign(archetype="web"), model_input, plan, "mase", 0.0, 0.05, 0.5, 28)
    assert lenient["model"].tolist() == ["random_forest"]
