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
        """Stores the tail of every series (the last season and the window for the error quantiles)."""
        frame = check_long_frame(df)
        if frame.groupby("unique_id")["ds"].size().min() < self.season_length:
            raise ValueError(f"every series needs at least season_length={self.season_length} days")
        keep = self.residual_window + self.season_length
        self.history_ = {
            uid: group["y"].to_numpy()[-keep:] for uid, group in frame.groupby("unique_id", sort=True)
        }
        self.last_dates_ = frame.groupby("unique_id", sort=True)["ds"].max()
        return self

    def predict(self, h: int) -> pd.DataFrame:
        """Returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day."""
        check_is_fitted(self)
        out = future_dates(self.last_dates_, h)
        steps = np.arange(1, h + 1)
        seasons = -(-steps // self.season_length)  # ceil(h / season_length)
        p10, p50, p90 = [], [], []
        for uid in self.last_dates_.index:
            y = self.history_[uid]
            n = len(y)
            point = y[n - 1 + steps - self.season_length * seasons]
            lo, hi = np.zeros(h), np.zeros(h)
            for k in np.unique(seasons):
                lag = self.season_length * k
                errors = y[lag:] - y[:-lag] if n > lag else np.zeros(1)
                lo[seasons == k], hi[seasons == k] = np.quantile(errors, [0.1, 0.9])
            p10.append(point + lo)
            p50.append(point)
            p90.append(point + hi)
        out["p10"], out["p50"], out["p90"] = np.concatenate(p10), np.concatenate(p50), np.concatenate(p90)
        return finalise_quantiles(out.drop(columns="step"))
