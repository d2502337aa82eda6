"""ChangepointRegressionForecaster on constructed series: changepoints, calendar effects, intervals, spans."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.models import ChangepointRegressionForecaster

START = pd.Timestamp("2023-01-02")  # a Monday
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}


def _ar1(rng: np.random.Generator, n_series: int, days: int, phi: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise with standard deviation ``sd``, shape (series, days)."""
    noise = np.zeros((n_series, days))
    noise[:, 0] = rng.normal(0, sd, n_series)
    for t in range(1, days):
        noise[:, t] = phi * noise[:, t - 1] + rng.normal(0, sd * np.sqrt(1 - phi**2), n_series)
    return noise


def _signal(days: int, *, step_day: int | None = None, ramp_day: int | None = None, peak: float = 0.0):
    """Level 40, a weekend dip, ``peak`` points in end-of-quarter windows, an optional step or ramp."""
    dates = pd.date_range(START, periods=days, freq="D")
    cal = calendar_features(dates, **CALENDAR)
    t = np.arange(days)
    y = 40.0 - 8.0 * (cal["day_of_week"].to_numpy() >= 5) + peak * cal["is_end_of_quarter"].to_numpy()
    if step_day is not None:
        y = y + 15.0 * (t >= step_day)
    if ramp_day is not None:
        y = y + 30.0 * np.maximum(t - ramp_day, 0) / 365.0
    return dates, y


def _long(dates: pd.DatetimeIndex, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{i:03d}" for i in range(len(values))], len(dates)),
            "ds": np.tile(dates, len(values)),
            "y": np.asarray(values).ravel(),
        }
    )


def _fit_noisy(days: int, horizon: int, seed: int, **signal) -> tuple:
    """Fits on ``days`` of ``_signal`` + AR(1) noise; returns the model, the history and the true future."""
    dates, y = _signal(days + horizon, **signal)
    noise = _ar1(np.random.default_rng(seed), 1, days + horizon, phi=0.6, sd=1.5)
    history = _long(dates[:days], (y + noise)[:, :days])
    model = ChangepointRegressionForecaster(horizon=horizon, **CALENDAR).fit(history)
    return model, history, y[days:]


def test_a_level_shift_is_found_and_forecast_from_the_new_level():
    model, history, future = _fit_noisy(600, 60, seed=0, step_day=500)
    (found,) = model.changepoints_.itertuples()
    assert found.kind == "level" and abs((found.date - START - pd.Timedelta(days=500)).days) <= 7
    error = np.abs(model.predict(60)["p50"].to_numpy() - future).mean()
    plain = ChangepointRegressionForecaster(horizon=60, changepoints=[], **CALENDAR).fit(history)
    plain_error = np.abs(plain.predict(60)["p50"].to_numpy() - future).mean()
    assert error < 1.0 < plain_error  # a trend through the step extrapolates it as growth


def test_a_recent_step_is_not_extrapolated_as_a_steep_trend():
    model, _, future = _fit_noisy(600, 90, seed=7, step_day=600 - 24)
    assert model.changepoints_["kind"].tolist() == ["level"]
    forecast = model.predict(90)["p50"].to_numpy()
    assert np.abs(forecast - future).max() < 3.0  # as a kink it would climb ~20 points per month


def test_a_trend_that_starts_late_is_extrapolated_at_its_new_slope():
    model, history, future = _fit_noisy(700, 90, seed=1, ramp_day=500)
    assert model.changepoints_["kind"].tolist() == ["trend"]
    forecast = model.predict(90)["p50"].to_numpy()
    assert abs(forecast[-1] - future[-1]) < 3.0  # the ramp keeps climbing: 30 points a year
    assert forecast[-7:].mean() > history["y"].iloc[-28:].mean() + 5


def test_stationary_series_get_no_changepoint():
    days = 500
    dates, y = _signal(days)
    noise = np.random.default_rng(2).normal(0, 2.0, (20, days))
    model = ChangepointRegressionForecaster(**CALENDAR).fit(_long(dates, y + noise))
    assert len(model.changepoints_) <= 1  # 20 series x 136 candidates each: at most a rare false alarm


def test_end_of_quarter_peaks_and_weekday_shape_are_learned():
    days, horizon = 500, 90
    dates, y = _signal(days + horizon, peak=12.0)
    noise = np.random.default_rng(3).normal(0, 1.0, (1, days + horizon))
    model = ChangepointRegressionForecaster(horizon=horizon, **CALENDAR).fit(
        _long(dates[:days], (y + noise)[:, :days])
    )
    coefficients = model.coefficients_.iloc[0]
    assert coefficients["end_of_quarter"] == pytest.approx(12.0, abs=1.0)
    assert coefficients["weekday_6"] == pytest.approx(-8.0, abs=0.5)
    forecast = model.predict(horizon)["p50"].to_numpy()
    np.testing.assert_allclose(forecast, y[days:], atol=1.5)


def test_p10_p90_cover_about_eighty_percent_of_ar1_futures():
    days, horizon, n = 400, 60, 300
    dates, y = _signal(days + horizon)
    trend = np.random.default_rng(4).uniform(-5, 5, (n, 1)) * np.arange(days + horizon) / 365
    values = y + trend + _ar1(np.random.default_rng(5), n, days + horizon, phi=0.6, sd=2.0)
    model = ChangepointRegressionForecaster(horizon=horizon, **CALENDAR).fit(
        _long(dates[:days], values[:, :days])
    )
    forecast = model.predict(horizon)
    actual = values[:, days:].ravel()
    inside = (forecast["p10"].to_numpy() <= actual) & (actual <= forecast["p90"].to_numpy())
    assert 0.74 < inside.mean() < 0.86
    width = (forecast["p90"] - forecast["p10"]).to_numpy().reshape(n, horizon).mean(axis=0)
    assert width[0] < width[-1]  # the noise still to come grows with the step


def test_series_with_different_spans_are_fitted_as_if_alone():
    dates, y = _signal(300)
    noise = np.random.default_rng(6).normal(0, 1.0, (3, 300))
    frame = _long(dates, y + noise)
    ragged = frame[~((frame["unique_id"] == "s001") & (frame["ds"] < dates[50]))]  # starts later
    ragged = ragged[~((ragged["unique_id"] == "s002") & (ragged["ds"] > dates[280]))]  # ends earlier
    together = ChangepointRegressionForecaster(horizon=30, **CALENDAR).fit(
        ragged.sample(frac=1, random_state=0)
    )
    forecast = together.predict(30)
    for uid, series in ragged.groupby("unique_id"):
        alone = ChangepointRegressionForecaster(horizon=30, **CALENDAR).fit(series).predict(30)
        pd.testing.assert_frame_equal(forecast[forecast["unique_id"] == uid].reset_index(drop=True), alone)


def test_short_series_and_unknown_kinds_are_rejected():
    dates, y = _signal(10)
    with pytest.raises(ValueError, match="fewer than min_history_days=14 days"):
        ChangepointRegressionForecaster().fit(_long(dates, y[None, :]))
    dates, y = _signal(60)
    with pytest.raises(ValueError, match="unknown changepoint kinds"):
        ChangepointRegressionForecaster(changepoints=["seasonal"]).fit(_long(dates, y[None, :]))
