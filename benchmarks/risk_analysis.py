"""Benchmark of risk_analysis: accuracy on the default generated fleet, and speed on 10,000 servers.

Usage (from the project root; everything is written under a temp dir, never data/):

    python benchmarks/risk_analysis.py                      # both parts
    python benchmarks/risk_analysis.py --skip-speed         # accuracy only
    python benchmarks/risk_analysis.py --skip-accuracy --servers 10000 --history-days 1461
    python benchmarks/risk_analysis.py --skip-speed --chain-root DIR   # reuse a finished chain run in DIR

Accuracy: runs ``kedro run --pipelines data_generation,etl,modelling`` on the default parameters, then
``risk_analysis`` with the default breach-probability cut-offs and with cut-offs 0.3 and 0.7, and prints
precision and recall of the very_high and at-risk (very_high or high) flags against ``server_truth``, the
median days-to-breach errors and the risk backtest (flags at past origins vs what happened) when modelling
wrote ``backtest_forecasts``. When the etl or
modelling pipelines are not registered yet (``--forecasts stand-in``, or automatically), it says so and uses a
stand-in instead: a crude ETL (deduplicate, clip, long format) and a least-squares forecaster fitted on the
history only (trend + weekday + month-end/quarter-end terms, p10/p90 from the residual spread). The stand-in
never
sees future_metrics or server_truth, but its figures describe the risk rules on that forecaster, not on ours.

Speed: builds a fleet of ``--servers`` servers (3 models x 90 days of forecasts, ``--history-days`` of clean
history, an inventory with archetypes) in memory, times every node function, then times
``kedro run --pipelines risk_analysis`` on the same data written as files (Kedro start-up and Parquet I/O
included). The machine is shared (2 cores), so compare the figures with each other rather than as absolutes.
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
import pyarrow as pa

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.pipelines.risk_analysis import nodes
from capacity_forecaster.risk.rightsizing import RECOMMENDATION_COLUMNS
from capacity_forecaster.schema import METRICS

PROJECT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}


def project_parameters() -> dict:
    """The parameters a ``kedro run`` reads (conf/base, with conf/local over it), by the project's loader."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from capacity_forecaster import settings  # noqa: PLC0415

    return OmegaConfigLoader(conf_source=str(PROJECT / "conf"), **settings.CONFIG_LOADER_ARGS)["parameters"]


PARAMS = project_parameters()
CALENDAR = PARAMS["calendar"]  # country, month_end_business_days, quarter_end_business_days
Z90 = 1.2816  # standard normal 90 % quantile


def _kedro(data_root: Path, pipelines: str, *params: str) -> tuple[float, subprocess.CompletedProcess]:
    command = ["kedro", "run", "--pipelines", pipelines]
    if params:
        command += ["--params", ",".join(params)]
    start = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=PROJECT,
        env={**ENV, "CF_DATA_ROOT": str(data_root)},
        capture_output=True,
        text=True,
        check=False,
    )
    return time.perf_counter() - start, done


def _registered() -> set[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kedro.framework.startup import bootstrap_project as b; "
            f"b({str(PROJECT)!r}); from kedro.framework.project import pipelines; "
            "print('PIPELINES', *pipelines)",
        ],
        cwd=PROJECT,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("PIPELINES"))
    return set(line.split()[1:]) - {"__default__"}


# ------------------------------------------------------------------------------------------ stand-in chain
def _stand_in_clean(raw: pd.DataFrame) -> pd.DataFrame:
    wide = raw.assign(date=pd.to_datetime(raw["timestamp"]).dt.normalize()).drop(columns="timestamp")
    wide = wide.groupby(["server_id", "date"], as_index=False)[list(METRICS)].mean()
    long = wide.melt(id_vars=["server_id", "date"], var_name="metric", value_name="value")
    long["value"] = long["value"].clip(0, 100)
    return long.sort_values(["server_id", "metric", "date"], ignore_index=True).assign(
        is_imputed=False, is_clipped=False, is_outlier=False
    )


def _design(dates: pd.DatetimeIndex, origin: pd.Timestamp) -> np.ndarray:
    cal = calendar_features(dates, **CALENDAR)
    dow = np.eye(7)[cal["day_of_week"].to_numpy()][:, 1:]
    t = ((dates - origin).days.to_numpy() / 365.0)[:, None]
    flags = cal[["is_month_end", "is_end_of_quarter"]].to_numpy(dtype=float)
    return np.hstack([np.ones((len(dates), 1)), t, dow, flags])


def _stand_in_forecasts(clean: pd.DataFrame, horizon: int, fit_days: int = 365) -> pd.DataFrame:
    """Least squares on the last ``fit_days`` (trend, weekday, period-end terms); p10/p90 from residual sd."""
    last = clean["date"].max()
    recent = clean[clean["date"] > last - pd.Timedelta(days=fit_days)]
    grid = recent.pivot_table(index="date", columns=["server_id", "metric"], values="value")
    grid = grid.reindex(pd.date_range(grid.index.min(), last, freq="D"))
    y = grid.to_numpy()
    y = np.where(np.isnan(y), np.nanmedian(y, axis=0), y)
    x_fit = _design(grid.index, last)
    beta, *_ = np.linalg.lstsq(x_fit, y, rcond=None)
    sd = (y - x_fit @ beta).std(axis=0)
    future = pd.date_range(last + pd.Timedelta(days=1), periods=horizon, freq="D")
    p50 = np.clip(_design(future, last) @ beta, 0, 100)
    keys = grid.columns.to_frame(index=False)
    frame = pd.DataFrame(
        {
            "server_id": np.repeat(keys["server_id"].to_numpy(), horizon),
            "metric": np.repeat(keys["metric"].to_numpy(), horizon),
            "date": np.tile(future.to_numpy(), len(keys)),
            "model": "stand_in_least_squares",
            "p10": np.clip(p50 - Z90 * sd, 0, 100).T.ravel(),
            "p50": p50.T.ravel(),
            "p90": np.clip(p50 + Z90 * sd, 0, 100).T.ravel(),
            "is_selected": True,
        }
    )
    return frame


def _build_stand_in(data_root: Path) -> None:
    raw = pd.read_csv(data_root / "01_raw/server_metrics.csv.gz")
    clean = _stand_in_clean(raw)
    (data_root / "03_primary").mkdir(exist_ok=True)
    (data_root / "07_model_output").mkdir(exist_ok=True)
    clean.to_parquet(data_root / "03_primary/clean_server_metrics.parquet")
    _stand_in_forecasts(clean, horizon=90).to_parquet(data_root / "07_model_output/forecasts.parquet")


# -------------------------------------------------------------------------------------------------- accuracy
def _accuracy_row(evaluation: dict, summary: dict) -> dict[str, object]:
    server, series = evaluation["server_level"], evaluation["series_level"]
    clusters = summary["clusters"]
    return {
        "servers": evaluation["servers_scored"],
        "true at-risk servers": server["at_risk"]["actual"],
        "flagged at-risk servers": server["at_risk"]["predicted"],
        "server at-risk precision": server["at_risk"]["precision"],
        "server at-risk recall": server["at_risk"]["recall"],
        "server very_high precision": server["very_high"]["precision"],
        "server very_high recall": server["very_high"]["recall"],
        "series at-risk precision": series["at_risk"]["precision"],
        "series at-risk recall": series["at_risk"]["recall"],
        "series very_high precision": series["very_high"]["precision"],
        "series very_high recall": series["very_high"]["recall"],
        "server underutilized precision": server["underutilized"]["precision"],
        "server underutilized recall": server["underutilized"]["recall"],
        "days_to_80 median |error| (n)": f"{evaluation['days_to_80']['median_absolute_error_days']} "
        f"({evaluation['days_to_80']['n_both']})",
        "days_to_90 median |error| (n)": f"{evaluation['days_to_90']['median_absolute_error_days']} "
        f"({evaluation['days_to_90']['n_both']})",
        "days_to_80 median signed error": evaluation["days_to_80"]["median_error_days"],
        "clusters k (ARI vs archetype)": f"{clusters['k']} ({clusters['adjusted_rand_index']:.3f})",
        "consolidation moves": summary["savings"]["servers_moved"],
        "savings USD/month (share)": f"{summary['savings']['monthly_savings_usd']:,.0f} "
        f"({summary['savings']['savings_share']:.1%})",
        **_backtest_row(evaluation.get("backtest", {})),
    }


def _backtest_row(backtest: dict) -> dict[str, object]:
    """Server-level at-risk precision / recall / median lead time of the risk backtest (past origins)."""
    if not backtest.get("available"):
        return {"risk backtest": backtest.get("note", "not run")[:60]}
    row: dict[str, object] = {
        "risk backtest origins x fold days": f"{len(backtest['origins'])} x {backtest['fold_horizon_days']}"
    }
    for label in ("80", "90"):
        for source in ("forecast_or_recent", "forecast", "recent"):
            scores = backtest["thresholds"][label][source]["servers"]
            row[f"backtest {label} {source} P / R / lead"] = (
                f"{scores['precision']} / {scores['recall']} / {scores['lead_time']['median_days']}"
            )
    return row


def run_accuracy(data_root: Path, forecasts: str, reuse: bool = False) -> None:
    registered = _registered()
    chain = forecasts == "chain" and {"etl", "modelling"} <= registered
    data_root.mkdir(parents=True, exist_ok=True)
    print(f"\n== Accuracy on the default generated fleet (data root {data_root})")
    if reuse:
        print(
            "forecasts: the real chain, reusing an earlier data_generation,etl,modelling run in --chain-root"
        )
    elif chain:
        seconds, done = _kedro(data_root, "data_generation,etl,modelling")
        if done.returncode != 0:
            print(f"data_generation,etl,modelling FAILED after {seconds:.0f} s:\n{done.stderr[-3000:]}")
            chain = False
        else:
            print(
                "forecasts: the real chain, kedro run --pipelines data_generation,etl,modelling "
                f"({seconds:.0f} s)"
            )
    if not chain and not reuse:
        missing = sorted({"etl", "modelling"} - registered)
        print(
            f"forecasts: STAND-IN (registered: {sorted(registered)}; missing: {missing or 'none'}). "
            "Crude ETL + least-squares forecaster on the history only; not the modelling pipeline."
        )
        seconds, done = _kedro(data_root, "data_generation")
        if done.returncode != 0:
            raise SystemExit(f"data_generation failed:\n{done.stderr[-3000:]}")
        start = time.perf_counter()
        _build_stand_in(data_root)
        print(f"stand-in ETL + forecasts built in {time.perf_counter() - start:.1f} s")
    rows = {}
    for cutoff in (None, 0.3, 0.7):
        params = (
            [
                f"risk_analysis.high_probability_cutoff={cutoff}",
                f"risk_analysis.very_high_probability_cutoff={cutoff}",
            ]
            if cutoff
            else []
        )
        seconds, done = _kedro(data_root, "risk_analysis", *params)
        if done.returncode != 0:
            raise SystemExit(f"risk_analysis failed:\n{done.stderr[-5000:]}")
        evaluation = json.loads((data_root / "08_reporting/risk_evaluation.json").read_text())
        summary = json.loads((data_root / "08_reporting/risk_summary.json").read_text())
        rows["default cut-offs" if cutoff is None else f"cut-offs {cutoff}"] = {
            **_accuracy_row(evaluation, summary),
            "kedro run risk_analysis (s)": round(seconds, 1),
        }
    print(pd.DataFrame(rows).to_string())
    print("targets: server at-risk recall >= 0.95 with precision >= 0.85")


# ----------------------------------------------------------------------------------------------------- speed
def _labels(names: np.ndarray, codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    return pd.array(pa.array(names.astype(object), type=pa.string()).take(pa.array(codes)), dtype="str")


def synthetic_fleet(
    n_servers: int, history_days: int, horizon: int = 90, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """A fleet in the contract schemas: inventory, clean history and 3 models of forecasts (one selected)."""
    rng = np.random.default_rng(seed)
    servers = np.array([f"srv-{i:05d}" for i in range(n_servers)])
    archetype = rng.choice(["web", "database", "batch", "idle"], size=n_servers, p=[0.35, 0.25, 0.22, 0.18])
    base = {"web": 45.0, "database": 50.0, "batch": 30.0, "idle": 10.0}
    level = np.array([base[a] for a in archetype])[:, None] + rng.normal(0, 8, (n_servers, len(METRICS)))
    growth = np.where(
        rng.random(n_servers) < 0.15, rng.uniform(20, 45, n_servers), 0.0
    )  # points over the horizon
    vcpus = rng.choice([2, 4, 8, 16], size=n_servers)
    inventory = pd.DataFrame(
        {
            "server_id": _labels(servers, np.arange(n_servers)),
            "archetype": archetype,
            "vcpus": vcpus,
            "memory_gb": vcpus * 4,
            "hourly_cost_usd": vcpus * 0.048,
            "datacenter": rng.choice(["dc-east-1", "dc-east-2", "dc-west-1"], size=n_servers),
        }
    )
    n_series = n_servers * len(METRICS)
    last = pd.Timestamp("2025-12-31")
    hist_dates = pd.date_range(end=last, periods=history_days, freq="D")
    weekly = np.where(hist_dates.day_of_week >= 5, -8.0, 0.0)
    hist = (level.reshape(n_series, 1) + weekly[None, :]).astype(np.float32)
    hist += rng.normal(0, 3, (n_series, history_days)).astype(np.float32)
    series_codes = np.repeat(np.arange(n_series), history_days)
    clean = pd.DataFrame(
        {
            "server_id": _labels(servers, series_codes // len(METRICS)),
            "metric": _labels(np.array(METRICS), series_codes % len(METRICS)),
            "date": np.tile(hist_dates.to_numpy(), n_series),
            "value": np.clip(hist, 0, 100).ravel().astype(np.float64),
            "is_imputed": False,
            "is_clipped": False,
            "is_outlier": False,
        }
    )
    del hist
    future = pd.date_range(last + pd.Timedelta(days=1), periods=horizon, freq="D")
    ramp = (
        np.linspace(0, 1, horizon)[None, :]
        * np.repeat(growth, len(METRICS))[:, None]
        * (np.arange(n_series) % 4 == 0)[:, None]
    )
    p50 = np.clip(level.reshape(n_series, 1) + ramp, 0, 100)
    frames = []
    for model, shift, selected in (
        ("trees", 0.0, True),
        ("prophet", 2.0, False),
        ("seasonal_naive", -2.0, False),
    ):
        codes = np.repeat(np.arange(n_series), horizon)
        frames.append(
            pd.DataFrame(
                {
                    "server_id": _labels(servers, codes // len(METRICS)),
                    "metric": _labels(np.array(METRICS), codes % len(METRICS)),
                    "date": np.tile(future.to_numpy(), n_series),
                    "model": model,
                    "p10": np.clip(p50 + shift - 6, 0, 100).ravel(),
                    "p50": np.clip(p50 + shift, 0, 100).ravel(),
                    "p90": np.clip(p50 + shift + 6, 0, 100).ravel(),
                    "is_selected": selected,
                    "history_days": history_days,
                }
            )
        )
    return {
        "forecasts": pd.concat(frames, ignore_index=True),
        "backtest_forecasts": _synthetic_backtest(servers, level, hist_dates, rng),
        "clean_server_metrics": clean,
        "server_inventory": inventory,
    }


def _synthetic_backtest(
    servers: np.ndarray, level: np.ndarray, hist_dates: pd.DatetimeIndex, rng: np.random.Generator
) -> pd.DataFrame:
    """Two 30-day backtest folds per series (the selected model), actuals with AR(1) errors around p50."""
    fold_days, n_series = 30, level.size
    frames = []
    for origin in (hist_dates[-61], hist_dates[-31]):
        error = np.empty((n_series, fold_days))
        error[:, 0] = rng.normal(0, 4.7, n_series)
        for t in range(1, fold_days):
            error[:, t] = 0.7 * error[:, t - 1] + rng.normal(0, 4.7 * np.sqrt(1 - 0.49), n_series)
        p50 = np.repeat(level.reshape(n_series, 1), fold_days, axis=1)
        codes = np.repeat(np.arange(n_series), fold_days)
        frames.append(
            pd.DataFrame(
                {
                    "server_id": _labels(servers, codes // len(METRICS)),
                    "metric": _labels(np.array(METRICS), codes % len(METRICS)),
                    "origin": origin,
                    "date": np.tile(
                        pd.date_range(origin + pd.Timedelta(days=1), periods=fold_days).to_numpy(), n_series
                    ),
                    "h": np.tile(np.arange(1, fold_days + 1), n_series),
                    "model": "trees",
                    "p10": np.clip(p50 - 6, 0, 100).ravel(),
                    "p50": np.clip(p50, 0, 100).ravel(),
                    "p90": np.clip(p50 + 6, 0, 100).ravel(),
                    "actual": np.clip(p50 + error, 0, 100).ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def run_speed(n_servers: int, history_days: int, data_root: Path) -> None:
    data_root.mkdir(parents=True, exist_ok=True)
    print(f"\n== Speed: {n_servers:,} servers, {history_days} history days, 3 models x 90 forecast days")
    start = time.perf_counter()
    fleet = synthetic_fleet(n_servers, history_days)
    print(
        f"built in {time.perf_counter() - start:.1f} s: forecasts {len(fleet['forecasts']):,} rows, "
        f"clean_server_metrics {len(fleet['clean_server_metrics']):,} rows"
    )
    timings = {}

    def timed(name, func, *args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        out = func(*args, **kwargs)
        timings[name] = (time.perf_counter() - start, time.process_time() - cpu)
        return out

    risk_params = PARAMS["risk_analysis"]  # conf/base/parameters_risk_analysis.yml
    flag_keys = (
        "high_threshold",
        "very_high_threshold",
        "high_probability_cutoff",
        "very_high_probability_cutoff",
        "breach_min_days",
        "recent_window_days",
        "recent_min_days",
    )
    flags = {key: risk_params[key] for key in flag_keys}
    score = {
        **{key: risk_params[key] for key in ("forecast_model", "basis", "underutilized_threshold")},
        **flags,
        "stale_after_days": PARAMS["stale_after_days"],
        "horizon": PARAMS["horizon"],
        "near_term_days": risk_params["near_term_days"],
        **CALENDAR,
    }
    dependence = timed(
        "estimate_error_dependence",
        nodes.estimate_error_dependence,
        fleet["backtest_forecasts"],
        risk_params["fallback_correlation"],
        risk_params["dependence_min_pairs"],
    )
    risk = timed(
        "score_forecast_risk",
        nodes.score_forecast_risk,
        fleet["forecasts"],
        fleet["clean_server_metrics"],
        dependence,
        **score,
    )
    profiles = timed(
        "profile_utilisation",
        nodes.profile_utilisation,
        fleet["clean_server_metrics"],
        risk_params["profile_days"],
        risk_params["current_window_days"],
        risk_params["trend_window_days"],
        **CALENDAR,
    )
    clusters, report = timed(
        "cluster_servers",
        nodes.cluster_servers,
        profiles,
        fleet["server_inventory"],
        risk_params["cluster_k_min"],
        risk_params["cluster_k_max"],
        risk_params["cluster_sample_size"],
        risk_params["random_seed"],
    )
    plan, savings = timed(
        "plan_consolidation",
        nodes.plan_consolidation,
        risk,
        fleet["server_inventory"],
        risk_params["consolidation_ceiling"],
        risk_params["hours_per_month"],
        risk_params["consolidation_group_column"],
    )
    register = timed(
        "build_risk_register",
        nodes.build_risk_register,
        risk,
        profiles,
        plan,
        fleet["server_inventory"],
        pd.DataFrame(columns=list(RECOMMENDATION_COLUMNS)),
    )
    timed("summarise_risk", nodes.summarise_risk, register, report, savings, risk_params["top_servers"])
    backtest = timed(
        "backtest_risk_flags",
        nodes.backtest_risk_flags,
        fleet["backtest_forecasts"],
        fleet["clean_server_metrics"],
        dependence,
        **flags,
    )
    timed("evaluate_risk_flags", nodes.evaluate_risk_flags, register, pd.DataFrame(), backtest, dependence)
    total = sum(wall for wall, _ in timings.values())
    cpu_total = sum(cpu for _, cpu in timings.values())
    print(f"  {'node':<22} {'wall':>9} {'CPU':>9}  (CPU share)  CPU = process time, less sensitive to load")
    for name, (seconds, cpu) in timings.items():
        print(f"  {name:<22} {seconds:7.2f} s {cpu:7.2f} s  ({cpu / cpu_total:5.1%})")
    tiers = register.drop_duplicates("server_id")["server_risk_level"].value_counts().to_dict()
    print(
        f"  {'nodes in memory':<22} {total:7.2f} s {cpu_total:7.2f} s  target < 30 s; server tiers {tiers}, "
        f"{savings['servers_moved']} moves, k={report['k']}"
    )

    for folder, name, frame in (
        ("07_model_output", "forecasts.parquet", fleet["forecasts"]),
        ("07_model_output", "backtest_forecasts.parquet", fleet["backtest_forecasts"]),
        ("03_primary", "clean_server_metrics.parquet", fleet["clean_server_metrics"]),
    ):
        (data_root / folder).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(data_root / folder / name)
    (data_root / "01_raw").mkdir(exist_ok=True)
    fleet["server_inventory"].to_csv(data_root / "01_raw/server_inventory.csv", index=False)
    del fleet
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, done = _kedro(data_root, "risk_analysis")
    if done.returncode != 0:
        raise SystemExit(f"risk_analysis failed:\n{done.stderr[-5000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    print(
        f"  {'kedro run (files)':<22} {seconds:7.2f} s {cpu:7.2f} s  (Kedro start-up + Parquet I/O included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--history-days", type=int, default=1461)
    parser.add_argument("--forecasts", choices=["chain", "stand-in"], default="chain")
    parser.add_argument("--chain-root", type=Path, help="reuse this data root of an earlier chain run")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print("Shared 2-core machine: timings are noisy; compare them with each other.")
    with tempfile.TemporaryDirectory(prefix="cf-risk-bench-") as tmp:
        if not args.skip_accuracy:
            if args.chain_root:
                run_accuracy(args.chain_root, "chain", reuse=True)
            else:
                run_accuracy(Path(tmp) / "accuracy", args.forecasts)
        if not args.skip_speed:
            run_speed(args.servers, args.history_days, Path(tmp) / "speed")


if __name__ == "__main__":
    main()
