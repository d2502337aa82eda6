"""Benchmark of the etl pipeline: 1 M and 14.6 M raw daily rows through every etl node, with peak memory.

Targets (issue 3): 1 M raw daily rows under 15 s; 14.6 M rows (10,000 servers x 4 years) under 3 min.
The raw input is made here with vectorised numpy (weekly shape, month-end peaks, noise, plus dirt: missing
days, a multi-day outage per 8 % of servers, duplicates, spikes and out-of-range values), as the frame a CSV
load gives (timestamp as text). Node time is measured in memory; a separate line times the gzip CSV round trip
through ``MetricsExportDataset`` and the Parquet writes of the outputs (1 M case only unless ``--io-all``).

Usage: ``python benchmarks/etl.py [--sizes 1000000 14600000] [--io-all]``. The machine is shared and has 2
cores: figures are noisy, compare them rather than trusting the absolute seconds.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from capacity_forecaster.datasets.metrics_export import MetricsExportDataset
from capacity_forecaster.pipelines.etl.nodes import (
    aggregate_daily_metrics,
    build_data_quality_report,
    build_server_features,
    clean_daily_metrics,
    validate_raw_metrics,
)
from capacity_forecaster.schema import METRICS

DAYS = 1461
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}


def make_raw(n_rows: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A dirty daily export of about ``n_rows`` rows (servers x 4 years) and its inventory."""
    rng = np.random.default_rng(seed)
    n_servers = max(1, round(n_rows / DAYS))
    dates = pd.date_range("2022-01-01", periods=DAYS, freq="D")
    weekly = np.array([1.0, 1.03, 1.04, 1.03, 0.98, 0.7, 0.66])[dates.day_of_week]
    month_end = (dates + pd.offsets.BDay(2)).month != dates.month
    level = rng.uniform(10, 60, (n_servers, 1, len(METRICS))).astype("float32")
    values = np.empty((n_servers, DAYS, len(METRICS)), dtype="float32")
    for m in range(len(METRICS)):  # loop over 4 metrics only
        values[:, :, m] = level[:, :, m] * weekly + 8 * month_end + rng.normal(0, 3, (n_servers, DAYS))
    values = values.reshape(-1, len(METRICS))
    spikes = rng.random(values.shape) < 0.0005
    values[spikes] = rng.uniform(-10, 150, int(spikes.sum()))
    server_ids = np.array([f"srv-{i:05d}" for i in range(n_servers)], dtype=object)
    keep = rng.random(len(values)) >= 0.004
    outage = rng.random(n_servers) < 0.08
    start = rng.integers(30, DAYS - 30, n_servers)
    length = rng.integers(2, 22, n_servers)
    day = np.tile(np.arange(DAYS), n_servers)
    server = np.repeat(np.arange(n_servers), DAYS)
    keep &= ~(outage[server] & (day >= start[server]) & (day < start[server] + length[server]))
    rows = np.flatnonzero(keep)
    rows = np.sort(np.r_[rows, rng.choice(rows, int(0.002 * len(rows)), replace=False)])
    raw = pd.DataFrame(
        {
            "timestamp": pd.array(dates.strftime("%Y-%m-%d").to_numpy(dtype=object)[day[rows]], dtype="str"),
            "server_id": pd.array(server_ids[server[rows]], dtype="str"),
            **{metric: np.round(values[rows, m].astype("float64"), 2) for m, metric in enumerate(METRICS)},
        }
    )
    inventory = pd.DataFrame({"server_id": server_ids.astype(str)})
    return raw, inventory


def run_etl(
    holder: list[pd.DataFrame], inventory: pd.DataFrame
) -> tuple[dict[str, float], float, dict, pd.DataFrame, pd.DataFrame]:
    """Runs every etl node in pipeline order, releasing each input after its last use as Kedro's runner does
    (``holder`` holds the raw frame and is emptied). Returns wall seconds per node, CPU seconds, the report
    and the two tables."""
    seconds: dict[str, float] = {}
    cpu = time.process_time()
    t = time.perf_counter()
    validated, v_stats = validate_raw_metrics(holder.pop(), inventory, {}, {}, "error")
    seconds["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    daily, a_stats = aggregate_daily_metrics(validated, 0.5)
    seconds["aggregate"] = time.perf_counter() - t
    del validated
    t = time.perf_counter()
    clean, c_stats = clean_daily_metrics(daily, 5, "time", 5.0, 3, 1.0, True, **CALENDAR, high_threshold=80.0)
    seconds["clean"] = time.perf_counter() - t
    del daily
    t = time.perf_counter()
    report = build_data_quality_report(v_stats, a_stats, c_stats, 7)
    seconds["report"] = time.perf_counter() - t
    t = time.perf_counter()
    features = build_server_features(clean, [1, 7, 30, 90, 97, 364], [7, 14, 30], **CALENDAR)
    seconds["features"] = time.perf_counter() - t
    return seconds, time.process_time() - cpu, report, clean, features


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 14_600_000])
    parser.add_argument("--io-all", action="store_true", help="also time file I/O for sizes above 1 M rows")
    args = parser.parse_args()
    print(
        "rows_in  servers  make_s  validate  aggregate  clean  report  features  etl_wall_s  etl_cpu_s  "
        "target_s  long_rows  peak_rss_gb"
    )
    for size in args.sizes:
        t = time.perf_counter()
        raw, inventory = make_raw(size)
        make_s = time.perf_counter() - t
        n_raw = len(raw)
        keep_raw = raw if size <= 1_000_000 or args.io_all else None
        holder = [raw]
        del raw
        seconds, cpu_s, report, clean, features = run_etl(holder, inventory)
        total = sum(seconds.values())
        target = 15 if size <= 1_000_000 else 180
        print(
            f"{n_raw:>9,}  {len(inventory):>6,}  {make_s:6.1f}  {seconds['validate']:8.2f}  "
            f"{seconds['aggregate']:9.2f}  {seconds['clean']:5.2f}  {seconds['report']:6.2f}  "
            f"{seconds['features']:8.2f}  {total:10.2f}  {cpu_s:9.2f}  {target:8d}  {len(features):>10,}  "
            f"{peak_rss_gb():10.2f}",
            flush=True,
        )
        print(
            f"    report: duplicates {report['duplicates_removed']:,}, imputed {report['values_imputed']:,}, "
            f"clipped {report['values_clipped']:,}, outliers {report['values_flagged_outlier']:,} "
            f"(replaced {report['outliers_replaced']:,}, "
            f"{report['days_replaced_above_high_threshold']:,} of them above 80 %), "
            f"left missing {report['values_left_missing']:,}, "
            f"servers with long gaps {len(report['servers_with_long_gaps']):,}; clean "
            f"{clean.memory_usage(deep=True).sum() / 1e9:.2f} GB, features "
            f"{features.memory_usage(deep=True).sum() / 1e9:.2f} GB in memory (key columns shared)",
            flush=True,
        )
        if size <= 1_000_000 or args.io_all:
            with tempfile.TemporaryDirectory() as tmp:
                dataset = MetricsExportDataset(filepath=str(Path(tmp) / "raw.csv.gz"))
                t = time.perf_counter()
                dataset.save(keep_raw)
                save_raw = time.perf_counter() - t
                t = time.perf_counter()
                loaded = dataset.load()
                load_raw = time.perf_counter() - t
                t = time.perf_counter()
                clean.to_parquet(Path(tmp) / "clean.parquet")
                features.to_parquet(Path(tmp) / "features.parquet")
                write_out = time.perf_counter() - t
                print(
                    f"    io: save raw gzip CSV {save_raw:.1f} s, load it {load_raw:.1f} s "
                    f"({len(loaded):,} rows), write clean + features Parquet {write_out:.1f} s; "
                    "etl incl. load + writes "
                    f"{total + load_raw + write_out:.1f} s; peak RSS {peak_rss_gb():.2f} GB",
                    flush=True,
                )
                del loaded
        del keep_raw, inventory, clean, features
        gc.collect()


if __name__ == "__main__":
    main()
