"""Seasonal naive forecaster: next week repeats the last observed week (the MASE yardstick)."""

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from capacity_forecaster.models.base import BaseForecaster, check_long_frame, finalise_quantiles, future_dates


class SeasonalNaiveForecaster(BaseForecaster):
    """Forecasts ``y[t + h] = y[t + h - season_length * ceil(h / season_length)]``.

    p10/p90 are the empirical 10 % / 90 % quantiles of the same seasonal-lag error
    ``y[s] - y[s - season_length * k]`` over the last ``residual_window`` days of each series, so the interval
    widens with the number of seasons ``k`` it looks back.

    Args:
        season_length: Season in days (7 = weekly).
        residual_window: Days of history whose seasonal-lag errors give the interval.
        alias: Model name in forecast tables.
    """

    def __init__(self, *, season_length: int = 7, residual_window: int = 364, alias: str = "seasonal_naive"):
        self.season_length = season_length
        self.residual_window = residual_window
        self.alias = alias

    def fit(self, df: pd.DataFrame) -> "SeasonalNaiveForecaster":
        """Stores the tail of every series (the last season and the window for the error quantiles).

        ``history_`` is one row per series (sorted ids), right-aligned on its last day, NaN before its start.
        """
        frame = check_long_frame(df)
        sizes = frame.groupby("unique_id", sort=True)["ds"].size()
        if sizes.min() < self.season_length:
            raise ValueError(f"every series needs at least season_length={self.season_length} days")
        keep = self.residual_window + self.season_length
        row = np.repeat(np.arange(len(sizes)), sizes.to_numpy())
        col = keep - sizes.to_numpy()[row] + _position_in_series(sizes.to_numpy())
        inside = col >= 0
        self.history_ = np.full((len(sizes), keep), np.nan)
        self.history_[row[inside], col[inside]] = frame["y"].to_numpy()[inside]
        self.lengths_ = np.minimum(sizes.to_numpy(), keep)
        self.last_dates_ = frame.groupby("unique_id", sort=True)["ds"].max()
        return self

    def predict(self, h: int) -> pd.DataFrame:
        """Returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day."""
        check_is_fitted(self)
        out = future_dates(self.last_dates_, h)
        steps = np.arange(1, h + 1)
        seasons = -(-steps // self.season_length)  # ceil(h / season_length)
        y, keep = self.history_, self.history_.shape[1]
        point = y[:, keep - 1 + steps - self.season_length * seasons]
        lo, hi = np.zeros_like(point), np.zeros_like(point)
        for k in np.unique(seasons):
            lag = self.season_length * k
            errors = y[:, lag:] - y[:, :-lag]  # NaN where either day is before the series' start
            quantiles = np.zeros((len(y), 2))
            for length in np.unique(self.lengths_[self.lengths_ > lag]):  # one block per history length
                rows = self.lengths_ == length
                quantiles[rows] = np.quantile(errors[rows][:, keep - length :], [0.1, 0.9], axis=1).T
            lo[:, seasons == k], hi[:, seasons == k] = quantiles[:, :1], quantiles[:, 1:]
        out["p10"], out["p50"], out["p90"] = (point + lo).ravel(), point.ravel(), (point + hi).ravel()
        return finalise_quantiles(out.drop(columns="step"))


def _position_in_series(sizes: np.ndarray) -> np.ndarray:
    """0, 1, ..., n - 1 for each series of ``sizes`` rows, concatenated."""
    return np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
