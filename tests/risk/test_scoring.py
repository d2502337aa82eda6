"""Real-fleet cases through score_forecast_risk and the register: recent days, stale and ragged series."""

import logging

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.pipelines.risk_analysis.nodes import (
    build_risk_register,
    cluster_servers,
    plan_consolidation,
    profile_utilisation,
)
from tests.pipelines.risk_analysis.inputs import (
    ANALYSIS_DATE,
    CALENDAR,
    archetype_history,
    crossing_series,
    flat_server,
    forecast_frame,
    history_frame,
    inventory_frame,
    rightsizing_frame,
    score,
)


def _register(scored: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    inventory = inventory_frame({s: (4, 16, 0.2) for s in scored["server_id"].unique()})
    plan, _ = plan_consolidation(scored, inventory, 75.0, 730.0, None)
    profiles = profile_utilisation(history, 365, 7, 180, **CALENDAR)
    register = build_risk_register(scored, profiles, plan, inventory, rightsizing_frame())
    return register.set_index(["server_id", "metric"])


def test_recent_days_above_the_threshold_flag_a_server_the_forecast_misses():
    # the real case: memory at 93-96 % on 4 of its last 10 days, forecast calm (p90 60 %)
    memory = np.full(60, 55.0)
    memory[[-10, -7, -4, -2]] = [93.0, 96.0, 94.0, 95.0]
    history = history_frame({("vm", "memory_p95"): memory, ("vm", "cpu_p95"): np.full(60, 20.0)})
    forecasts = forecast_frame(
        {("vm", "memory_p95"): np.full(90, 60.0), ("vm", "cpu_p95"): np.full(90, 30.0)}
    )
    scored = score(forecasts, history)
    row = scored.set_index("metric").loc["memory_p95"]
    assert (row["recent_days_above_90"], row["recent_days_above_80"]) == (4, 4)
    assert row["prob_above_90_forecast"] < 0.01 and row["risk_level"] == "very_high"
    assert (
        "already above 90 % on 4 recent day(s)"
        in _register(scored, history).loc[("vm", "memory_p95"), "reason"]
    )
    # one day above is not enough with recent_min_days = 2, and an old spike outside the window does not count
    memory[[-10, -7, -4]] = 55.0
    memory[-30] = 99.0
    history = history_frame({("vm", "memory_p95"): memory, ("vm", "cpu_p95"): np.full(60, 20.0)})
    alone = score(forecasts, history, exceedance_window_days=0).set_index("metric").loc["memory_p95"]
    assert alone["risk_level"] == "normal" and alone["prob_above_80_history"] == 0


def test_single_day_excursions_give_a_breach_probability_at_their_rate():
    # memory calm (forecast p90 60 %) but one day above 80 % in each of the last two 14-day stretches: 2
    # episodes in 28 observed days, so a day starts one with r = 1/14; over 14 days 1 - (13/14)^14 = 0.6451,
    # over 90 days 0.9987. The median breach day given a breach: first d with 1 - (13/14)^d >= 0.6451 / 2,
    # d = ceil(ln(1 - 0.3226) / ln(13/14)) = ceil(5.26) = 6. The 99 % day 40 days ago is outside the window.
    memory = np.full(60, 40.0)
    memory[[-20, -6, -40]] = [85.0, 84.0, 99.0]
    history = history_frame({("vm", "memory_p95"): memory, ("vm", "cpu_p95"): np.full(60, 20.0)})
    forecasts = forecast_frame(
        {("vm", "memory_p95"): np.full(90, 60.0), ("vm", "cpu_p95"): np.full(90, 30.0)}
    )
    row = score(forecasts, history, horizon=14, near_term_days=14).set_index("metric").loc["memory_p95"]
    assert row["prob_above_80_history"] == pytest.approx(1 - (13 / 14) ** 14, abs=1e-4)
    assert row["prob_above_80_forecast"] < 0.01 and row["prob_above_80"] == row["prob_above_80_history"]
    assert row["expected_breach_date_80"] == ANALYSIS_DATE + pd.Timedelta(days=6)
    assert row["prob_above_90_history"] == 0 and row["recent_days_above_80"] == 1
    assert row["risk_level"] == "high"  # 0.65 >= the 0.5 cut-off, though only one recent day is above
    longer = score(forecasts, history).set_index("metric").loc["memory_p95"]  # 90 days
    assert longer["prob_above_80"] == pytest.approx(1 - (13 / 14) ** 90, abs=1e-4)
    # two consecutive days above are one episode: r = 1/28, 1 - (27/28)^14 = 0.3990 (normal at 0.5)
    memory[[-20, -6]] = 40.0
    memory[[-6, -5]] = 85.0
    history = history_frame({("vm", "memory_p95"): memory, ("vm", "cpu_p95"): np.full(60, 20.0)})
    run = score(forecasts, history, horizon=14, near_term_days=14).set_index("metric").loc["memory_p95"]
    assert run["prob_above_80"] == pytest.approx(1 - (27 / 28) ** 14, abs=1e-4)
    assert run["risk_level"] == "high"  # through the recent-days rule: 2 of the last 14 days above 80 %


def test_stale_server_is_not_tiered_and_asks_to_check_monitoring():
    history = history_frame({("live", "cpu_p95"): np.full(40, 50.0)})
    silent = history_frame({("silent", m): np.full(30, 95.0) for m in ("cpu_p95", "memory_p95")})
    silent["date"] -= pd.Timedelta(days=10)  # last day 10 days before the analysis date
    history = pd.concat([history, silent], ignore_index=True)
    forecasts = forecast_frame(
        {("live", "cpu_p95"): np.full(90, 50.0), ("silent", "cpu_p95"): np.full(90, 95.0)}
    )
    scored = score(forecasts, history, stale_after_days=7)
    assert set(zip(scored["server_id"], scored["metric"], strict=True)) == {
        ("live", "cpu_p95"),
        ("silent", "cpu_p95"),
        ("silent", "memory_p95"),  # in the register although modelling gave it no forecast
    }
    register = _register(scored, history)
    silent_cpu = register.loc[("silent", "cpu_p95")]
    assert silent_cpu["stale"] and silent_cpu["days_silent"] == 10
    assert silent_cpu["last_day"] == ANALYSIS_DATE - pd.Timedelta(days=10)
    assert pd.isna(silent_cpu["risk_level"]) and pd.isna(silent_cpu["prob_above_80"])
    assert silent_cpu["action"] == silent_cpu["server_action"] == "check monitoring"
    assert "no data for 10 days" in silent_cpu["reason"]
    live = register.loc[("live", "cpu_p95")]
    assert not live["stale"] and live["days_silent"] == 0 and live["risk_level"] == "normal"


def test_ragged_end_counts_days_from_the_fleet_analysis_date():
    # 'late' stopped 3 days before the fleet; its forecast starts on its own next day and crosses on its day 5
    history = history_frame({("a", "cpu_p95"): np.full(30, 50.0)})
    late = history_frame({("late", "cpu_p95"): np.full(30, 50.0)})
    late["date"] -= pd.Timedelta(days=3)
    forecasts = forecast_frame({("a", "cpu_p95"): np.full(90, 50.0)})
    own = forecast_frame({("late", "cpu_p95"): crossing_series(5, 95.0)}, spread=0.0)
    own["date"] -= pd.Timedelta(days=3)
    scored = score(pd.concat([forecasts, own]), pd.concat([history, late])).set_index("server_id")
    assert scored.loc["late", "analysis_date"] == ANALYSIS_DATE
    assert scored.loc["late", "days_to_90"] == 2  # own day 5 = fleet day 2
    assert scored.loc["late", "forecast_days"] == 87  # its 3 first forecast days are already past
    assert scored.loc["late", "prob_above_90"] == 1.0
    assert scored.loc["late", "expected_breach_date_90"] == ANALYSIS_DATE + pd.Timedelta(days=2)


def test_near_term_days_longer_than_the_horizon_is_clipped_with_a_warning(caplog):
    forecasts = forecast_frame({("s", "cpu_p95"): crossing_series(80, 70.0)})
    with caplog.at_level(logging.WARNING):
        row = score(forecasts, near_term_days=120).iloc[0]
    assert "near_term_days=120 is longer than the horizon" in caplog.text
    assert row["peak_p90_near"] == row["peak_p90_horizon"] == 70.0


def test_history_days_come_from_the_forecasts_or_the_clean_history():
    forecasts = forecast_frame(flat_server("s", {}))
    assert (score(forecasts)["history_days"] == 30).all()  # quiet history: 30 observed days
    assert (score(forecasts.assign(history_days=12))["history_days"] == 12).all()


def test_clusters_on_77_days_without_a_quarter_end(caplog):
    rng = np.random.default_rng(2)
    last = pd.Timestamp("2025-12-19")  # 77 days back is 2025-10-04: no end-of-quarter window
    series = {
        (f"{a}-{i}", m): v
        for a in ("web", "idle")
        for i in range(4)
        for m, v in archetype_history(a, rng, 77).items()
    }
    history = history_frame(series)
    history["date"] += last - ANALYSIS_DATE
    with caplog.at_level(logging.WARNING):
        profiles = profile_utilisation(history, 365, 7, 180, **CALENDAR)
        clusters, report = cluster_servers(
            profiles, inventory_frame({s: (4, 16, 0.2) for s, _ in series}), 2, 4, 100, 0
        )
    assert profiles["quarter_end_uplift"].isna().all() and profiles["month_end_uplift"].notna().all()
    assert "quarter_end_uplift" in caplog.text
    assert not any(f.startswith("quarter_end_uplift") for f in report["features"])
    assert report["k"] == 2 and clusters["server_id"].nunique() == 8


def test_unknown_servers_cluster_without_archetype_and_keep_the_index_on_the_others():
    rng = np.random.default_rng(3)
    archetypes = {f"{a}-{i}": a for a in ("web", "idle") for i in range(4)}
    series = {(s, m): v for s, a in archetypes.items() for m, v in archetype_history(a, rng, 120).items()}
    profiles = profile_utilisation(history_frame(series), 365, 7, 180, **CALENDAR)
    known = {s: a for s, a in archetypes.items() if s != "web-3"}
    inventory = inventory_frame({s: (4, 16, 0.2) for s in known}, archetype=known)
    clusters, report = cluster_servers(profiles, inventory, 2, 4, 100, 0)
    assert clusters.set_index("server_id").loc["web-3", "archetype"] == "unknown"
    assert report["adjusted_rand_index"] == pytest.approx(1.0)
    assert "1 server(s) without a known archetype" in report["adjusted_rand_index_note"]


def test_a_server_with_only_the_fallback_forecast_is_never_underutilized():
    # onboarded 5 days ago at 2 % cpu: too little history to consolidate on; with a model forecast it would be
    history = history_frame({("new", "cpu_p95"): np.full(5, 2.0)})
    quiet = score(forecast_frame({("new", "cpu_p95"): np.full(90, 4.0)}, model="fallback"), history)
    assert quiet["risk_level"].tolist() == ["normal"]
    modelled = score(forecast_frame({("new", "cpu_p95"): np.full(90, 4.0)}), history)
    assert modelled["risk_level"].tolist() == ["underutilized"]
