"""Benchmark of the modelling pipeline on the default fleet and of the scalable models at 10,000 servers.

Runs ``kedro run --pipelines data_generation,etl`` and then ``kedro run --pipelines modelling`` into a temp
data root (never data/), times the modelling run, and prints per model: backtest MASE, sMAPE, p10-p90
coverage and series per second, side by side with the targets. Then fits and predicts the global quantile
model and the changepoint regression on a synthetic fleet of 10,000 servers (cpu only), one after the other.

    python benchmarks/modelling.py                      # everything (default fleet: 120 servers x 4 metrics)
    python benchmarks/modelling.py --data-root /tmp/cf  # reuse inputs/outputs already in /tmp/cf
    python benchmarks/modelling.py --skip-scale         # no 10,000-server runs
    python benchmarks/modelling.py --profile /tmp/cf1000   # per model and stage: CPU s, wall s, peak RSS
        (on a data root where ``kedro run --pipelines data_generation,etl`` ran; each model in its own
        process, so peak RSS is that model's; CPU includes the model's worker processes)

Figures are wall-clock on whatever machine runs this; on a shared machine compare ratios, not absolutes.
"""

import argparse
import json
import os
import resource
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
MODELS_TO_PROFILE = ("seasonal_naive", "changepoint_regression", "quantile_gbm", "gradient_boosting",
                     "random_forest", "prophet")  # fmt: skip


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


def _cpu_seconds() -> float:
    """CPU seconds of this process plus its live descendants (joblib/loky workers) from /proc."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tick = list(children.get(os.getpid(), [])), os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _profile_model(data_root: Path, model: str) -> dict:
    """Runs one model's backtest, fit and predict nodes on a data root: CPU s, wall s, peak RSS per stage."""
    from capacity_forecaster.pipelines.modelling.nodes import (  # noqa: PLC0415 (only for profiling)
        backtest_forecaster,
        fit_forecaster,
        plan_backtest,
        predict_forecaster,
        prepare_model_input,
    )

    params = yaml.safe_load((PROJECT / "conf" / "base" / "parameters_modelling.yml").read_text())["modelling"]
    base = yaml.safe_load((PROJECT / "conf" / "base" / "parameters.yml").read_text())
    calendar = {k: base["calendar"][k] for k in ("country", "month_end_business_days",
                                                 "quarter_end_business_days")}  # fmt: skip
    spec = {k: params[model][k] for k in ("enabled", "kind", "hyperparameters", "metric_jobs")}
    stages: dict[str, dict] = {}

    def timed(stage: str, func, *args, **kwargs):
        cpu, wall = _cpu_seconds(), time.perf_counter()
        result = func(*args, **kwargs)
        stages[stage] = {
            "cpu_s": round(_cpu_seconds() - cpu, 1),
            "wall_s": round(time.perf_counter() - wall, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }
        return result

    clean = pd.read_parquet(data_root / "03_primary" / "clean_server_metrics.parquet")
    inventory = pd.read_csv(data_root / "01_raw" / "server_inventory.csv")
    model_input = timed("prepare_model_input", prepare_model_input, clean, inventory)
    del clean
    b = params["backtest"]
    plan = plan_backtest(model_input, base["horizon"], b["n_origins"], b["holdout_share"],
                         b["min_train_days"], b["spacing_days"], b["min_origins"])  # fmt: skip
    _, stats = timed("backtest", backtest_forecaster, model_input, plan, **spec, **calendar,
                     backtest_folds=params[model]["backtest_folds"])  # fmt: skip
    fitted, summary = timed("fit", fit_forecaster, model_input, **spec, **calendar,
                            horizon=base["horizon"], min_history_days=params["min_history_days"])  # fmt: skip
    timed("predict", predict_forecaster, fitted, base["horizon"])
    return {"model": model, "series": int(model_input["unique_id"].nunique()), "stages": stages,
            "backtest_stats": stats, "fit_summary": summary}  # fmt: skip


def _profile(data_root: Path, models: list[str]) -> None:
    """Profiles each model in its own process and prints one row per model and stage."""
    rows = []
    for model in models:
        done = subprocess.run(
            [sys.executable, __file__, "--profile-one", model, str(data_root)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            sys.exit(f"profiling {model} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{model}: backtest {result['backtest_stats']}  fit {result['fit_summary']}")
        rows += [{"model": model, "stage": stage, **figures} for stage, figures in result["stages"].items()]
        print(f"  {model}: {result['stages']}", flush=True)  # kept if a later model fails or is stopped
    table = pd.DataFrame(rows)
    print(f"\nper model and stage on {data_root} ({result['series']:,} series):")
    print(table.to_string(index=False))
    print(table[table["stage"] != "prepare_model_input"].groupby("model")[["cpu_s", "wall_s"]].sum()
          .assign(peak_rss_gb=table.groupby("model")["peak_rss_gb"].max()).to_string())  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root", type=Path, help="reuse this data root (skips runs whose outputs exist)"
    )
    parser.add_argument("--skip-scale", action="store_true", help="skip the 10,000-server runs")
    parser.add_argument("--scale-servers", type=int, default=10_000)
    parser.add_argument("--profile", type=Path, help="profile every model per stage on this data root")
    parser.add_argument("--profile-models", nargs="+", default=list(MODELS_TO_PROFILE))
    parser.add_argument("--profile-one", nargs=2, metavar=("MODEL", "DATA_ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_one:
        print(json.dumps(_profile_model(Path(args.profile_one[1]), args.profile_one[0]), default=str))
        return
    if args.profile:
        _profile(args.profile, args.profile_models)
        return

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
