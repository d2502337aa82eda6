"""risk_analysis through a KedroSession, from input files written into data_root (as after modelling)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.schema import METRICS

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
