"""Canvas stage benchmark: the local stand-in (canvas_local) against the modelling models, and node timings.

Usage (after `kedro run --pipelines data_generation,etl,modelling` wrote into CF_DATA_ROOT or data/):

    CF_DATA_ROOT=/tmp/run python benchmarks/canvas.py

Runs the canvas nodes on the persisted datasets with canvas disabled (no AWS), prints the holdout table
(sMAPE, MASE, p10-p90 coverage per model on the horizon against future_metrics), the 10 % sMAPE bar, the
ensemble weights, and the time of each node. The machine is shared and has 2 cores: timings are noisy; compare
them rather than read them as absolutes.
"""

import os
import time
from pathlib import Path

import pandas as pd

from capacity_forecaster.pipelines.canvas.nodes import (
    build_canvas_forecasts,
    compare_canvas_forecasts,
    export_canvas_training_data,
    forecast_with_autopilot,
)

REGRESSORS = ["is_end_of_quarter", "is_month_end", "is_holiday"]
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}


def _timed(label: str, timings: dict, func, *args, **kwargs):
    start = time.perf_counter()
    result = func(*args, **kwargs)
    timings[label] = time.perf_counter() - start
    return result


def main() -> None:
    root = Path(os.environ.get("CF_DATA_ROOT", "data"))
    # as the catalog loads it (conf/base/catalog_etl.yml): keys as categoricals
    history = pd.read_parquet(
        root / "03_primary/clean_server_metrics.parquet", read_dictionary=["server_id", "metric"]
    )
    forecasts = pd.read_parquet(root / "07_model_output/forecasts.parquet")
    metrics = pd.read_parquet(root / "08_reporting/model_metrics.parquet")
    future_path = root / "01_raw/future_metrics.parquet"
    future = pd.read_parquet(future_path) if future_path.exists() else pd.DataFrame()
    horizon = int(forecasts.groupby(["server_id", "metric", "model"]).size().max())
    series = history.groupby(["server_id", "metric"], observed=True).ngroups
    print(f"data root {root}: {series} series, {len(history)} history rows, horizon {horizon} days")

    timings: dict[str, float] = {}
    training = _timed(
        "export_canvas_training_data", timings, export_canvas_training_data, history, REGRESSORS, **CALENDAR
    )
    empty, run = _timed(
        "forecast_with_autopilot (disabled)",
        timings,
        forecast_with_autopilot,
        training,
        enabled=False,
        role_arn="",
        s3_prefix="",
        region="",
        job_prefix="cf-canvas",
        horizon=horizon,
        country="US",
        max_runtime_s=1800,
        max_runtime_per_training_job_s=900,
        max_candidates=4,
        transform_instance_type="ml.m5.2xlarge",
        transform_max_file_mb=100,
        regressors=REGRESSORS,
        month_end_business_days=2,
        quarter_end_business_days=5,
        poll_interval_s=30,
        poll_backoff=1.5,
        poll_max_interval_s=300,
        transform_timeout_s=1800,
        wait_grace_s=600,
        training_usd_per_hour=1.0,
        transform_usd_per_hour=0.46,
    )
    canvas, weights = _timed(
        "build_canvas_forecasts (canvas_local)",
        timings,
        build_canvas_forecasts,
        empty,
        run,
        forecasts,
        metrics,
        "mase",
        3,
    )
    comparison = _timed(
        "compare_canvas_forecasts",
        timings,
        compare_canvas_forecasts,
        canvas,
        run,
        weights,
        forecasts,
        metrics,
        future,
        history,
        10.0,
        ["smape", "mase", "coverage"],
    )

    print(f"\npath: {comparison['path']} ({comparison['reason']}), model {comparison['model']}")
    print(
        f"\nholdout {comparison['holdout']['start']} .. {comparison['holdout']['end']} (vs future_metrics):"
    )
    print(pd.DataFrame(comparison["holdout"]["models"]).round(3).to_string(index=False))
    print(f"\nbar: {comparison['bar']}")
    print("\nbacktest (model_metrics, common folds):")
    print(pd.DataFrame(comparison["backtest"]["models"]).round(3).to_string(index=False))
    print("\ncanvas_local mean weights:")
    print(pd.DataFrame(comparison["ensemble_weights"]).round(3).to_string(index=False))
    print("\nnode times (s):")
    for label, seconds in timings.items():
        print(f"  {label:<40} {seconds:8.2f}")
    print(f"  {'series per second (whole stand-in)':<40} {series / sum(timings.values()):8.0f}")


if __name__ == "__main__":
    main()
