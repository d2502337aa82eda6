"""Tiny synthetic fleets for the modelling tests: long frames, clean_server_metrics and server_inventory."""

import numpy as np
import pandas as pd

from capacity_forecaster.schema import METRICS

START = pd.Timestamp("2023-01-02")


def long_frame(
    n_series: int = 3, days: int = 200, seed: int = 0, start: pd.Timestamp = START
) -> pd.DataFrame:
    """``unique_id, ds, y``: weekly pattern + trend + noise; the last one near 100 % (clipping)."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    frames = []
    for i in range(n_series):
        base = 95.0 if i == n_series - 1 else 30.0 + 10 * i
        y = base + 6 * np.sin(2 * np.pi * t / 7) + 0.01 * i * t + rng.normal(0, 2, days)
        frames.append(
            pd.DataFrame({"unique_id": f"s{i}", "ds": start + pd.to_timedelta(t, "D"), "y": y.clip(0, 100)})
        )
    return pd.concat(frames, ignore_index=True)


def clean_tables(n_servers: int = 4, days: int = 240, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A ``clean_server_metrics`` long table (with a NaN gap) and its ``server_inventory``."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(START, periods=days, freq="D")
    archetypes = ["web", "database", "batch", "idle"]
    rows = []
    for s in range(n_servers):
        for m, metric in enumerate(METRICS):
            level = 20.0 + 10 * m + 5 * s
            value = level + 5 * np.sin(2 * np.pi * np.arange(days) / 7 + s) + rng.normal(0, 1.5, days)
            if s == 0 and metric == "cpu_p95":
                value[100:110] = np.nan  # a long gap the ETL reported and did not fill
            rows.append(
                pd.DataFrame({"server_id": f"srv-{s:04d}", "metric": metric, "date": dates, "value": value})
            )
    clean = pd.concat(rows, ignore_index=True)
    clean[["is_imputed", "is_clipped", "is_outlier"]] = False
    inventory = pd.DataFrame(
        {
            "server_id": [f"srv-{s:04d}" for s in range(n_servers)],
            "archetype": [archetypes[s % 4] for s in range(n_servers)],
            "vcpus": 4,
            "memory_gb": 16,
            "hourly_cost_usd": 0.2,
        }
    )
    return clean, inventory
