"""Contract, output and leakage tests of every forecaster on a tiny fleet."""

import numpy as np
import pandas as pd
import pytest
from prophet.serialize import model_from_json
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from capacity_forecaster.models import (
    ChangepointRegressionForecaster,
    GradientBoostingForecaster,
    ProphetForecaster,
    QuantileGBMForecaster,
    RandomForestForecaster,
    RecentMeanForecaster,
    SeasonalNaiveForecaster,
)
from capacity_forecaster.models.base import terms_off_per_series, unidentified_terms
from capacity_forecaster.models.trees import FEATURES, TERM_FEATURES, _Panel
from tests.models.sample_series import long_frame

H = 14
_SMALL_TREES = {"horizon": H, "max_train_rows": 1500, "train_window_days": 150}
MODELS = {
    "seasonal_naive": lambda: SeasonalNaiveForecaster(residual_window=70),
    "random_forest": lambda: RandomForestForecaster(n_estimators=10, max_depth=4, **_SMALL_TREES),
    "gradient_boosting": lambda: GradientBoostingForecaster(n_estimators=10, **_SMALL_TREES),
    "quantile_gbm": lambda: QuantileGBMForecaster(
        max_iter=10, max_leaf_nodes=8, min_samples_leaf=10, **_SMALL_TREES
    ),
    "quantile_gbm_quantile_loss": lambda: QuantileGBMForecaster(
        intervals="quantile", max_iter=10, max_leaf_nodes=8, min_samples_leaf=10, **_SMALL_TREES
    ),
    "prophet": lambda: ProphetForecaster(yearly_seasonality=False, fit_window_days=120, n_jobs=1),
    "changepoint_regression": lambda: ChangepointRegressionForecaster(horizon=H),
    "fallback": RecentMeanForecaster,
}


def _frame(name: str) -> pd.DataFrame:
    frame = long_frame(n_series=3, days=200)
    # Prophet fits one model per series: keep its tests to 2 series.
    return frame[frame["unique_id"].isin(["s0", "s2"])] if name == "prophet" else frame


@pytest.fixture(params=sorted(MODELS), scope="module")
def fitted(request):
    name = request.param
    frame = _frame(name)
    model = MODELS[name]()
    return name, frame, model, model.fit(frame)


def test_fit_returns_self(fitted):
    _, _, model, result = fitted
    assert result is model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_predict_before_fit_raises(name):
    with pytest.raises(NotFittedError):
        MODELS[name]().predict(H)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_clone_keeps_params(name):
    model = MODELS[name]()
    assert clone(model).get_params() == model.get_params()


def test_refit_equals_fresh_fit(fitted):
    name, frame, model, _ = fitted
    other = long_frame(n_series=3, days=200, seed=5)
    model.fit(other[other["unique_id"].isin(frame["unique_id"].unique())])  # a second fit starts from scratch
    refit = model.fit(frame).predict(H)
    fresh = MODELS[name]().fit(frame).predict(H)
    pd.testing.assert_frame_equal(refit, fresh)


def test_forecast_dates_quantile_order_and_bounds(fitted):
    _, frame, model, _ = fitted
    forecast = model.predict(H)
    assert list(forecast.columns) == ["unique_id", "ds", "p10", "p50", "p90"]
    assert len(forecast) == H * frame["unique_id"].nunique()
    first = forecast.groupby("unique_id")["ds"].min()
    last_seen = frame.groupby("unique_id")["ds"].max()
    assert (first == last_seen + pd.Timedelta(days=1)).all()
    values = forecast[["p10", "p50", "p90"]]
    assert (values.ge(0) & values.le(100)).all().all()
    assert (forecast["p10"] <= forecast["p50"]).all() and (forecast["p50"] <= forecast["p90"]).all()
    assert (forecast["p90"] > forecast["p10"]).mean() > 0.5  # a real interval, not a point


def test_seasonal_naive_repeats_last_week():
    frame = long_frame(n_series=1, days=50)
    forecast = SeasonalNaiveForecaster(residual_window=28).fit(frame).predict(10)
    last_week = frame["y"].to_numpy()[-7:]
    np.testing.assert_allclose(forecast["p50"].to_numpy(), np.concatenate([last_week, last_week[:3]]))


def test_direct_models_reject_steps_beyond_their_horizon():
    model = QuantileGBMForecaster(max_iter=5, **_SMALL_TREES).fit(long_frame())
    with pytest.raises(ValueError, match="beyond the horizon"):
        model.predict(H + 1)


def test_quantile_gbm_rejects_an_unknown_interval_method():
    with pytest.raises(ValueError, match="intervals must be 'residual' or 'quantile'"):
        QuantileGBMForecaster(intervals="bootstrap", max_iter=5, **_SMALL_TREES).fit(long_frame())


def test_quantile_gbm_residual_intervals_come_from_one_point_model():
    model = QuantileGBMForecaster(max_iter=10, **_SMALL_TREES).fit(long_frame())
    assert list(model.estimators_) == ["p50"]  # one boosting model, not one per quantile
    q = model.residual_quantiles_
    assert q.shape == (5, 2) and (q[:, 0] < 0).all() and (q[:, 1] > 0).all()  # p10 below, p90 above p50


def test_frames_with_gaps_or_nan_are_rejected():
    frame = long_frame(n_series=1, days=30)
    with pytest.raises(ValueError, match="NaN"):
        SeasonalNaiveForecaster().fit(frame.assign(y=frame["y"].where(frame.index != 5)))
    with pytest.raises(ValueError, match="without gaps"):
        SeasonalNaiveForecaster().fit(frame.drop(index=10))


def test_direct_features_use_nothing_after_the_origin():
    frame = long_frame(n_series=2, days=400)
    calendar = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
    origin = 370
    changed = frame.copy()
    after = changed["ds"] > changed["ds"].min() + pd.Timedelta(days=origin)
    changed.loc[after, "y"] = 99.0
    rows, steps = np.repeat([0, 1], 90), np.tile(np.arange(1, 91), 2)
    origins = np.full(len(rows), origin)
    X, level = _Panel(frame, 90, calendar).design(rows, origins, steps)
    X_changed, level_changed = _Panel(changed, 90, calendar).design(rows, origins, steps)
    np.testing.assert_array_equal(X, X_changed)
    np.testing.assert_array_equal(level, level_changed)
    assert X.shape == (180, len(FEATURES))


CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
NO_QUARTER_END = pd.Timestamp("2023-04-03")  # 77 days from here end on 2023-06-18, before June's last week


def test_terms_a_history_cannot_identify_are_switched_off():
    short = pd.date_range(NO_QUARTER_END, periods=77)
    assert unidentified_terms(short, CALENDAR) == {"yearly": True, "quarter_end": True, "month_end": False}
    two_years = pd.date_range("2022-01-01", periods=730)
    assert unidentified_terms(two_years, CALENDAR) == {
        "yearly": False,
        "quarter_end": False,
        "month_end": False,
    }
    assert unidentified_terms(pd.date_range("2023-05-01", periods=20), CALENDAR)["month_end"]  # May 1-20
    frame = pd.concat([long_frame(1, 77, start=NO_QUARTER_END), long_frame(1, 800).assign(unique_id="long")])
    table = terms_off_per_series(frame, CALENDAR, ("yearly", "quarter_end"))
    assert table.to_dict(orient="index") == {"long": {"yearly": False, "quarter_end": False},
                                             "s0": {"yearly": True, "quarter_end": True}}  # fmt: skip


def test_prophet_leaves_out_yearly_seasonality_and_unseen_calendar_windows():
    frame = long_frame(n_series=1, days=77, start=NO_QUARTER_END)
    model = ProphetForecaster(fit_window_days=120, n_jobs=1).fit(frame)  # yearly_seasonality=True asked
    assert model.seasonal_terms_off_.loc["s0"].to_dict() == {
        "yearly": True,
        "quarter_end": True,
        "month_end": False,
    }
    fitted = model_from_json(model.models_["s0"][0])
    assert "yearly" not in fitted.seasonalities and "weekly" in fitted.seasonalities
    assert set(fitted.extra_regressors) == {"is_month_end"}
    assert len(model.predict(90)) == 90  # the forecast crosses a quarter-end without a KeyError


def test_trees_zero_the_features_of_unidentified_terms_and_train_the_steps_a_short_history_has():
    frame = long_frame(n_series=2, days=77, start=NO_QUARTER_END)
    model = QuantileGBMForecaster(max_iter=5, horizon=90, max_train_rows=1500).fit(frame)
    assert model.max_step_ == 77 - 28  # 90-day steps cannot be learned from 77 days
    assert model.seasonal_terms_off_["quarter_end"].all() and model.seasonal_terms_off_["yearly"].all()
    X = model.origin_features_["X"]
    for name in (*TERM_FEATURES["quarter_end"], *TERM_FEATURES["yearly"]):
        assert (X[:, FEATURES.index(name)] == 0).all()
    assert X[:, FEATURES.index("is_month_end")].any()  # month-ends were seen: kept
    assert X[:, FEATURES.index("h")].max() == model.max_step_
    assert len(model.predict(90)) == 180


def test_trees_fit_a_panel_shorter_than_their_eight_week_weekday_profile():
    frame = long_frame(n_series=2, days=40)
    forecast = QuantileGBMForecaster(max_iter=5, horizon=12, max_train_rows=500).fit(frame).predict(12)
    assert len(forecast) == 24 and forecast["p50"].notna().all()


def test_changepoint_regression_without_a_quarter_end_has_no_quarter_end_effect():
    frame = long_frame(n_series=2, days=77, start=NO_QUARTER_END)
    model = ChangepointRegressionForecaster(horizon=90).fit(frame)
    assert model.seasonal_terms_off_["quarter_end"].all() and not model.seasonal_terms_off_["month_end"].any()
    assert model.coefficients_["end_of_quarter"].isna().all()
    assert model.coefficients_["month_end"].notna().all()
    forecast = model.predict(90)
    late_june = forecast[forecast["ds"].between("2023-06-26", "2023-06-30")]  # quarter-end, not in history
    assert len(late_june) == 10 and forecast["p50"].notna().all()


def test_fallback_forecasts_the_recent_mean_with_an_interval_that_widens():
    frame = long_frame(n_series=1, days=10)
    forecast = RecentMeanForecaster(window_days=7).fit(frame).predict(30)
    assert np.allclose(forecast["p50"], frame["y"].to_numpy()[-7:].mean())
    width = (forecast["p90"] - forecast["p10"]).to_numpy()
    assert width[0] > 2 * 1.28 * 2.0 - 1e-9 and (np.diff(width) > 0).all()
