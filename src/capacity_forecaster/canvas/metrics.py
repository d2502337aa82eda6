"""Accuracy of quantile forecasts on a holdout: sMAPE and MASE of p50, and p10-p90 coverage."""

import numpy as np
import pandas as pd

from capacity_forecaster.keys import common_categories

KEYS = ["server_id", "metric"]


def seasonal_naive_scale(history: pd.DataFrame, season: int = 7) -> pd.DataFrame:
    """MASE denominator per series: in-sample mean absolute difference between values ``season`` days apart.

    Args:
        history: Long frame ``server_id``, ``metric``, ``date``, ``value`` (daily; NaN allowed).
        season: Seasonal lag in days (weekly naive by default).

    Returns:
        Frame ``server_id``, ``metric``, ``scale`` (NaN where a series is too short or constant).
    """
    # Integer codes and one lexsort instead of a sort and groupby on string keys: tens of millions of rows
    # (10,000 servers x 4 metrics x 4 years) take seconds. A history already in series and date order (as etl
    # writes it) is not sorted again, and every per-row array is 32-bit where it can be, to bound memory.
    server_codes, servers = pd.factorize(history["server_id"], sort=True)
    metric_codes, metrics = pd.factorize(history["metric"], sort=True)
    width = max(len(metrics), 1)
    keyed = (server_codes >= 0) & (metric_codes >= 0)  # rows without a key belong to no series
    code_type = np.int32 if len(servers) * width < np.iinfo(np.int32).max else np.int64
    series = server_codes.astype(code_type) * width + metric_codes.astype(code_type)
    del server_codes, metric_codes
    dates = pd.to_datetime(history["date"]).to_numpy()
    values = history["value"].to_numpy(dtype=float)
    if not keyed.all():
        series, dates, values = series[keyed], dates[keyed], values[keyed]
    if not _in_series_and_date_order(series, dates):
        order = np.lexsort((dates, series))
        series, values = series[order], values[order]
        del order
    del dates
    later = series[season:]
    diff = values[season:] - values[: len(later)]
    np.abs(diff, out=diff)
    usable = (later == series[: len(later)]) & ~np.isnan(diff)
    later, diff = later[usable], diff[usable]
    del usable, values
    present = series[np.r_[True, series[1:] != series[:-1]]] if len(series) else series
    size = int(series.max(initial=-1)) + 1
    sums = np.bincount(later, weights=diff, minlength=size)
    counts = np.bincount(later, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[present] / counts[present]
    scale = pd.DataFrame(
        {
            "server_id": np.asarray(servers, dtype=object)[present // width],
            "metric": np.asarray(metrics, dtype=object)[present % width],
            "scale": mean,
        }
    )
    scale.loc[~(scale["scale"] > 1e-9), "scale"] = np.nan  # constant series: MASE undefined
    return scale


def _in_series_and_date_order(series: np.ndarray, dates: np.ndarray) -> bool:
    """Whether rows are sorted by series code, then strictly by date (one pass, no copy of the rows)."""
    if len(series) < 2:  # noqa: PLR2004 - a pair is needed to compare
        return True
    same = series[1:] == series[:-1]
    return bool(((series[1:] > series[:-1]) | (same & (dates[1:] > dates[:-1]))).all())


def score_forecasts(forecasts: pd.DataFrame, actuals: pd.DataFrame, scale: pd.DataFrame) -> pd.DataFrame:
    """Scores every model on the (server, metric, date) rows that have an actual value.

    sMAPE = 100 * mean(2 |p50 - y| / (|p50| + |y|)) over points (0/0 points count as 0);
    MASE = mean over series of mean|p50 - y| / scale; coverage = share of points with p10 <= y <= p90.
    Models are scored one at a time (in name order), so only one model's rows are joined to the actuals at
    once: on 10,000 servers the candidates are tens of millions of rows.

    Args:
        forecasts: Rows with ``server_id``, ``metric``, ``date``, ``model``, ``p10``, ``p50``, ``p90``.
        actuals: Rows with ``server_id``, ``metric``, ``date``, ``actual``.
        scale: Output of ``seasonal_naive_scale``.

    Returns:
        One row per model: ``model``, ``smape``, ``mase``, ``coverage_p10_p90``, ``n_series``, ``n_points``.
    """
    columns = ["model", "smape", "mase", "coverage_p10_p90", "n_series", "n_points"]
    # one categorical dtype per key across the three frames: the joins below then match integer codes
    forecasts, actuals, scale = common_categories([forecasts, actuals.dropna(subset=["actual"]), scale], KEYS)
    model_codes, models = pd.factorize(forecasts["model"], sort=True)
    rows = [_score_model(forecasts.loc[model_codes == code], actuals, scale) for code in range(len(models))]
    rows = [row for row in rows if row is not None]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows, columns=columns)


def _score_model(forecasts: pd.DataFrame, actuals: pd.DataFrame, scale: pd.DataFrame) -> list | None:
    """One model's row of ``score_forecasts`` (None when none of its rows has an actual)."""
    scored = forecasts.merge(actuals, on=[*KEYS, "date"], how="inner")
    if scored.empty:
        return None
    error = (scored["p50"] - scored["actual"]).abs()
    denominator = scored["p50"].abs() + scored["actual"].abs()
    smape_term = np.where(denominator > 0, 2.0 * error / denominator.where(denominator > 0, 1.0), 0.0)
    covered = (scored["actual"] >= scored["p10"]) & (scored["actual"] <= scored["p90"])
    per_series = (
        scored[KEYS].assign(abs_error=error).groupby(KEYS, as_index=False)["abs_error"].mean()
        .merge(scale, on=KEYS, how="left")
    )  # fmt: skip
    mase = per_series["abs_error"] / per_series["scale"]
    return [
        scored["model"].iloc[0],
        100.0 * pd.Series(smape_term).mean(),
        mase.mean(),
        covered.mean(),
        len(per_series),
        len(scored),
    ]
