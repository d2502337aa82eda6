"""risk_analysis through a KedroSession, from input files written into data_root (as after modelling)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from capacity_forecaster.pipelines.reporting.pipeline import create_pipeline as reporting_pipeline
from capacity_forecaster.schema import METRICS
from tests.pipelines.reporting.sample_inputs import make_reporting_inputs
from tests.pipelines.reporting.test_pipeline import PARAMS as REPORTING_PARAMS

from .inputs import (
    HORIZON,
    archetype_history,
    crossing_series,
    forecast_frame,
    history_frame,
    inventory_frame,
)

ARCHETYPES = {f"{a}-{i}": a for a in ("web", "batch", "idle") for i in range(4)}
BREACH_DAY = {"web-0": (40, 92.0), "batch-1": (25, 85.0)}  # cpu p90 crossing day and level


def _write_inputs(data_root: Path, with_truth: bool) -> None:
    rng = np.random.default_rng(11)
    history, forecasts = {}, {}
    for server, archetype in ARCHETYPES.items():
        for metric, values in archetype_history(archetype, rng, 200).items():
            history[(server, metric)] = values
            uplift = 5.0 if archetype == "idle" else 25.0  # only the idle servers stay below 40 %
            forecasts[(server, metric)] = np.full(HORIZON, values[-28:].mean() + uplift)
    for server, (day, level) in BREACH_DAY.items():
        forecasts[(server, "cpu_p95")] = crossing_series(day, level)
    selected = forecast_frame(forecasts)
    baseline = selected.assign(model="seasonal_naive", is_selected=False, p90=selected["p90"] - 30)
    inventory = inventory_frame({s: (8, 32, 0.4) for s in ARCHETYPES}, archetype=ARCHETYPES)
    for folder in ("01_raw", "03_primary", "07_model_output"):
        (data_root / folder).mkdir()
    pd.concat([selected, baseline], ignore_index=True).to_parquet(
        data_root / "07_model_output/forecasts.parquet"
    )
    history_frame(history).to_parquet(data_root / "03_primary/clean_server_metrics.parquet")
    inventory.to_csv(data_root / "01_raw/server_inventory.csv", index=False)
    if with_truth:
        truth = pd.DataFrame(
            [
                {
                    "server_id": s,
                    "metric": m,
                    "risk_level": "underutilized" if a == "idle" else "normal",
                    "days_to_80": pd.NA,
                    "days_to_90": pd.NA,
                }
                for s, a in ARCHETYPES.items()
                for m in METRICS
            ]
        ).astype({"days_to_80": "Int64", "days_to_90": "Int64"})
        truth.loc[
            (truth["server_id"] == "web-0") & (truth["metric"] == "cpu_p95"),
            ["risk_level", "days_to_80", "days_to_90"],
        ] = ["very_high", 38, 41]
        truth.loc[
            (truth["server_id"] == "web-1") & (truth["metric"] == "cpu_p95"), ["risk_level", "days_to_80"]
        ] = ["high", 60]
        truth.to_parquet(data_root / "01_raw/server_truth.parquet")


def test_risk_analysis_runs_from_persisted_inputs(kedro_session, data_root):
    _write_inputs(data_root, with_truth=True)
    kedro_session().run(pipeline_names=["risk_analysis"])

    register = pd.read_parquet(data_root / "07_model_output/risk_register.parquet")
    assert len(register) == len(ARCHETYPES) * len(METRICS)
    assert {
        "server_id",
        "analysis_date",
        "risk_level",
        "projected_utilization",
        "days_to_80",
        "days_to_90",
        "savings_potential",
        "action",
        "reason",
    } <= set(register.columns)
    web0 = register[(register["server_id"] == "web-0") & (register["metric"] == "cpu_p95")].iloc[0]
    assert (web0["risk_level"], web0["days_to_90"], web0["action"]) == ("very_high", 40, "upgrade now")
    tiers = register.drop_duplicates("server_id").set_index("server_id")["server_risk_level"]
    assert tiers["batch-1"] == "high"
    assert (tiers[[s for s, a in ARCHETYPES.items() if a == "idle"]] == "underutilized").all()

    plan = pd.read_parquet(data_root / "07_model_output/consolidation_plan.parquet")
    assert len(plan) == 3 and set(plan["server_id"]) | set(plan["target_server_id"]) == {
        f"idle-{i}" for i in range(4)
    }
    clusters = pd.read_parquet(data_root / "07_model_output/server_clusters.parquet")
    assert set(clusters["server_id"]) == set(ARCHETYPES)

    summary = json.loads((data_root / "08_reporting/risk_summary.json").read_text())
    assert summary["server_tiers"] == {"very_high": 1, "high": 1, "normal": 6, "underutilized": 4}
    assert summary["top_at_risk_servers"][0]["first_date_above_90"] == "2026-02-09"
    assert summary["savings"]["monthly_savings_usd"] == pytest.approx(3 * 0.4 * 730)
    assert summary["clusters"]["adjusted_rand_index"] == pytest.approx(1.0)

    evaluation = json.loads((data_root / "08_reporting/risk_evaluation.json").read_text())
    assert evaluation["truth_available"] is True
    at_risk = evaluation["server_level"]["at_risk"]  # predicted {web-0, batch-1}, true {web-0, web-1}
    assert (at_risk["precision"], at_risk["recall"]) == (0.5, 0.5)
    assert evaluation["days_to_90"]["median_absolute_error_days"] == 1.0


def test_risk_analysis_without_truth_reports_that_there_is_none(kedro_session, data_root):
    _write_inputs(data_root, with_truth=False)
    kedro_session().run(pipeline_names=["risk_analysis"])
    evaluation = json.loads((data_root / "08_reporting/risk_evaluation.json").read_text())
    assert evaluation["truth_available"] is False
    assert (data_root / "07_model_output/risk_register.parquet").exists()


def _write_real_fleet(data_root: Path) -> None:
    """77 days ending 2025-12-19 (no end-of-quarter day), horizon 14, one stale server, one server missing
    from the inventory, ragged ends, and backtest forecasts from two past origins."""
    rng = np.random.default_rng(3)
    last = pd.Timestamp("2025-12-19")
    dates = pd.date_range(end=last, periods=77, freq="D")
    servers = {"vm-1": 30.0, "vm-2": 60.0, "vm-3": 20.0, "vm-hot": 70.0, "vm-silent": 50.0, "vm-new": 25.0}
    history, forecasts, backtest = [], [], []
    for server, level in servers.items():
        for metric in ("cpu_p95", "memory_p95"):
            values = np.clip(level + rng.normal(0, 3, len(dates)), 0, 100)
            end = {"vm-silent": 20, "vm-1": 2}.get(server, 0)  # stale; ragged (2 days early)
            own = dates[: len(dates) - end]
            if server == "vm-hot" and metric == "memory_p95":
                values[-10:] = [60, 93, 70, 96, 70, 94, 70, 95, 70, 70]  # 4 of the last 10 days above 90
            history.append(
                pd.DataFrame(
                    {"server_id": server, "metric": metric, "date": own, "value": values[: len(own)]}
                )
            )
            future = pd.date_range(own[-1] + pd.Timedelta(days=1), periods=14, freq="D")
            if server != "vm-silent":  # modelling does not forecast a stale server from its old last day
                forecasts.append(
                    pd.DataFrame(
                        {
                            "server_id": server,
                            "metric": metric,
                            "date": future,
                            "model": "trees",
                            "p10": level - 5,
                            "p50": level,
                            "p90": level + 5,
                            "is_selected": True,
                            "history_days": len(own),
                        }
                    )
                )
            for origin in (dates[-29], dates[-15]):
                days = pd.date_range(origin + pd.Timedelta(days=1), periods=14, freq="D")
                actual = pd.Series(values, index=dates).reindex(days).to_numpy()
                backtest.append(
                    pd.DataFrame(
                        {
                            "server_id": server,
                            "metric": metric,
                            "origin": origin,
                            "date": days,
                            "h": np.arange(1, 15),
                            "model": "trees",
                            "p10": level - 5,
                            "p50": level,
                            "p90": level + 5,
                            "actual": actual,
                        }
                    )
                )
    for folder in ("01_raw", "03_primary", "07_model_output"):
        (data_root / folder).mkdir()
    pd.concat(history).assign(is_imputed=False).to_parquet(
        data_root / "03_primary/clean_server_metrics.parquet"
    )
    pd.concat(forecasts).to_parquet(data_root / "07_model_output/forecasts.parquet")
    pd.concat(backtest).to_parquet(data_root / "07_model_output/backtest_forecasts.parquet")
    inventory = inventory_frame({s: (4, 16, 0.2) for s in servers if s != "vm-new"})
    inventory.assign(archetype="web").to_csv(data_root / "01_raw/server_inventory.csv", index=False)


def test_real_fleet_runs_through_risk_analysis_and_reporting(kedro_session, data_root):
    _write_real_fleet(data_root)
    kedro_session(runtime_params={"horizon": 14}).run(pipeline_names=["risk_analysis"])

    register = pd.read_parquet(data_root / "07_model_output/risk_register.parquet").set_index(
        ["server_id", "metric"]
    )
    assert {
        "prob_above_80",
        "prob_above_90",
        "expected_breach_date_80",
        "expected_breach_date_90",
        "history_days",
        "stale",
        "last_day",
        "days_silent",
    } <= set(register.columns)
    assert register.loc[("vm-silent", "cpu_p95"), "action"] == "check monitoring"
    assert register.loc[("vm-silent", "cpu_p95"), "days_silent"] == 20
    assert register.loc[("vm-hot", "memory_p95"), "risk_level"] == "very_high"
    assert register.loc[("vm-1", "cpu_p95"), "history_days"] == 75
    assert not register.loc[("vm-new", "cpu_p95"), "in_inventory"]
    assert (register["analysis_date"] == pd.Timestamp("2025-12-19")).all()
    summary = json.loads((data_root / "08_reporting/risk_summary.json").read_text())
    assert [s["server_id"] for s in summary["stale_servers"]] == ["vm-silent"]
    assert summary["servers_not_in_inventory"] == ["vm-new"]
    assert {"server_id": "vm-new", "reason": "not in server_inventory: size and cost unknown"} in summary[
        "savings"
    ]["excluded"]
    evaluation = json.loads((data_root / "08_reporting/risk_evaluation.json").read_text())
    assert evaluation["truth_available"] is False
    backtest = evaluation["backtest"]
    assert backtest["available"] and backtest["fold_horizon_days"] == 14 and backtest["cases"] == 24
    assert evaluation["error_dependence"]["by_metric"]["cpu_p95"]["source"] == "backtest"

    inputs = make_reporting_inputs()
    inputs.update(
        risk_register=register.reset_index(),
        clean_server_metrics=pd.read_parquet(data_root / "03_primary/clean_server_metrics.parquet"),
        forecasts=pd.read_parquet(data_root / "07_model_output/forecasts.parquet"),
        server_inventory=pd.read_csv(data_root / "01_raw/server_inventory.csv"),
        server_clusters=pd.read_parquet(data_root / "07_model_output/server_clusters.parquet"),
        consolidation_plan=pd.read_parquet(data_root / "07_model_output/consolidation_plan.parquet"),
        risk_summary=summary,
    )
    catalog = DataCatalog()
    for name, data in inputs.items():
        catalog[name] = data
    for leaf, value in {**REPORTING_PARAMS, "heatmap_servers": 10}.items():
        catalog[f"params:reporting.{leaf}"] = value
    report = SequentialRunner().run(reporting_pipeline(), catalog)["capacity_report"].load()
    assert "stale servers (check monitoring)" in report and "prob_above_90" in report
