"""The interface every forecaster implements, and helpers shared by the model classes.

Forecasters take long frames ``unique_id, ds, y`` (one row per series and day, no gaps, no NaN) and
``predict(h)`` returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day.
"""

import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.base import BaseEstimator

from capacity_forecaster.calendar import calendar_features
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

    Linear in rows when the frame is already sorted (as model input is): ids are factorised, not sorted.

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
    codes, uniques = pd.factorize(df["unique_id"], sort=False)
    names = pd.Index(uniques).astype(str)
    if not names.is_unique:  # e.g. 1 and "1": let the sort below merge them as the text says
        codes, names = pd.factorize(names[codes], sort=False)
        names = pd.Index(names)
    rank = np.empty(len(names), dtype="int64")
    rank[names.argsort(kind="stable")] = np.arange(len(names))
    codes = rank[codes]
    ds = pd.to_datetime(df["ds"]).to_numpy()
    order = None
    if (np.diff(codes) < 0).any():
        order = np.lexsort((ds, codes))
        codes, ds = codes[order], ds[order]
    y = df["y"].to_numpy(dtype="float64")
    same = codes[1:] == codes[:-1]
    if (np.diff(ds)[same] != np.timedelta64(1, "D")).any():
        raise ValueError("every series in the long frame must be daily without gaps or duplicate days")
    ids = pa.array(np.asarray(names.sort_values(), dtype=object), pa.large_string())
    return pd.DataFrame(
        {
            "unique_id": pd.array(pc.take(ids, pa.array(codes)), dtype="str"),  # no per-row Python string
            "ds": ds,
            "y": y if order is None else y[order],
        }
    )


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


SEASONAL_TERMS: tuple[str, ...] = ("yearly", "quarter_end", "month_end")
"""Calendar terms a history may be too short to identify (see :func:`unidentified_terms`)."""

MIN_YEARLY_DAYS = 730
"""A yearly pattern is identifiable from two years of history: one year only repeats itself."""


def unidentified_terms(dates: pd.DatetimeIndex, calendar: dict) -> dict[str, bool]:
    """Which seasonal terms one history cannot identify; ``True`` means switch the term off.

    ``yearly``: fewer than :data:`MIN_YEARLY_DAYS` days from first to last day. ``quarter_end`` /
    ``month_end``: no day of the history lies in an end-of-quarter / month-end window of the calendar.

    Args:
        dates: The days of the history (one series, or several sharing these days).
        calendar: ``country, month_end_business_days, quarter_end_business_days`` (``params:calendar``).
    """
    days = pd.DatetimeIndex(dates)
    if days.empty:
        return dict.fromkeys(SEASONAL_TERMS, True)
    features = calendar_features(days, **calendar)
    return {
        "yearly": (days.max() - days.min()).days + 1 < MIN_YEARLY_DAYS,
        "quarter_end": not features["is_end_of_quarter"].any(),
        "month_end": not (features["is_month_end"] & ~features["is_end_of_quarter"]).any(),
    }


def terms_off_per_series(frame: pd.DataFrame, calendar: dict, terms: tuple[str, ...]) -> pd.DataFrame:
    """:func:`unidentified_terms` of every (gap-free) series of a long frame, for the model's ``terms``.

    Returns:
        One boolean row per ``unique_id`` (index, sorted) with one column per term in ``terms``.
    """
    spans = frame.groupby("unique_id", sort=True)["ds"].agg(["min", "max"])
    days = pd.date_range(spans["min"].min(), spans["max"].max(), freq="D")
    features = calendar_features(days, **calendar)
    eoq = features["is_end_of_quarter"].to_numpy()
    in_window = {"quarter_end": eoq, "month_end": features["is_month_end"].to_numpy() & ~eoq}
    first = ((spans["min"] - days[0]).dt.days).to_numpy()
    last = ((spans["max"] - days[0]).dt.days).to_numpy()
    table = pd.DataFrame({"yearly": last - first + 1 < MIN_YEARLY_DAYS}, index=spans.index)
    for term, flags in in_window.items():
        seen = np.concatenate([[0], np.cumsum(flags)])
        table[term] = seen[last + 1] - seen[first] == 0
    return table[list(terms)].astype(bool)


def budget_series(spans: pd.DataFrame, max_series: int | None, min_days: int) -> pd.Index:
    """The ``unique_id``s a model forecasts when it may forecast at most ``max_series`` (sorted).

    Series with at least ``min_days`` days (yearly seasonality identifiable) come first, then the others;
    within each, the order is a stable hash of the id (CRC-32 of its text). The choice is a representative
    sample (the pooled per-archetype scores of ``choose_models`` stay unbiased), the same in every run and
    backtest fold (a fold cuts the same number of days from every series), and spreads over the fleet.

    Args:
        spans: One row per ``unique_id`` (index) with the series' day count in ``days``.
        max_series: Budget (``None``: every series).
        min_days: History a series needs to come first.
    """
    if max_series is not None and max_series < 1:
        raise ValueError(f"max_series must be >= 1 or None, got {max_series}")
    if max_series is None or len(spans) <= max_series:
        return spans.index.sort_values()
    key = pd.DataFrame(
        {
            "short": spans["days"].to_numpy() < min_days,
            "hash": [zlib.crc32(str(uid).encode("utf-8")) for uid in spans.index],
            "uid": spans.index.astype(str),
        }
    )
    order = key.sort_values(["short", "hash", "uid"], kind="stable").index[:max_series]
    return spans.index[order].sort_values()
