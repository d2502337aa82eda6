"""Contract, output and leakage tests of every forecaster on a tiny fleet."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from capacity_forecaster.models import (
    ChangepointRegressionForecaster,
    GradientBoostingForecaster,
    ProphetForecaster,
    QuantileGBMForecaster,
    RandomForestForecaster,
    SeasonalNaiveForecaster,
)
from capacity_forecaster.models.trees import FEATURES, _Panel
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
