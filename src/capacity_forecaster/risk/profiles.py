"""Utilisation profiles: current level, trend, spread, weekly shape and period-end uplifts per series."""

import logging

import numpy as np
import pandas as pd

from capacity_forecaster.calendar import calendar_features

from .tables import day_numbers, grouped_means, require_columns, series_codes

logger = logging.getLogger(__name__)

CLEAN_COLUMNS = ("server_id", "metric", "date", "value")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def build_profiles(  # noqa: PLR0914, PLR0915, PLR0917 - one argument per parameter leaf
    clean_server_metrics: pd.DataFrame,
    profile_days: int,
    current_window_days: int,
    trend_window_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Summarises the recent history of every server and metric: current level, trend and utilisation shape.

    Args:
        clean_server_metrics: The clean long table (``server_id``, ``metric``, ``date``, ``value``).
        profile_days: Days of history behind the level, spread and shape figures. Windows end on each series'
            last day; only rows within the longest window of the fleet's last day are read, so a series that
            stopped reporting before that gets no profile.
        current_window_days: The current P95 level is the mean of this many last days.
        trend_window_days: The monthly growth trend is the least-squares slope over this many last days.
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window length (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).

    Returns:
        One row per server and metric: ``server_id``, ``metric``, ``last_date``, ``current_level``,
        ``monthly_trend`` (points per 30 days), ``level`` (mean over the profile window) and ``spread``
        (standard deviation around the weekday means: noise, not the weekly pattern),
        ``weekday_<mon..sun>`` (mean of each weekday / mean of the seven),
        ``month_end_uplift`` and ``quarter_end_uplift`` (points above ordinary business days in the
        month-end-only and end-of-quarter windows; NaN when the history has no such day).
    """
    require_columns(clean_server_metrics, CLEAN_COLUMNS, "clean_server_metrics")
    if min(profile_days, current_window_days, trend_window_days) < 1:
        raise ValueError("profile_days, current_window_days and trend_window_days must be >= 1")
    if clean_server_metrics.empty:
        raise ValueError("clean_server_metrics is empty: run the etl pipeline first")
    # Only the last days before the analysis date matter; cutting first keeps years of history cheap.
    all_days = day_numbers(clean_server_metrics["date"])
    values = clean_server_metrics["value"].to_numpy(dtype=float)
    rows = (
        all_days > all_days.max() - max(profile_days, current_window_days, trend_window_days)
    ) & ~np.isnan(values)
    codes, keys = series_codes(clean_server_metrics["server_id"][rows], clean_server_metrics["metric"][rows])
    n = len(keys)
    day = all_days[rows]
    value = values[rows]
    last_day = np.full(n, day.min())
    np.maximum.at(last_day, codes, day)
    age = last_day[codes] - day  # 0 = last day

    first_day = day.min()
    calendar = calendar_features(
        pd.date_range(pd.Timestamp(first_day, unit="D"), periods=day.max() - first_day + 1, freq="D"),
        country,
        month_end_business_days,
        quarter_end_business_days,
    )
    where = day - first_day
    quarter_end = calendar["is_end_of_quarter"].to_numpy()[where]
    month_end = calendar["is_month_end"].to_numpy()[where] & ~quarter_end
    recent = age < profile_days
    weekday = calendar["day_of_week"].to_numpy()[where]
    # Period-end windows are business days, so they are compared with ordinary business days:
    # 0 = outside the profile or a weekend, 1 = ordinary business day, 2 = month-end only, 3 = end of quarter
    period = np.where(recent & (weekday < 5), 1 + month_end + 2 * quarter_end, 0)
    periods = grouped_means(codes, value, period, n, 4)
    ordinary = periods[:, 1]
    in_profile = grouped_means(codes, value, recent.astype(np.int64), n, 2)[:, 1]
    squares = grouped_means(codes, value**2, recent.astype(np.int64), n, 2)[:, 1]
    by_weekday = np.where(recent, weekday + 1, 0)
    weekly = grouped_means(codes, value, by_weekday, n, 8)[:, 1:]
    # spread = standard deviation around each weekday's mean (noise, not the weekly pattern)
    weekday_share = np.bincount(codes * 8 + by_weekday, minlength=n * 8).reshape(n, 8)[:, 1:]
    with np.errstate(all="ignore"):
        weekday_share = weekday_share / weekday_share.sum(axis=1, keepdims=True)
        explained = np.nansum(weekday_share * weekly**2, axis=1)
    current = grouped_means(codes, value, (age < current_window_days).astype(np.int64), n, 2)[:, 1]
    out = keys.assign(
        last_date=pd.Series(last_day.astype("datetime64[D]").astype("datetime64[ns]")),
        current_level=current,
    )
    trend_mask = age < trend_window_days
    x, y, tc = -age[trend_mask].astype(float), value[trend_mask], codes[trend_mask]
    sums = {
        name: np.bincount(tc, weights=w, minlength=n)
        for name, w in (("n", None), ("x", x), ("y", y), ("xx", x * x), ("xy", x * y))
    }
    with np.errstate(all="ignore"):
        denominator = sums["n"] * sums["xx"] - sums["x"] ** 2
        slope = (sums["n"] * sums["xy"] - sums["x"] * sums["y"]) / denominator
        out["monthly_trend"] = np.where(denominator > 0, slope * 30.0, np.nan)
        out["level"] = in_profile
        out["spread"] = np.sqrt(np.maximum(squares - explained, 0.0))
        weekly_mean = np.nanmean(weekly, axis=1, keepdims=True)
        shape = np.where(weekly_mean > 1.0, weekly / weekly_mean, 1.0)  # flat for series that are ~0 %
    for d, name in enumerate(WEEKDAYS):
        out[f"weekday_{name}"] = np.where(np.isnan(shape[:, d]), 1.0, shape[:, d])
    out["month_end_uplift"] = periods[:, 2] - ordinary
    out["quarter_end_uplift"] = periods[:, 3] - ordinary
    for column, window in (("month_end_uplift", "month-end"), ("quarter_end_uplift", "end-of-quarter")):
        missing = out[column].isna()
        if missing.any():
            logger.warning(
                "%d of %d series have no %s business day (or no ordinary one) in their profile window: "
                "%s is NaN for them",
                missing.sum(),
                n,
                window,
                column,
            )
    logger.info(
        "Profiled %d series of %d servers over up to %d days", n, out["server_id"].nunique(), profile_days
    )
    return out
