"""Fallback forecaster for series too short for the other models: the recent mean with a wide interval."""

from statistics import NormalDist

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from capacity_forecaster.models.base import BaseForecaster, check_long_frame, finalise_quantiles, future_dates


class RecentMeanForecaster(BaseForecaster):
    """Forecasts the mean of each series' last ``window_days`` days, flat, with a deliberately wide interval.

    For a server onboarded days ago there is no trend, season or backtest to trust. p10/p90 are normal
    quantiles around the mean with standard deviation ``max(sd, min_spread) * sqrt(1 + h / n)``: the
    day-to-day spread of the whole history (at least ``min_spread`` points), growing with the step ``h``
    relative to the ``n`` days seen, so the interval says how little is known.

    Args:
        window_days: Trailing days averaged into p50.
        min_spread: Smallest standard deviation assumed (points).
        alias: Model name in forecast tables.
    """

    def __init__(self, *, window_days: int = 7, min_spread: float = 2.0, alias: str = "fallback"):
        self.window_days = window_days
        self.min_spread = min_spread
        self.alias = alias

    def fit(self, df: pd.DataFrame) -> "RecentMeanForecaster":
        """Stores each series' recent mean, spread and length."""
        frame = check_long_frame(df)
        groups = frame.groupby("unique_id", sort=True)["y"]
        recent = frame.groupby("unique_id", sort=True).tail(self.window_days)
        self.mean_ = recent.groupby("unique_id", sort=True)["y"].mean()
        self.spread_ = np.maximum(groups.std(ddof=1).fillna(0.0), self.min_spread)
        self.days_ = groups.size()
        self.last_dates_ = frame.groupby("unique_id", sort=True)["ds"].max()
        return self

    def predict(self, h: int) -> pd.DataFrame:
        """Returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day."""
        check_is_fitted(self)
        out = future_dates(self.last_dates_, h)
        ids = out["unique_id"]
        mean = ids.map(self.mean_).to_numpy()
        spread = ids.map(self.spread_).to_numpy() * np.sqrt(1 + out["step"] / ids.map(self.days_)).to_numpy()
        z = NormalDist().inv_cdf(0.9)
        out["p10"], out["p50"], out["p90"] = mean - z * spread, mean, mean + z * spread
        return finalise_quantiles(out.drop(columns="step"))
