"""Day-to-day dependence of forecast errors, estimated from backtest forecasts (past origins with actuals)."""

import logging
from typing import Any

import numpy as np
import pandas as pd

from .breach import Z90

logger = logging.getLogger(__name__)

BACKTEST_COLUMNS = ("server_id", "metric", "origin", "date", "h", "p10", "p50", "p90", "actual")
_ERROR_LIMIT = 5.0  # standardised errors are clipped to +-5 so one wild day cannot dominate


def usable_backtest(backtest_forecasts: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The backtest forecasts if they are in the contract schema, else an empty frame and the reason why not.

    Before the modelling pipeline wrote the selected model's ``backtest_forecasts``, the same file held the
    all-models calibrated backtest (``unique_id, fold, ds, y``): such a file is left out with a warning
    instead of stopping risk_analysis, and the reason goes into ``risk_evaluation``.
    """
    if backtest_forecasts.empty:
        return backtest_forecasts, "no backtest_forecasts (the modelling pipeline writes them)"
    missing = [column for column in BACKTEST_COLUMNS if column not in backtest_forecasts.columns]
    if not missing:
        return backtest_forecasts, None
    note = (
        f"backtest_forecasts lacks column(s) {missing} (it has {list(backtest_forecasts.columns)}): probably "
        "written by an older modelling pipeline; re-run modelling to get the risk backtest and the estimated "
        "error dependence"
    )
    logger.warning("%s. Left out: fallback correlation, no risk backtest.", note)
    return pd.DataFrame(), note


def standardised_errors(backtest: pd.DataFrame) -> np.ndarray:
    """Each backtest day's actual on the latent normal scale of its split-normal forecast (NaN if unknown)."""
    actual, p50 = backtest["actual"].to_numpy(float), backtest["p50"].to_numpy(float)
    upper = (backtest["p90"].to_numpy(float) - p50) / Z90
    lower = (p50 - backtest["p10"].to_numpy(float)) / Z90
    sigma = np.where(actual >= p50, upper, lower)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.where(sigma > 0, (actual - p50) / sigma, np.nan)
    return np.clip(error, -_ERROR_LIMIT, _ERROR_LIMIT)


def estimate_dependence(
    backtest_forecasts: pd.DataFrame, fallback_correlation: float, min_pairs: int
) -> dict[str, Any]:
    """Lag-1 correlation of standardised forecast errors per metric, pooled over series and folds.

    The correlation is sum(e_h e_h+1) / sqrt(sum e_h^2 sum e_h+1^2) over consecutive days of one fold (not
    demeaned: a fold whose forecast is too low throughout is exactly the dependence that matters), clipped
    to [0, 0.99]. A metric with fewer than ``min_pairs`` pairs, or no backtest at all, uses the fallback.

    Args:
        backtest_forecasts: ``server_id, metric, origin, date, h, p10, p50, p90, actual``; may be empty.
        fallback_correlation: Correlation used where the backtest cannot tell (in [0, 1]).
        min_pairs: Fewest consecutive-day error pairs a metric needs for its own estimate.

    Returns:
        ``{"fallback": .., "min_pairs": .., "by_metric": {metric: {"rho": .., "pairs": .., "source": ..}}}``;
        ``rho_for(dependence, metrics)`` reads it.
    """
    if not 0 <= fallback_correlation <= 1:
        raise ValueError(
            f"params:risk_analysis.fallback_correlation must be in [0, 1], got {fallback_correlation}"
        )
    by_metric: dict[str, dict[str, Any]] = {}
    backtest_forecasts, _ = usable_backtest(backtest_forecasts)
    if not backtest_forecasts.empty:
        # sorted codes give the order of a stable sort by (server_id, metric, origin, h) without sorting
        # millions of strings; consecutive rows of one fold are then compared as integers
        codes = {
            column: pd.factorize(backtest_forecasts[column], sort=True)[0]
            for column in ("server_id", "origin")
        }
        metric_codes, metric_names = pd.factorize(backtest_forecasts["metric"].astype("str"), sort=True)
        h = backtest_forecasts["h"].to_numpy()
        order = np.lexsort((h, codes["origin"], metric_codes, codes["server_id"]))
        frame = backtest_forecasts[["actual", "p10", "p50", "p90"]].iloc[order]
        server, metric_code, origin, h = (
            codes["server_id"][order],
            metric_codes[order],
            codes["origin"][order],
            h[order],
        )
        error = standardised_errors(frame)
        same_fold = (
            (server[1:] == server[:-1])
            & (metric_code[1:] == metric_code[:-1])
            & (origin[1:] == origin[:-1])
            & (np.diff(h) == 1)
        )
        pair = same_fold & ~np.isnan(error[1:]) & ~np.isnan(error[:-1])
        pair_metrics = metric_code[1:][pair]
        today, tomorrow = error[:-1][pair], error[1:][pair]
        for code in np.unique(pair_metrics):
            metric = str(metric_names[code])
            mask = pair_metrics == code
            a, b = today[mask], tomorrow[mask]
            denominator = np.sqrt((a * a).sum() * (b * b).sum())
            if mask.sum() >= min_pairs and denominator > 0:
                raw = float((a * b).sum() / denominator)
                by_metric[metric] = {
                    "rho": round(float(np.clip(raw, 0.0, 0.99)), 4),
                    "raw_rho": round(raw, 4),
                    "pairs": int(mask.sum()),
                    "source": "backtest",
                }
            else:
                by_metric[metric] = {
                    "rho": fallback_correlation,
                    "pairs": int(mask.sum()),
                    "source": "fallback",
                }
    logger.info(
        "Lag-1 correlation of forecast errors: %s (fallback %s elsewhere)",
        {m: v["rho"] for m, v in by_metric.items()} or "no backtest",
        fallback_correlation,
    )
    return {"fallback": float(fallback_correlation), "min_pairs": int(min_pairs), "by_metric": by_metric}


def rho_for(dependence: dict[str, Any], metrics: pd.Series | np.ndarray) -> np.ndarray:
    """Latent lag-1 correlation of each row's metric (the fallback for metrics without an estimate)."""
    table = {metric: entry["rho"] for metric, entry in dependence.get("by_metric", {}).items()}
    fallback = dependence["fallback"]
    return np.array([table.get(metric, fallback) for metric in pd.Series(metrics).astype("str")], dtype=float)
