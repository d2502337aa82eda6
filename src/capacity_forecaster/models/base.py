"""The interface every forecaster implements, and helpers shared by the model classes.

Forecasters take long frames ``unique_id, ds, y`` (one row per series and day, no gaps, no NaN) and
``predict(h)`` returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day.
"""

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from capacity_forecaster.schema import QUANTILES

QUANTILE_LEVELS: dict[str, float] = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
"""Probability level of each quantile column in :data:`capacity_forecaster.schema.QUANTILES`."""

LOWER_BOUND, UPPER_BOUND = 0.0, 100.0
"""Utilisation is a percentage: every forecast is clipped to this range."""


class BaseForecaster(BaseEstimator):
    """Common interface: ``fit(df) -> self`` and ``predict(h) -> unique_id, ds, p10, p50, p90``."""

    alias: str = "base"

    def fit(self, df: pd.DataFrame) -> "BaseForecaster":  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, h: int) -> pd.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError


def check_long_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Validates a long frame and returns it sorted by ``unique_id, ds`` (a new frame).

    Raises:
        ValueError: On missing columns, NaN targets or a series with gaps or duplicate days.
    """
    missing = {"unique_id", "ds", "y"} - set(df.columns)
    if missing:
        raise ValueError(f"long frame is missing columns {sorted(missing)}")
    if df.empty:
        raise ValueError("long frame is empty")
    if df["y"].isna().any():
        raise ValueError("long frame has NaN in y; fill or drop gaps before fitting")
    out = df[["unique_id", "ds", "y"]].sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
    out["unique_id"] = out["unique_id"].astype(str)
    out["ds"] = pd.to_datetime(out["ds"])
    out["y"] = out["y"].astype("float64")
    steps = out.groupby("unique_id", sort=False)["ds"].diff().dropna()
    if (steps != pd.Timedelta(days=1)).any():
        raise ValueError("every series in the long frame must be daily without gaps or duplicate days")
    return out


def future_dates(last_dates: pd.Series, h: int) -> pd.DataFrame:
    """Returns ``unique_id, ds, step`` for the ``h`` days after each series' last date (step 1..h)."""
    steps = np.arange(1, h + 1)
    ids = np.repeat(last_dates.index.to_numpy(), h)
    ds = np.repeat(last_dates.to_numpy(), h) + np.tile(steps, len(last_dates)) * np.timedelta64(1, "D")
    return pd.DataFrame(
        {"unique_id": ids, "ds": pd.DatetimeIndex(ds), "step": np.tile(steps, len(last_dates))}
    )


def finalise_quantiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Clips p10/p50/p90 to [0, 100] and sorts them per row, so p10 <= p50 <= p90 (a new frame)."""
    values = np.clip(frame[list(QUANTILES)].to_numpy(dtype="float64"), LOWER_BOUND, UPPER_BOUND)
    out = frame.copy()
    out[list(QUANTILES)] = np.sort(values, axis=1)
    return out
