"""Benchmark of the modelling pipeline on the default fleet and of the scalable models at 10,000 servers.

Runs ``kedro run --pipelines data_generation,etl`` and then ``kedro run --pipelines modelling`` into a temp
data root (never data/), times the modelling run, and prints per model: backtest MASE, sMAPE, p10-p90
coverage and series per second, side by side with the targets. Then fits and predicts the global quantile
model and the changepoint regression on a synthetic fleet of 10,000 servers (cpu only), one after the other.

    python benchmarks/modelling.py                      # everything (default fleet: 120 servers x 4 metrics)
    python benchmarks/modelling.py --data-root /tmp/cf  # reuse inputs/outputs already in /tmp/cf
    python benchmarks/modelling.py --skip-scale         # no 10,000-server runs

Figures are wall-clock on whatever machine runs this; on a shared machine compare ratios, not absolutes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from capacity_forecaster.models import FORECASTERS

PROJECT = Path(__file__).resolve().parents[1]


def _kedro(data_root: Path, pipelines: str) -> float:
    env = {**os.environ, "CF_DATA_ROOT": str(data_root), "KEDRO_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    done = subprocess.run(
        ["kedro", "run", "--pipelines", pipelines],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"kedro run --pipelines {pipelines} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def _synthetic_cpu_fleet(n_servers: int, days: int, seed: int = 0) -> pd.DataFrame:
    """Weekly shape, end-of-quarter peaks, slow growth and AR(1) noise per server (long frame)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2022-01-01", periods=days, freq="D")
    t = np.arange(days)
    level = rng.uniform(5, 60, (n_servers, 1))
    weekly = np.where(dates.day_of_week.to_numpy() >= 5, -1.0, 0.3)[None, :] * rng.uniform(
        0, 8, (n_servers, 1)
    )
    quarter_end = np.asarray((dates + pd.Timedelta(days=7)).quarter != dates.quarter)[None, :]
    peaks = quarter_end * rng.uniform(0, 15, (n_servers, 1))
    growth = rng.uniform(-1, 6, (n_servers, 1)) * t[None, :] / 365
    noise = np.zeros((n_servers, days))
    shocks = rng.normal(0, 2.5, (n_servers, days))
    for d in range(1, days):
        noise[:, d] = 0.6 * noise[:, d - 1] + shocks[:, d]
    values = np.clip(level + weekly + peaks + growth + noise, 0, 100)
    return pd.DataFrame(
        {
            "unique_id": np.repeat([f"srv-{i:05d}|cpu_p95" for i in range(n_servers)], days),
            "ds": np.tile(dates.to_numpy(), n_servers),
            "y": values.ravel(),
        }
    )


def _scale_run(model: str, frame: pd.DataFrame, horizon: int) -> dict:
    conf = PROJECT / "conf" / "base" / "parameters_modelling.yml"
    spec = yaml.safe_load(conf.read_text())["modelling"][model]
    started = time.perf_counter()
    forecaster = FORECASTERS[spec["kind"]](**spec["hyperparameters"], horizon=horizon).fit(frame)
    fitted = time.perf_counter()
    forecast = forecaster.predict(horizon)
    done = time.perf_counter()
    assert len(forecast) == frame["unique_id"].nunique() * horizon
    return {"fit_s": fitted - started, "predict_s": done - fitted, "total_s": done - started}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root", type=Path, help="reuse this data root (skips runs whose outputs exist)"
    )
    parser.add_argument("--skip-scale", action="store_true", help="skip the 10,000-server runs")
    parser.add_argument("--scale-servers", type=int, default=10_000)
    args = parser.parse_args()

    data_root = args.data_root or Path(tempfile.mkdtemp(prefix="cf-modelling-bench-"))
    print(f"data root: {data_root}  (cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f})")
    if not (data_root / "03_primary" / "clean_server_metrics.parquet").exists():
        print(f"data_generation + etl: {_kedro(data_root, 'data_generation,etl'):.1f} s")
    leaderboard_path = data_root / "08_reporting" / "model_leaderboard.json"
    if args.data_root is None or not leaderboard_path.exists():
        seconds = _kedro(data_root, "modelling")
        print(f"modelling pipeline (wall clock, incl. Kedro start-up): {seconds:.1f} s  "
              f"[target < 300 s; load average now {os.getloadavg()[0]:.1f}]")  # fmt: skip

    board = json.loads(leaderboard_path.read_text())
    table = pd.DataFrame(board["models"]).set_index("model")
    columns = [
        "mase",
        "smape",
        "coverage",
        "eoq_mase",
        "eoq_coverage",
        "folds",
        "fit_seconds",
        "series_per_second",
    ]
    print(f"\nBacktest on the common folds {board['common_folds']} (means over servers, metrics and folds):")
    print(table[columns].to_string(float_format=lambda v: f"{v:.3f}"))

    prophet, selected = table.loc["prophet"], table.loc["selected"]
    gain = 1 - selected["mase"] / prophet["mase"]
    print(f"\nselected vs prophet MASE: {selected['mase']:.3f} vs {prophet['mase']:.3f} -> {gain:+.1%} "
          f"[target >= +10 %]")  # fmt: skip
    print(f"selected p10-p90 coverage: {selected['coverage']:.1%} [target 75-85 %]")
    speedup = table.loc["quantile_gbm", "series_per_second"] / prophet["series_per_second"]
    print(f"quantile_gbm throughput vs prophet: {speedup:.1f}x [target >= 20x]")

    forecasts = pd.read_parquet(data_root / "07_model_output" / "forecasts.parquet")
    chosen = (
        forecasts[forecasts["is_selected"]].drop_duplicates(["server_id", "metric"])["model"].value_counts()
    )
    print(f"selected models: {chosen.to_dict()}")

    if not args.skip_scale:
        clean = pd.read_parquet(data_root / "03_primary" / "clean_server_metrics.parquet", columns=["date"])
        days = clean["date"].nunique()
        frame = _synthetic_cpu_fleet(args.scale_servers, days)
        print(f"\n{args.scale_servers:,} servers x {days} days (cpu only), fit + predict 90 days:")
        for model in ("quantile_gbm", "changepoint_regression"):
            result = _scale_run(model, frame, horizon=90)
            rate = args.scale_servers / result["total_s"]
            print(f"  {model}: fit {result['fit_s']:.1f} s, predict {result['predict_s']:.1f} s, "
                  f"total {result['total_s']:.1f} s ({rate:.0f} series/s)")  # fmt: skip


if __name__ == "__main__":
    main()
