"""Frame helpers shared by the risk modules: column checks, series numbering and day arithmetic."""

import numpy as np
import pandas as pd

from capacity_forecaster.keys import in_lexical_order
from capacity_forecaster.schema import METRICS


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Raises a ValueError naming ``name`` and the missing columns when ``frame`` lacks any of ``columns``."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")


def series_codes(server_id: pd.Series, metric: pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
    """Numbers the (server_id, metric) series of a long frame.

    Returns:
        The series code of every row, and the keys of each code (sorted by server, then METRICS order).
    """
    server_codes, servers = pd.factorize(in_lexical_order(server_id), sort=True)
    metric_codes, metrics = pd.factorize(metric)
    known = {metric: rank for rank, metric in enumerate(METRICS)}
    order = sorted(range(len(metrics)), key=lambda i: (known.get(metrics[i], len(METRICS)), str(metrics[i])))
    rank = np.empty(len(metrics), dtype=np.int64)
    rank[order] = np.arange(len(metrics))
    combined = server_codes.astype(np.int64) * len(metrics) + rank[metric_codes]
    present = np.flatnonzero(np.bincount(combined, minlength=len(servers) * len(metrics)))
    dense = np.zeros(len(servers) * len(metrics), dtype=np.int64)
    dense[present] = np.arange(len(present))
    keys = pd.DataFrame(
        {
            "server_id": np.asarray(servers, dtype=object)[present // len(metrics)],
            "metric": np.asarray(metrics, dtype=object)[np.asarray(order)[present % len(metrics)]],
        }
    ).astype({"server_id": "str", "metric": "str"})
    return dense[combined], keys


def day_numbers(dates: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of datetimes (time of day dropped)."""
    values = np.asarray(pd.to_datetime(dates)).astype("datetime64[ns]")
    return values.view(np.int64) // (24 * 3600 * 10**9)


def dates_of(days: np.ndarray) -> pd.Series:
    """Datetime column (ns) of day numbers (days since 1970-01-01)."""
    days = np.asarray(days)
    return pd.Series(days.astype("datetime64[D]").astype("datetime64[ns]"))


def grouped_means(
    codes: np.ndarray, values: np.ndarray, groups: np.ndarray, n_codes: int, n_groups: int
) -> np.ndarray:
    """Mean of ``values`` per code and group (``groups`` in ``0..n_groups-1``), NaN where there is none."""
    index = codes * n_groups + groups
    total = np.bincount(index, weights=values, minlength=n_codes * n_groups)
    count = np.bincount(index, minlength=n_codes * n_groups)
    with np.errstate(all="ignore"):
        return np.where(count > 0, total / count, np.nan).reshape(n_codes, n_groups)
