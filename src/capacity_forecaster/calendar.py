"""Business calendar shared by the generator, ETL features, forecasting and risk flags.

Month-end and end-of-quarter windows are the last business days (Monday to Friday) of the month or
quarter, when batch jobs, reporting and billing runs push utilisation up.
"""

import holidays as holidays_lib
import numpy as np
import pandas as pd


def holiday_dates(country: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    """Returns the public holidays of ``country`` (ISO code, e.g. ``"US"``) between two dates inclusive."""
    years = range(pd.Timestamp(start).year, pd.Timestamp(end).year + 1)
    days = pd.DatetimeIndex(sorted(holidays_lib.country_holidays(country, years=years)))
    return days[(days >= pd.Timestamp(start).normalize()) & (days <= pd.Timestamp(end).normalize())]


def _business_days_to_period_end(dates: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Counts business days from each date (inclusive) to the last day of its month or quarter (inclusive)."""
    period_end = (dates.to_period(freq).end_time.normalize() + pd.Timedelta(days=1)).values
    return np.busday_count(dates.values.astype("datetime64[D]"), period_end.astype("datetime64[D]"))


def month_end_window(dates: pd.DatetimeIndex, business_days: int) -> np.ndarray:
    """Flags the last ``business_days`` business days of each month."""
    is_business_day = dates.day_of_week < 5
    return is_business_day & (_business_days_to_period_end(dates, "M") <= business_days)


def quarter_end_window(dates: pd.DatetimeIndex, business_days: int) -> np.ndarray:
    """Flags the last ``business_days`` business days of each calendar quarter."""
    is_business_day = dates.day_of_week < 5
    return is_business_day & (_business_days_to_period_end(dates, "Q") <= business_days)


def calendar_features(
    dates: pd.DatetimeIndex,
    country: str,
    month_end_business_days: int = 2,
    quarter_end_business_days: int = 5,
) -> pd.DataFrame:
    """Builds one row of calendar features per date.

    Args:
        dates: Daily dates (any order, no time of day).
        country: ISO country code for public holidays.
        month_end_business_days: Length of the month-end window in business days.
        quarter_end_business_days: Length of the end-of-quarter window in business days.

    Returns:
        Frame with columns ``date``, ``day_of_week`` (0 = Monday), ``month``, ``is_month_end``,
        ``is_end_of_quarter``, ``days_to_quarter_end`` (calendar days) and ``is_holiday``.
    """
    dates = pd.DatetimeIndex(dates).normalize()
    quarter_end = dates.to_period("Q").end_time.normalize()
    holidays = holiday_dates(country, dates.min(), dates.max()) if len(dates) else pd.DatetimeIndex([])
    return pd.DataFrame(
        {
            "date": dates,
            "day_of_week": dates.day_of_week.astype("int8"),
            "month": dates.month.astype("int8"),
            "is_month_end": month_end_window(dates, month_end_business_days),
            "is_end_of_quarter": quarter_end_window(dates, quarter_end_business_days),
            "days_to_quarter_end": (quarter_end - dates).days.astype("int16"),
            "is_holiday": dates.isin(holidays),
        }
    )
