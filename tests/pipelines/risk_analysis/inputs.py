"""Small frames in the contract schemas (forecasts, clean_server_metrics, server_inventory, server_truth)."""

import numpy as np
import pandas as pd

from capacity_forecaster.pipelines.risk_analysis.nodes import score_forecast_risk
from capacity_forecaster.risk.rightsizing import RECOMMENDATION_COLUMNS
from capacity_forecaster.schema import METRICS

ANALYSIS_DATE = pd.Timestamp("2025-12-31")  # last clean day; 2026-01-01 is forecast day 1
HORIZON = 90
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
FLAG_PARAMS = {
    "high_threshold": 80.0,
    "very_high_threshold": 90.0,
    "high_probability_cutoff": 0.5,
    "very_high_probability_cutoff": 0.5,
    "breach_min_days": 1,
    "recent_window_days": 14,
    "recent_min_days": 2,
    "exceedance_window_days": 28,
}
SCORE_PARAMS = {
    "forecast_model": "selected",
    "basis": "p90",
    "underutilized_threshold": 40.0,
    **FLAG_PARAMS,
    "stale_after_days": 7,
    "horizon": HORIZON,
    "near_term_days": 30,
    **CALENDAR,
}
DEPENDENCE = {"fallback": 0.8, "min_pairs": 50, "by_metric": {}}
"""error_dependence without a backtest: every metric uses the fallback correlation."""


def crossing_series(day: int, level: float, base: float = 50.0) -> np.ndarray:
    """``base`` on every day except from ``day`` (1-based) on, where it is ``level``."""
    values = np.full(HORIZON, base)
    values[day - 1 :] = level
    return values


def forecast_frame(
    p90: dict[tuple[str, str], np.ndarray], spread: float = 5.0, model: str = "trees", selected: bool = True
) -> pd.DataFrame:
    """Forecast rows per (server_id, metric): ``p90`` as given, ``p50``/``p10`` ``spread``/2 x lower."""
    dates = pd.date_range(ANALYSIS_DATE + pd.Timedelta(days=1), periods=HORIZON, freq="D")
    frames = []
    for (server_id, metric), series in p90.items():
        values = np.asarray(series, dtype=float)
        frames.append(
            pd.DataFrame(
                {
                    "server_id": server_id,
                    "metric": metric,
                    "date": dates[: len(values)],
                    "model": model,
                    "p10": np.clip(values - 2 * spread, 0, 100),
                    "p50": np.clip(values - spread, 0, 100),
                    "p90": values,
                    "is_selected": selected,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def flat_server(server_id: str, levels: dict[str, float]) -> dict[tuple[str, str], np.ndarray]:
    """A constant p90 per metric (10 % for the metrics not given)."""
    return {(server_id, m): np.full(HORIZON, levels.get(m, 10.0)) for m in METRICS}


def inventory_frame(
    servers: dict[str, tuple[int, int, float]],
    datacenter: dict[str, str] | None = None,
    archetype: dict[str, str] | None = None,
) -> pd.DataFrame:
    """``servers``: server_id -> (vcpus, memory_gb, hourly_cost_usd)."""
    frame = pd.DataFrame(
        [(s, v, m, c) for s, (v, m, c) in servers.items()],
        columns=["server_id", "vcpus", "memory_gb", "hourly_cost_usd"],
    )
    frame["datacenter"] = [(datacenter or {}).get(s, "dc-1") for s in frame["server_id"]]
    if archetype:
        frame["archetype"] = frame["server_id"].map(archetype)
    return frame


def history_frame(values: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """clean_server_metrics rows ending on ANALYSIS_DATE for each (server_id, metric) series."""
    frames = []
    for (server_id, metric), series in values.items():
        dates = pd.date_range(end=ANALYSIS_DATE, periods=len(series), freq="D")
        frames.append(
            pd.DataFrame(
                {
                    "server_id": server_id,
                    "metric": metric,
                    "date": dates,
                    "value": np.asarray(series, dtype=float),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(is_imputed=False, is_clipped=False, is_outlier=False)


def archetype_history(archetype: str, rng: np.random.Generator, days: int = 400) -> dict[str, np.ndarray]:
    """Daily P95 per metric for a web (weekday-heavy), batch (period-end peaks) or idle (low, flat) server."""
    dates = pd.date_range(end=ANALYSIS_DATE, periods=days, freq="D")
    weekday = dates.day_of_week.to_numpy()
    period_end = (dates + pd.offsets.BDay(3)).month != dates.month
    out = {}
    for k, metric in enumerate(METRICS):
        if archetype == "web":
            base = np.where(weekday < 5, 55.0, 33.0) - 3 * k
        elif archetype == "batch":
            base = 30.0 - 2 * k + np.where(period_end, 30.0, 0.0)
        else:
            base = np.full(days, 8.0 + k)
        out[metric] = np.clip(base + rng.normal(0, 1.5, days), 0, 100)
    return out


def quiet_history(forecasts: pd.DataFrame, days: int = 30, level: float = 10.0) -> pd.DataFrame:
    """A flat clean history at ``level`` % ending on ANALYSIS_DATE for every series of ``forecasts``."""
    keys = forecasts[["server_id", "metric"]].drop_duplicates().itertuples(index=False)
    return history_frame({(server, metric): np.full(days, level) for server, metric in keys})


def score(forecasts: pd.DataFrame, history: pd.DataFrame | None = None, **overrides) -> pd.DataFrame:
    """score_forecast_risk with SCORE_PARAMS, the fallback dependence and a quiet history unless given."""
    history = quiet_history(forecasts) if history is None else history
    return score_forecast_risk(forecasts, history, DEPENDENCE, **{**SCORE_PARAMS, **overrides})


def rightsizing_frame(recommendations: dict[str, tuple[str, float]] | None = None) -> pd.DataFrame:
    """``rightsizing_recommendations`` with ``server -> (recommended type, monthly cost change)`` rows."""
    rows = [
        {
            "server_id": server,
            "recommended_instance_type": kind,
            "monthly_cost_change_usd": change,
            "reason": f"fits {kind}",
        }
        for server, (kind, change) in (recommendations or {}).items()
    ]
    return pd.DataFrame(rows, columns=list(RECOMMENDATION_COLUMNS))
