"""A tiny fleet in the contract schemas (server_features and its clean_server_metrics columns, forecasts,
model_metrics, future_metrics)."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.schema import METRICS

HISTORY_DAYS = 70
HORIZON = 14
SERIES = [("srv-001", "cpu_p95"), ("srv-001", "memory_p95"), ("srv_002", "cpu_p95")]
LAST_DAY = pd.Timestamp("2024-03-20")


def truth(day_index: np.ndarray, level: float) -> np.ndarray:
    """A weekly pattern around ``level`` (%)."""
    return level + 5.0 * np.sin(2 * np.pi * day_index / 7)


@pytest.fixture
def fleet() -> dict[str, pd.DataFrame]:
    history_dates = pd.date_range(end=LAST_DAY, periods=HISTORY_DAYS, freq="D")
    future_dates = pd.date_range(LAST_DAY + pd.Timedelta(days=1), periods=HORIZON, freq="D")
    calendar = calendar_features(history_dates, "US")
    rng = np.random.default_rng(7)
    features, forecasts, metrics, future = [], [], [], {}
    for n, (server, metric) in enumerate(SERIES):
        level = 40.0 + 10 * n
        past = truth(np.arange(HISTORY_DAYS), level) + rng.normal(0.0, 1.0, HISTORY_DAYS)
        ahead = truth(np.arange(HISTORY_DAYS, HISTORY_DAYS + HORIZON), level)
        features.append(
            calendar.assign(
                server_id=server,
                metric=metric,
                value=past,
                is_imputed=False,
                lag_7=np.r_[np.full(7, np.nan), past[:-7]].astype("float32"),
            )
        )
        # good = truth with a 1-point band; seasonal_naive = 2 points high; trees = 6 points low.
        for model, shift, half_width, mase in (
            ("good", 0.0, 1.0, 0.5),
            ("seasonal_naive", 2.0, 3.0, 1.0),
            ("trees", -6.0, 2.0, 2.0),
        ):
            p50 = ahead + shift
            forecasts.append(
                pd.DataFrame(
                    {
                        "server_id": server,
                        "metric": metric,
                        "date": future_dates,
                        "model": model,
                        "p10": p50 - half_width,
                        "p50": p50,
                        "p90": p50 + half_width,
                        "is_selected": model == "good",
                    }
                )
            )
            for fold in range(2):
                metrics.append(
                    {
                        "server_id": server,
                        "metric": metric,
                        "model": model,
                        "fold": fold,
                        "mase": mase,
                        "smape": 10 * mase,
                        "coverage": 0.8,
                    }
                )
        future.setdefault(server, {})[metric] = ahead
    future_rows = []
    for server, by_metric in future.items():
        frame = pd.DataFrame({"timestamp": future_dates, "server_id": server})
        for metric in METRICS:
            frame[metric] = by_metric.get(metric, np.full(HORIZON, 20.0))
        future_rows.append(frame)
    server_features = pd.concat(features, ignore_index=True)
    return {
        "server_features": server_features,
        "clean_server_metrics": server_features[["server_id", "metric", "date", "value", "is_imputed"]],
        "forecasts": pd.concat(forecasts, ignore_index=True),
        "model_metrics": pd.DataFrame(metrics),
        "future_metrics": pd.concat(future_rows, ignore_index=True),
    }
