"""A tiny fleet in the contract schemas (CONTRACT.md / common brief) for the reporting tests.

Also used by tests/test_viz.py, so that kedro-viz has real figures to preview.
"""

from typing import Any

import numpy as np
import pandas as pd

from capacity_forecaster.schema import METRICS

HISTORY_START = pd.Timestamp("2024-01-01")
HISTORY_DAYS = 400
HORIZON = 90
ARCHETYPES = {"s1": "web", "s2": "database", "s3": "batch", "s4": "idle", "s5": "web", "s6": "idle"}
LEVELS = {"s1": 85.0, "s2": 70.0, "s3": 55.0, "s4": 15.0, "s5": 92.0, "s6": 20.0}  # last level; s1/s5 breach


def _tier(peak: float, mean: float) -> str:
    if peak > 90:
        return "very_high"
    if peak > 80:
        return "high"
    return "underutilized" if mean < 40 else "normal"


def _first_day_above(values: np.ndarray, threshold: float) -> Any:
    above = np.flatnonzero(values > threshold)
    return int(above[0]) + 1 if len(above) else pd.NA


def _first_date_above(values: np.ndarray, threshold: float, dates: pd.DatetimeIndex) -> pd.Timestamp:
    above = np.flatnonzero(values > threshold)
    return dates[above[0]] if len(above) else pd.NaT


def make_reporting_inputs() -> dict[str, Any]:
    """Every reporting input: history, two models' forecasts, risk register, clusters, plan, JSON reports."""
    rng = np.random.default_rng(7)
    dates = pd.date_range(HISTORY_START, periods=HISTORY_DAYS, freq="D")
    future = pd.date_range(dates[-1] + pd.Timedelta(days=1), periods=HORIZON, freq="D")
    history, forecasts, register = [], [], []
    for server, level in LEVELS.items():
        for k, metric in enumerate(METRICS):
            base = level - 5 * k
            trend = np.linspace(base - 10, base, HISTORY_DAYS)
            values = np.clip(trend + rng.normal(0, 2, HISTORY_DAYS), 0, 100)
            history.append(
                pd.DataFrame({"server_id": server, "metric": metric, "date": dates, "value": values})
            )
            p50 = np.clip(base + np.linspace(0, 4, HORIZON), 0, 100)
            for model, shift in (("trees", 0.0), ("seasonal_naive", -3.0)):
                forecasts.append(
                    pd.DataFrame(
                        {
                            "server_id": server,
                            "metric": metric,
                            "date": future,
                            "model": model,
                            "p10": np.clip(p50 + shift - 5, 0, 100),
                            "p50": np.clip(p50 + shift, 0, 100),
                            "p90": np.clip(p50 + shift + 5, 0, 100),
                            "is_selected": model == "trees",
                        }
                    )
                )
            p90 = np.clip(p50 + 5, 0, 100)
            register.append(
                {
                    "server_id": server,
                    "metric": metric,
                    "analysis_date": dates[-1],
                    "risk_level": _tier(p90.max(), p50.mean()),
                    "projected_utilization": float(p90.max()),
                    "days_to_80": _first_day_above(p90, 80),
                    "days_to_90": _first_day_above(p90, 90),
                    "first_date_above_80": _first_date_above(p90, 80, future),
                    "first_date_above_90": _first_date_above(p90, 90, future),
                    "savings_potential": 0.0,
                    "action": "monitor",
                    "reason": f"p90 peaks at {p90.max():.1f} %",
                }
            )
    clean = pd.concat(history, ignore_index=True)
    clean = clean.assign(is_imputed=False, is_clipped=False, is_outlier=False)
    register = pd.DataFrame(register).astype({"days_to_80": "Int64", "days_to_90": "Int64"})
    inventory = pd.DataFrame(
        {
            "server_id": list(ARCHETYPES),
            "archetype": list(ARCHETYPES.values()),
            "vcpus": 8,
            "memory_gb": 32,
            "hourly_cost_usd": [0.4, 0.8, 0.6, 0.2, 0.4, 0.1],
        }
    )
    return {
        "clean_server_metrics": clean,
        "server_inventory": inventory,
        "forecasts": pd.concat(forecasts, ignore_index=True),
        "risk_register": register,
        "server_clusters": pd.DataFrame(
            {
                "server_id": list(LEVELS),
                "cluster": [0, 0, 1, 2, 0, 2],
                "description": ["busy web", "busy web", "batch", "idle", "busy web", "idle"],
                "archetype": list(ARCHETYPES.values()),  # risk_analysis adds it when the inventory has it
            }
        ),
        "consolidation_plan": pd.DataFrame(
            {"server_id": ["s6"], "target_server_id": ["s4"], "monthly_savings_usd": [0.1 * 730]}
        ),
        "model_leaderboard": [
            {"model": "trees", "mase": 0.71, "coverage": 0.79, "fit_seconds": 3.2},
            {"model": "seasonal_naive", "mase": 1.0, "coverage": 0.62, "fit_seconds": 0.1},
        ],
        "data_quality_report": {
            "rows_in": 9650,
            "rows_out": 9600,
            "duplicates_removed": 50,
            "values_imputed": 12,
            "long_gaps": [],
        },
        "risk_summary": {
            "servers": 6,
            "savings": {"monthly_savings_usd": 73.0, "servers_moved": 1},
            "top_at_risk_servers": [{"server_id": "s5"}, {"server_id": "s1"}],
        },
    }
