"""Fleet-scale budgets of the forecasters: Prophet's series budget, the trees' row budget and panel chunks,
the vectorised per-series models, and selection when a budgeted model skipped some series."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.models import (
    ProphetForecaster,
    QuantileGBMForecaster,
    SeasonalNaiveForecaster,
    trees,
)
from capacity_forecaster.models.base import budget_series, check_long_frame
from capacity_forecaster.pipelines.modelling.nodes import (
    backtest_forecaster,
    backtest_shards,
    fit_forecaster,
    fit_shards,
    plan_backtest,
    prepare_model_input,
    rank_models,
    select_models,
    split_model_input,
)
from capacity_forecaster.schema import METRICS
from tests.models.sample_series import clean_tables, long_frame


def _spans(days: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"days": list(days.values())}, index=pd.Index(list(days), name="unique_id"))


def test_prophet_budget_prefers_long_histories_and_is_stable_across_folds():
    days = {f"srv-{i:03d}|cpu_p95": 900 for i in range(30)} | {f"new-{i}|cpu_p95": 200 for i in range(5)}
    chosen = budget_series(_spans(days), 10, 730)
    assert len(chosen) == 10 and chosen.is_monotonic_increasing
    assert not any(uid.startswith("new-") for uid in chosen)  # long histories first
    # a backtest fold cuts the same days from every series: the same series are chosen
    folded = _spans({uid: n - 150 for uid, n in days.items()})
    assert budget_series(folded, 10, 730).equals(chosen)
    # the order of the rows does not matter, and a budget above the fleet keeps every series
    shuffled = _spans(dict(reversed(list(days.items()))))
    assert budget_series(shuffled, 10, 730).equals(chosen)
    assert len(budget_series(_spans(days), 100, 730)) == len(days)
    assert len(budget_series(_spans(days), None, 730)) == len(days)
    # short histories fill the budget once the long ones are taken
    assert sum(uid.startswith("new-") for uid in budget_series(_spans(days), 32, 730)) == 2


def test_prophet_fits_and_forecasts_only_its_budget_of_series():
    frame = long_frame(n_series=4, days=60)
    model = ProphetForecaster(yearly_seasonality=False, fit_window_days=60, n_jobs=1, max_series=2).fit(frame)
    forecast = model.predict(7)
    assert forecast["unique_id"].nunique() == 2 == len(model.models_)
    expected = budget_series(_spans(dict.fromkeys(["s0", "s1", "s2", "s3"], 60)), 2, 730)
    assert set(forecast["unique_id"]) == set(expected)
    assert model.fitted_on_ == {"series": 2, "series_skipped": 2, "rows": 120}
    with pytest.raises(ValueError, match="max_series"):
        ProphetForecaster(max_series=0).fit(frame)


class _DesignSpy:
    """Records the rows of every design matrix and the series of every panel a fit builds."""

    def __init__(self, monkeypatch):
        self.design_rows, self.panel_series = [], []
        design, init = trees._Panel.design, trees._Panel.__init__

        def spy_design(panel, rows, *args, **kwargs):
            self.design_rows.append(len(rows))
            return design(panel, rows, *args, **kwargs)

        def spy_init(panel, frame, *args, **kwargs):
            init(panel, frame, *args, **kwargs)
            self.panel_series.append(len(panel.ids))

        monkeypatch.setattr(trees._Panel, "design", spy_design)
        monkeypatch.setattr(trees._Panel, "__init__", spy_init)


def test_tree_features_are_built_only_for_the_row_budget_and_one_chunk_at_a_time(monkeypatch):
    frame = long_frame(n_series=7, days=300)
    monkeypatch.setattr(trees, "PANEL_SERIES", 3)
    spy = _DesignSpy(monkeypatch)
    horizon, budget = 14, 500
    model = QuantileGBMForecaster(max_iter=5, horizon=horizon, max_train_rows=budget, train_window_days=100)
    model.fit(frame)
    assert spy.panel_series == [3, 3, 1]  # never the whole fleet at once
    training = spy.design_rows[0::2]  # per chunk: the chunk's sampled rows, then its series' last days
    assert sum(training) == budget and max(spy.design_rows) <= budget + 3 * horizon
    assert spy.design_rows[1::2] == [3 * horizon, 3 * horizon, horizon]
    assert model.fitted_on_ == {"series": 7, "rows": budget, "panel_chunks": 3, "series_forecast": 7}


def test_chunked_tree_panels_give_the_same_forecast_as_one_panel(monkeypatch):
    short = long_frame(n_series=2, days=90, seed=4)
    frame = pd.concat(
        [long_frame(n_series=5, days=260, seed=3), short.assign(unique_id="t" + short["unique_id"])]
    )

    def forecast() -> pd.DataFrame:
        return QuantileGBMForecaster(max_iter=5, horizon=14, max_train_rows=800).fit(frame).predict(14)

    whole = forecast()
    monkeypatch.setattr(trees, "PANEL_SERIES", 2)
    pd.testing.assert_frame_equal(forecast(), whole)


def test_tree_series_budget_forecasts_a_stable_sample_from_a_model_trained_on_every_series(monkeypatch):
    frame = long_frame(n_series=7, days=300)
    monkeypatch.setattr(trees, "PANEL_SERIES", 3)
    spy = _DesignSpy(monkeypatch)
    forecast_series = []
    origin_state = trees._DirectForecaster._origin_state

    def spy_origin_state(model, panel, series):
        forecast_series.extend(panel.ids[series])
        return origin_state(model, panel, series)

    monkeypatch.setattr(trees._DirectForecaster, "_origin_state", spy_origin_state)
    model = QuantileGBMForecaster(max_iter=5, horizon=14, max_train_rows=500, max_series=3).fit(frame)
    forecast = model.predict(14)
    spans = pd.DataFrame({"days": 300}, index=pd.Index([f"s{i}" for i in range(7)]))
    assert sorted(forecast["unique_id"].unique()) == list(budget_series(spans, 3, 730))
    assert sum(spy.design_rows[0::2]) == 500  # trained on rows of every series ...
    assert (
        sum(rows for rows in spy.design_rows if rows % 14 == 0 and rows <= 3 * 14) == 3 * 14
    )  # ... 3 forecast
    assert model.fitted_on_ == {"series": 7, "rows": 500, "panel_chunks": 3, "series_forecast": 3}
    full = QuantileGBMForecaster(max_iter=5, horizon=14, max_train_rows=500).fit(frame).predict(14)
    same = full[full["unique_id"].isin(forecast["unique_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(forecast, same)  # the same model, fewer series predicted


def test_vectorised_seasonal_naive_matches_the_rule_per_series():
    frame = long_frame(n_series=3, days=120)
    frame = frame[
        ~((frame["unique_id"] == "s1") & (frame["ds"] < frame["ds"].min() + pd.Timedelta(days=100)))
    ]
    model = SeasonalNaiveForecaster(season_length=7, residual_window=35).fit(frame)
    forecast = model.predict(10).set_index(["unique_id", "ds"])
    for uid, group in frame.groupby("unique_id"):
        y = group["y"].to_numpy()[-42:]
        steps = np.arange(1, 11)
        seasons = -(-steps // 7)
        point = y[len(y) - 1 + steps - 7 * seasons]
        bounds = np.array([np.quantile(y[7 * k :] - y[: -7 * k], [0.1, 0.9]) for k in seasons])
        expected = np.sort(
            np.clip(np.column_stack([point + bounds[:, 0], point, point + bounds[:, 1]]), 0, 100)
        )
        np.testing.assert_allclose(forecast.loc[uid][["p10", "p50", "p90"]].to_numpy(), expected)


def test_long_frame_check_sorts_unsorted_input_and_keeps_sorted_input_as_is():
    frame = long_frame(n_series=3, days=20)
    checked = check_long_frame(frame)
    pd.testing.assert_frame_equal(check_long_frame(frame.sample(frac=1, random_state=0)), checked)
    assert checked["unique_id"].is_monotonic_increasing and len(checked) == len(frame)
    with pytest.raises(ValueError, match="without gaps"):
        check_long_frame(frame.drop(index=5))


def test_selection_never_picks_a_model_for_a_series_it_did_not_forecast():
    # prophet (budgeted) backtested only server a; it is far better there, but b and c must not get it, nor
    # d (no backtest of its own: its group's choice among the models backtested on every server)
    rows = [("a", "prophet", 0.5), ("a", "seasonal_naive", 1.0), ("a", "ensemble", 0.9)]
    rows += [(s, m, v) for s in "bc" for m, v in (("seasonal_naive", 1.0), ("ensemble", 0.9))]
    metrics = pd.DataFrame(
        [(s, "cpu_p95", m, fold, v) for s, m, v in rows for fold in (0, 1)],
        columns=["server_id", "metric", "model", "fold", "mase"],
    ).assign(archetype="web", coverage=0.8)
    model_input = pd.DataFrame(
        {"server_id": list("abcd"), "metric": "cpu_p95", "archetype": "web", "history_days": 400}
    )
    model_input["unique_id"] = model_input["server_id"] + "|cpu_p95"
    plan = {"origin_offsets_days": [200, 100], "horizon": 90}
    chosen = select_models(metrics, model_input, plan, "mase", 0.8, 0.05, 0.65, 28).set_index("server_id")
    assert chosen.loc["a", "model"] == "prophet"
    assert set(chosen.loc[["b", "c", "d"], "model"]) == {"ensemble"}
    assert chosen.loc["d", "basis"] == "group"


def test_the_leaderboard_records_what_a_budgeted_model_was_fitted_on():
    clean, inventory = clean_tables(n_servers=3, days=120)
    model_input = prepare_model_input(clean, inventory)
    calendar = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
    settings = {"yearly_seasonality": False, "fit_window_days": 60, "n_jobs": 1, "max_series": 1}
    fitted, summary = fit_forecaster(
        model_input, enabled=True, kind="prophet", hyperparameters=settings, horizon=7, metric_jobs=1,
        min_history_days=28, **calendar,
    )  # fmt: skip
    assert summary["fitted_on"] == {"series": 4, "series_skipped": 8, "rows": 240}  # one series per metric
    assert sum(len(f.models_) for f in fitted.values()) == 4
    plan = plan_backtest(model_input, 7, 1, 0.2, 35, 7, 1)
    backtest, stats = backtest_forecaster(
        model_input, plan, enabled=True, kind="prophet", hyperparameters=settings, backtest_folds=1,
        metric_jobs=1, **calendar,
    )  # fmt: skip
    assert backtest["unique_id"].nunique() == stats["series"] == 4  # the series fitted, not those given
    plan = {"reason": "no folds", "origin_offsets_days": [], "horizon": 0}
    selection = pd.DataFrame(columns=["server_id", "metric", "model", "basis"])
    shards = {"shards": 1, "servers": {"shard-1-of-1": 3}}
    board = rank_models(
        pd.DataFrame(), selection, plan, "mase", 0.8, 0.05, 0.65, shards, {"shard-1-of-1": summary}
    )
    assert board["fitted_on"] == {"prophet": summary["fitted_on"]}


def test_model_input_is_categorical_and_fills_each_series_on_its_own():
    clean, inventory = clean_tables(n_servers=3, days=60)
    clean = clean.sample(frac=1.0, random_state=0)  # row order must not matter
    late = (clean["server_id"] == "srv-0002") & (clean["date"] < "2023-01-20")
    clean.loc[late, "value"] = np.nan  # onboarded late: the series starts on its first clean day
    clean.loc[(clean["server_id"] == "srv-0001") & (clean["metric"] == "disk_io_p95"), "value"] = np.nan
    imputed = (clean["server_id"] == "srv-0000") & (clean["metric"] == "memory_p95") & (
        clean["date"] == "2023-01-10"
    )
    clean.loc[imputed, "is_imputed"] = True
    model_input = prepare_model_input(clean, inventory)
    for column in ("unique_id", "server_id", "metric", "archetype"):
        assert isinstance(model_input[column].dtype, pd.CategoricalDtype)
    assert "srv-0001|disk_io_p95" not in set(model_input["unique_id"])  # no clean value: dropped
    expected = clean.assign(unique_id=clean["server_id"] + "|" + clean["metric"])
    for uid, series in expected.sort_values(["unique_id", "date"]).groupby("unique_id"):
        clean_days = series.loc[series["value"].notna() & ~series["is_imputed"], "date"]
        if clean_days.empty:
            continue
        rows = series[series["date"].between(clean_days.min(), clean_days.max())]
        got = model_input[model_input["unique_id"] == uid]
        assert got["ds"].tolist() == rows["date"].tolist()
        np.testing.assert_allclose(got["y"], rows["value"].interpolate(limit_direction="both"))
        assert (got["history_days"] == len(clean_days)).all()
        assert got["is_observed"].tolist() == rows["value"].notna().tolist()
    assert model_input.groupby("unique_id", observed=True)["ds"].min()["srv-0002|cpu_p95"] == pd.Timestamp(
        "2023-01-20"
    )


def test_a_large_fleet_backtests_a_stable_sample_and_the_rest_gets_its_group_choice():
    clean, inventory = clean_tables(n_servers=6, days=150)
    model_input = prepare_model_input(clean, inventory)
    plan = plan_backtest(model_input, 7, 2, 0.2, 35, 7, 1, max_servers=4)
    assert plan["fleet_servers"] == 6 and len(plan["servers"]) == 4 == len(set(plan["servers"]))
    reordered = prepare_model_input(clean.iloc[::-1], inventory)
    assert plan_backtest(reordered, 7, 2, 0.2, 35, 7, 1, max_servers=4)["servers"] == plan["servers"]
    assert plan_backtest(model_input, 7, 2, 0.2, 35, 7, 1, max_servers=6)["servers"] is None
    calendar = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
    backtest, _ = backtest_forecaster(
        model_input, plan, enabled=True, kind="seasonal_naive", hyperparameters={}, backtest_folds=None,
        metric_jobs=1, **calendar,
    )  # fmt: skip
    assert set(backtest["unique_id"].str.split("|").str[0]) == set(plan["servers"])
    metrics = backtest.assign(server_id=backtest["unique_id"].str.split("|").str[0]).merge(
        inventory[["server_id", "archetype"]]
    )[["server_id", "metric", "archetype", "model", "fold"]].drop_duplicates().assign(mase=1.0, coverage=0.8)
    chosen = select_models(metrics, model_input, plan, "mase", 0.8, 0.05, 0.65, 28)
    assert len(chosen) == model_input["unique_id"].nunique()
    basis = chosen.groupby("server_id")["basis"].agg(set)
    assert all(basis[s] == {"backtest"} for s in plan["servers"])
    assert all(basis[s] <= {"group", "no_backtest"} for s in set(basis.index) - set(plan["servers"]))


def test_a_series_budget_is_fleet_wide_however_the_fleet_is_sharded():
    clean, inventory = clean_tables(n_servers=8, days=80)  # 4 servers in each of 2 shards
    model_input = prepare_model_input(clean, inventory)
    calendar = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
    settings = {"yearly_seasonality": False, "fit_window_days": 60, "n_jobs": 1, "max_series": 2}
    for shards in (1, 2):
        parts, shard_plan = split_model_input(model_input, shards, 2500)
        _, summaries = fit_shards(
            parts, shard_plan, shard=None, shard_workers=1, enabled=True, kind="prophet",
            hyperparameters=settings, horizon=7, metric_jobs=1, min_history_days=28, **calendar,
        )  # fmt: skip
        fitted = sum(s.get("fitted_on", {}).get("series", 0) for s in summaries.values())
        assert fitted == 2 * len(METRICS)  # 2 series per metric across the fleet, split over the shards


def test_a_model_is_skipped_on_a_fleet_larger_than_its_max_fleet_servers():
    clean, inventory = clean_tables(n_servers=3, days=120)
    model_input = prepare_model_input(clean, inventory)
    parts, shard_plan = split_model_input(model_input, 1, 2500)
    plan = plan_backtest(model_input, 7, 1, 0.2, 35, 7, 1)
    calendar = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
    run = {"shard": None, "shard_workers": 1, "enabled": True, "kind": "seasonal_naive",
           "hyperparameters": {}, "metric_jobs": 1, **calendar}  # fmt: skip
    for limit, runs in ((3, True), (2, False)):
        backtest, stats = backtest_shards(
            parts, shard_plan, plan, max_fleet_servers=limit, backtest_folds=None, **run
        )
        fitted, _ = fit_shards(
            parts, shard_plan, max_fleet_servers=limit, horizon=7, min_history_days=28, **run
        )
        assert bool(len(backtest["shard-1-of-1"])) == runs == bool(fitted["shard-1-of-1"])
        assert ("skipped" in stats["shard-1-of-1"]) != runs
    selection, plan = pd.DataFrame(columns=["model", "basis"]), {"reason": "-"}
    board = rank_models(pd.DataFrame(), selection, plan, "mase", 0.8, 0.05, 0.65, shard_plan, stats)
    assert board["skipped"] == {"seasonal_naive": "fleet of 3 servers > max_fleet_servers 2"}


def test_model_input_is_the_same_from_categorical_keys_in_file_order():
    clean, inventory = clean_tables(n_servers=12, days=60)
    servers = list(reversed(clean["server_id"].unique()))  # categories not in text order, as etl's shards
    categorical = clean.assign(
        server_id=pd.Categorical(clean["server_id"], categories=servers),
        metric=clean["metric"].astype("category"),
    )
    expected = prepare_model_input(clean, inventory)
    pd.testing.assert_frame_equal(prepare_model_input(categorical, inventory), expected)
