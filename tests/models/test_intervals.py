"""Interval rules on constructed data: the ensemble's half-widths and conformal scales per horizon week."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.models.backtest import guarded_scale, weighted_quantile
from capacity_forecaster.models.intervals import (
    apply_weekly_scales,
    ensemble_quantiles,
    horizon_weeks,
    weekly_scales,
)
from capacity_forecaster.pipelines.modelling.nodes import calibrate_intervals


def test_horizon_weeks_count_from_the_day_after_the_origin():
    assert horizon_weeks(np.array([1, 7, 8, 14, 15, 30])).tolist() == [0, 0, 1, 1, 2, 4]


def test_the_ensemble_is_never_narrower_than_its_members_median_half_width():
    # medians disagree and one member's interval is degenerate: the median of quantiles is p10 =
    # median(25, 28, 39.7) = 28, p90 = median(35, 42, 40.3) = 40.3 around p50 = 35; the members' median
    # half-widths (5 below, 5 above) ask for no more than that: [28, 40.3] stays.
    members = pd.DataFrame(
        {
            "key": 1,
            "model": ["seasonal_naive", "changepoint_regression", "quantile_gbm"],
            "p10": [25.0, 28.0, 39.7],
            "p50": [30.0, 35.0, 40.0],
            "p90": [35.0, 42.0, 40.3],
        }
    )
    out = ensemble_quantiles(members, ["seasonal_naive", "changepoint_regression", "quantile_gbm"], ["key"])
    assert out[["p10", "p50", "p90"]].iloc[0].tolist() == pytest.approx([28.0, 35.0, 40.3])
    narrow = members.assign(p10=[30.0, 25.0, 34.8], p50=35.0, p90=[40.0, 45.0, 35.2])
    # median p10 = 30, p90 = 40 (half-widths 5); members' median half-widths: below 5, above 5 -> same
    out = ensemble_quantiles(narrow, list(narrow["model"]), ["key"])
    assert out[["p10", "p50", "p90"]].iloc[0].tolist() == pytest.approx([30.0, 35.0, 40.0])
    skewed = members.assign(p10=[20.0, 34.0, 34.9], p50=[30.0, 35.0, 36.0], p90=[31.0, 45.0, 36.1])
    # median p10 34, p50 35, p90 36.1 (halves 1 / 1.1); members' median halves: below 1.0 (10, 1, 1.1),
    # above 1.0 (1, 10, 0.1): the floor (1.1 below, 1 above) -> p10 = min(34, 33.9) = 33.9, p90 = 36.1
    out = ensemble_quantiles(skewed, list(skewed["model"]), ["key"])
    assert out[["p10", "p50", "p90"]].iloc[0].tolist() == pytest.approx([33.9, 35.0, 36.1])


def _guard(ratio: np.ndarray, weight: np.ndarray, folds: list[int]) -> tuple[float, float]:
    raw = weighted_quantile(ratio, weight, 0.8)
    return raw, guarded_scale(raw, len(folds), 0.0, 100.0)


def test_weekly_scales_grow_with_the_horizon_and_are_cross_fitted():
    # two folds of 14 days; the interval ratio is 1 in week 1 and 2 in week 2 on fold 0, 0.5 / 3 on fold 1
    week = np.tile(np.repeat([0, 1], 7), 2)
    fold = np.repeat([0, 1], 14)
    ratio = np.where(fold == 0, np.where(week == 0, 1.0, 2.0), np.where(week == 0, 0.5, 3.0))
    table, rows = weekly_scales(ratio, np.ones(28), np.ones(28, bool), week, fold, lambda f: [1 - f], _guard)
    assert table["horizon_week"].tolist() == [0, 1]
    assert table["raw_scale"].tolist() == [1.0, 3.0] and table["scale"].tolist() == [1.0, 3.0]
    # cross-fitted: fold 0 gets fold 1's scales (0.5 then 3), fold 1 gets fold 0's (1 then 2)
    assert rows[(fold == 0) & (week == 0)][0] == 0.5 and rows[(fold == 0) & (week == 1)][0] == 3.0
    assert rows[(fold == 1) & (week == 0)][0] == 1.0 and rows[(fold == 1) & (week == 1)][0] == 2.0
    # a later week that looks calmer keeps the earlier week's scale: errors do not shrink further out
    calm = np.where(week == 1, 0.1, 2.0)
    table, _ = weekly_scales(calm, np.ones(28), np.ones(28, bool), week, fold, lambda f: [1 - f], _guard)
    assert table["scale"].tolist() == [2.0, 2.0] and table["raw_scale"].tolist() == [2.0, 0.1]


def test_days_beyond_the_backtest_take_the_last_weeks_scale():
    rows = pd.DataFrame(
        {"model": "m", "metric": "cpu_p95", "p10": 40.0, "p50": 50.0, "p90": 60.0}, index=range(4)
    )
    scales = pd.DataFrame(
        {"model": "m", "metric": "cpu_p95", "horizon_week": [0, 1], "scale": [1.5, 2.0], "raw_scale": 0.0}
    )
    out = apply_weekly_scales(rows, scales, np.array([1, 8, 15, 30]))
    assert out["p90"].tolist() == [65.0, 70.0, 70.0, 70.0] and out["p10"].tolist() == [35.0, 30.0, 30.0, 30.0]
    other = apply_weekly_scales(rows.assign(model="x"), scales, np.array([1, 8, 15, 30]))
    assert other["p90"].tolist() == [60.0] * 4  # no scale for the model: unchanged


def test_weekly_scales_are_looked_up_per_row_of_interleaved_categorical_models_and_metrics():
    rng = np.random.default_rng(3)
    n = 200
    rows = pd.DataFrame(
        {
            "model": pd.Categorical(rng.choice(["a", "b", "c"], n)),
            "metric": pd.Categorical(rng.choice(["cpu_p95", "memory_p95"], n)),
            "p10": 40.0, "p50": 50.0, "p90": 60.0,
        }
    )  # fmt: skip
    scales = pd.DataFrame(
        {"model": ["a", "a", "a", "b"], "metric": ["cpu_p95", "cpu_p95", "memory_p95", "cpu_p95"],
         "horizon_week": [0, 2, 0, 0], "scale": [2.0, 3.0, 1.5, 0.5]}
    )  # fmt: skip
    days = rng.integers(1, 40, n)
    out = apply_weekly_scales(rows, scales, days)
    table = {(m, k, w): s for m, k, w, s in scales.itertuples(index=False)}
    last = scales.groupby(["model", "metric"])["horizon_week"].max().to_dict()
    for model, metric, day, p90 in zip(rows["model"], rows["metric"], days, out["p90"], strict=True):
        week = min((day - 1) // 7, last.get((model, metric), 0))
        assert p90 == 50.0 + 10.0 * table.get((model, metric, week), 1.0)  # week 1 of a/cpu: none, so 1
    single = apply_weekly_scales(rows, scales[scales["horizon_week"] == 0].drop(columns="horizon_week"), days)
    keys = zip(rows["model"], rows["metric"], strict=True)
    expected = [50.0 + 10.0 * table.get((m, k, 0), 1.0) for m, k in keys]
    assert single["p90"].tolist() == expected


def test_calibration_scales_each_horizon_week_and_the_ensemble_after_its_members():
    # two members, 4 independent folds of 14 days, interval +-1; noise sd 2 in week 1 and sd 6 in week 2
    rng = np.random.default_rng(5)
    rows, actuals = [], []
    for fold in range(4):
        origin = pd.Timestamp("2024-01-01") + pd.Timedelta(days=100 * fold)
        ds = pd.date_range(origin + pd.Timedelta(days=1), periods=14)
        y = 50 + np.r_[rng.normal(0, 2, 7), rng.normal(0, 6, 7)]
        actuals.append(pd.DataFrame({"unique_id": "a|cpu_p95", "ds": ds, "y": y}))
        for model, p50 in (("seasonal_naive", 50.0), ("changepoint_regression", 50.5)):
            rows.append(pd.DataFrame({"unique_id": "a|cpu_p95", "metric": "cpu_p95", "fold": fold,
                                      "origin": origin, "ds": ds, "model": model,
                                      "p10": p50 - 1, "p50": p50, "p90": p50 + 1}))  # fmt: skip
    backtest = pd.concat(rows, ignore_index=True)
    model_input = pd.concat(actuals, ignore_index=True).assign(
        is_observed=True, server_id="a", archetype="web"
    )
    plan = {"origin_offsets_days": [400, 300, 200, 100], "horizon": 14}
    members = ["seasonal_naive", "changepoint_regression"]
    shards = {"shards": 1}
    calibrated, scales = calibrate_intervals(
        model_input, plan, True, 0.8, 100.0, 0.0, members, shards, {"shard-1-of-1": backtest}
    )
    table = scales.set_index(["model", "horizon_week"])["scale"]
    for model in ("seasonal_naive", "changepoint_regression"):
        assert 1.5 < table[(model, 0)] < 5 and table[(model, 1)] > 2 * table[(model, 0)]
    assert ("ensemble", 0) in table.index and ("ensemble", 1) in table.index
    # the ensemble is formed from the calibrated members: already about right, its own scale stays near 1
    assert 0.7 < table[("ensemble", 0)] < 1.4 and 0.7 < table[("ensemble", 1)] < 1.4
    ensemble = calibrated[calibrated["model"] == "ensemble"]
    week = (ensemble["ds"] - ensemble["origin"]).dt.days > 7
    widths = (ensemble["p90"] - ensemble["p10"]).groupby(week.to_numpy()).median()
    assert widths[True] > 2 * widths[False]
