"""risk_analysis nodes on constructed series: tier rules, days to breach, packing, clusters, evaluation."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.pipelines.risk_analysis.nodes import (
    build_risk_register,
    cluster_servers,
    evaluate_risk_flags,
    plan_consolidation,
    profile_utilisation,
    summarise_risk,
)
from capacity_forecaster.schema import METRICS

from .inputs import (
    ANALYSIS_DATE,
    CALENDAR,
    DEPENDENCE,
    archetype_history,
    crossing_series,
    flat_server,
    forecast_frame,
    history_frame,
    inventory_frame,
    quiet_history,
    rightsizing_frame,
    score,
)

NO_BACKTEST = {"available": False, "note": "none"}


def _score(forecasts: pd.DataFrame, **overrides) -> pd.DataFrame:
    return score(forecasts, **overrides).set_index(["server_id", "metric"])


def test_crossing_90_on_day_40_is_very_high_with_days_to_90_40():
    scored = _score(forecast_frame({("s1", "cpu_p95"): crossing_series(40, 92.0)}))
    row = scored.loc[("s1", "cpu_p95")]
    assert row["risk_level"] == "very_high"
    assert row["days_to_90"] == 40
    assert row["days_to_80"] == 40
    assert row["first_date_above_90"] == ANALYSIS_DATE + pd.Timedelta(days=40)
    assert row["analysis_date"] == ANALYSIS_DATE
    assert row["projected_utilization"] == 92.0
    assert row["peak_p90_near"] == 50.0 and row["peak_p90_horizon"] == 92.0  # day 40 is outside the 30 days


def test_day_1_is_the_first_forecast_day():
    scored = _score(forecast_frame({("s1", "cpu_p95"): crossing_series(1, 85.0)}))
    assert scored.loc[("s1", "cpu_p95"), "days_to_80"] == 1
    assert pd.isna(scored.loc[("s1", "cpu_p95"), "days_to_90"])


def test_peak_between_80_and_90_is_high():
    scored = _score(forecast_frame({("s1", "memory_p95"): crossing_series(70, 85.0)}))
    row = scored.loc[("s1", "memory_p95")]
    assert (row["risk_level"], row["days_to_80"]) == ("high", 70)
    assert pd.isna(row["days_to_90"]) and pd.isna(row["first_date_above_90"])


def test_exactly_at_the_threshold_is_not_above_it():
    certain = _score(forecast_frame({("s1", "cpu_p95"): np.full(90, 80.0)}, spread=0.0)).loc[
        ("s1", "cpu_p95")
    ]
    assert certain["risk_level"] == "normal" and certain["prob_above_80"] == 0.0
    assert pd.isna(certain["days_to_80"])


def test_a_p90_on_the_threshold_every_day_is_likely_to_breach_once():
    # p90 = 80 on 90 days: 10 % a day; even strongly dependent days make a breach more likely than not
    row = _score(forecast_frame({("s1", "cpu_p95"): np.full(90, 80.0)})).loc[("s1", "cpu_p95")]
    assert pd.isna(row["days_to_80"]) and row["prob_above_80"] > 0.5 and row["risk_level"] == "high"


def test_underutilized_uses_the_mean_not_the_peak():
    low_mean_high_peak = np.r_[np.full(80, 30.0), np.full(10, 75.0)]  # mean 35, peak 75
    scored = _score(
        forecast_frame({("s1", "cpu_p95"): low_mean_high_peak, ("s1", "memory_p95"): np.full(90, 45.0)})
    )
    assert scored.loc[("s1", "cpu_p95"), "risk_level"] == "underutilized"
    assert scored.loc[("s1", "memory_p95"), "risk_level"] == "normal"


def test_a_breach_after_the_horizon_does_not_count():
    scored = _score(
        forecast_frame({("s1", "cpu_p95"): crossing_series(61, 95.0)}), horizon=60, near_term_days=30
    )
    assert scored.loc[("s1", "cpu_p95"), "risk_level"] == "normal"
    assert scored.loc[("s1", "cpu_p95"), "forecast_days"] == 60


def test_server_tier_is_the_most_severe_metric():
    series = {
        **flat_server("hot", {"cpu_p95": 10.0}),
        ("hot", "memory_p95"): crossing_series(5, 95.0),
        **flat_server("mixed", {"cpu_p95": 10.0, "memory_p95": 60.0}),
        **flat_server("cold", {}),
    }
    scored = _score(forecast_frame(series)).reset_index()
    tiers = scored.groupby("server_id")["server_risk_level"].unique().map(list).to_dict()
    assert tiers == {"hot": ["very_high"], "mixed": ["normal"], "cold": ["underutilized"]}


def test_basis_sets_projected_utilization_and_days_not_the_tier():
    forecasts = forecast_frame({("s1", "cpu_p95"): np.full(90, 93.0)}, spread=5.0)  # p50 = 88
    p90 = _score(forecasts, basis="p90").loc[("s1", "cpu_p95")]
    p50 = _score(forecasts, basis="p50").loc[("s1", "cpu_p95")]
    assert p90["risk_level"] == p50["risk_level"] == "very_high"  # 30 % a day above 90
    assert (p50["projected_utilization"], p50["peak_p90_horizon"], p90["projected_utilization"]) == (
        88.0,
        93.0,
        93.0,
    )
    assert p50["days_to_90_p90"] == 1 and pd.isna(p50["days_to_90_p50"]) and pd.isna(p50["days_to_90"])


def test_forecast_model_chooses_the_rows():
    selected = forecast_frame({("s1", "cpu_p95"): np.full(90, 50.0)}, model="trees", selected=True)
    canvas = forecast_frame({("s1", "cpu_p95"): np.full(90, 95.0)}, model="canvas", selected=False)
    forecasts = pd.concat([selected, canvas], ignore_index=True)
    assert _score(forecasts).loc[("s1", "cpu_p95"), "model"] == "trees"
    row = _score(forecasts, forecast_model="canvas").loc[("s1", "cpu_p95")]
    assert (row["model"], row["risk_level"]) == ("canvas", "very_high")


def test_breach_calendar_flags():
    series = {
        ("q", "cpu_p95"): crossing_series(86, 85.0),  # 2026-03-27: end-of-quarter window
        ("h", "cpu_p95"): crossing_series(19, 85.0),  # 2026-01-19: Martin Luther King Jr. Day
        ("n", "cpu_p95"): crossing_series(40, 85.0),
    }  # 2026-02-09: an ordinary Monday
    scored = _score(forecast_frame(series))
    flags = scored[["breach_in_quarter_end", "breach_on_holiday"]].droplevel("metric").astype(bool)
    assert flags.to_dict("index") == {
        "h": {"breach_in_quarter_end": False, "breach_on_holiday": True},
        "n": {"breach_in_quarter_end": False, "breach_on_holiday": False},
        "q": {"breach_in_quarter_end": True, "breach_on_holiday": False},
    }


def test_empty_forecasts_is_a_clear_error():
    one = forecast_frame({("s1", "cpu_p95"): np.full(90, 50.0)})
    with pytest.raises(ValueError, match="forecasts is empty: run the modelling pipeline"):
        score(one.iloc[0:0], history=quiet_history(one))


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"high_threshold": 90.0, "very_high_threshold": 80.0}, "thresholds out of order"),
        ({"underutilized_threshold": 85.0}, "thresholds out of order"),
        ({"very_high_threshold": 120.0}, "thresholds out of order"),
        ({"basis": "p75"}, "basis must be one of"),
        ({"forecast_model": "canvas"}, "forecasts has no rows of model 'canvas'"),
    ],
)
def test_bad_parameters_are_clear_errors(thresholds, message):
    forecasts = forecast_frame({("s1", "cpu_p95"): np.full(90, 50.0)})
    with pytest.raises(ValueError, match=message):
        score(forecasts, **thresholds)


def test_two_selected_models_for_one_series_is_an_error():
    one = forecast_frame({("s1", "cpu_p95"): np.full(90, 50.0)})
    with pytest.raises(ValueError, match="exactly one model per server and metric must be selected"):
        score(pd.concat([one, one.assign(model="other")]))


# ------------------------------------------------------------------------------------------- consolidation
# Hand-checked first-fit decreasing (ceiling 75 %): A (16 vCPU, 64 GB) opens first with 4.8 vCPU /
# 19.2 GB used of 12 / 48; B, C, D (2.8+2.4+1.52 vCPU) fit on A, leaving 0.48 vCPU; E needs 1.0 and opens
# a host; F (0.4) still fits on A; G (0.1 vCPU, 2.8 GB) no longer fits A (0.08 left) and goes to E.
# I is alone in dc-2,
# and H is not a candidate (cpu 60 % -> normal).
PACKING = {
    "A": ((16, 64, 0.80), {"cpu_p95": 30.0, "memory_p95": 30.0}),
    "B": ((8, 32, 0.40), {"cpu_p95": 35.0, "memory_p95": 20.0}),
    "C": ((8, 32, 0.38), {"cpu_p95": 30.0, "memory_p95": 10.0}),
    "D": ((4, 16, 0.20), {"cpu_p95": 38.0, "memory_p95": 30.0}),
    "E": ((4, 16, 0.19), {"cpu_p95": 25.0, "memory_p95": 30.0}),
    "F": ((2, 8, 0.10), {"cpu_p95": 20.0, "memory_p95": 20.0}),
    "G": ((2, 8, 0.09), {"cpu_p95": 5.0, "memory_p95": 35.0}),
    "H": ((2, 8, 0.09), {"cpu_p95": 60.0, "memory_p95": 20.0}),
    "I": ((2, 8, 0.09), {"cpu_p95": 10.0, "memory_p95": 10.0}),
}


@pytest.fixture
def packing_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    series = {
        key: value for s, (_, levels) in PACKING.items() for key, value in flat_server(s, levels).items()
    }
    scored = score(forecast_frame(series, spread=0.0))
    inventory = inventory_frame({s: size for s, (size, _) in PACKING.items()}, datacenter={"I": "dc-2"})
    return scored, inventory


def test_first_fit_decreasing_on_a_hand_checked_case(packing_case):
    scored, inventory = packing_case
    plan, summary = plan_consolidation(scored, inventory, 75.0, 730.0, "datacenter")
    assert dict(zip(plan["server_id"], plan["target_server_id"], strict=True)) == {
        "B": "A",
        "C": "A",
        "D": "A",
        "F": "A",
        "G": "E",
    }
    host_a = plan[plan["target_server_id"] == "A"].iloc[0]
    assert host_a["target_cpu_utilization"] == pytest.approx(100 * (4.8 + 2.8 + 2.4 + 1.52 + 0.4) / 16)
    assert host_a["target_memory_utilization"] == pytest.approx(100 * (19.2 + 6.4 + 3.2 + 4.8 + 1.6) / 64)
    saved = (0.40 + 0.38 + 0.20 + 0.10 + 0.09) * 730
    fleet = sum(size[2] for size, _ in PACKING.values()) * 730
    assert plan["monthly_savings_usd"].sum() == pytest.approx(saved)
    assert summary["monthly_savings_usd"] == pytest.approx(saved, abs=0.01)
    assert summary["savings_share"] == pytest.approx(saved / fleet, abs=1e-4)
    assert (summary["candidates"], summary["servers_moved"], summary["hosts_kept"]) == (8, 5, 3)


def test_packing_without_groups_may_cross_datacenters(packing_case):
    scored, inventory = packing_case
    plan, _ = plan_consolidation(scored, inventory, 75.0, 730.0, None)
    assert plan.set_index("server_id").loc["I", "target_server_id"] == "E"


def test_a_lower_ceiling_moves_fewer_servers(packing_case):
    scored, inventory = packing_case
    plan, _ = plan_consolidation(scored, inventory, 50.0, 730.0, "datacenter")
    assert 0 < len(plan) < 5
    assert (plan[["target_cpu_utilization", "target_memory_utilization"]] <= 50.0 + 1e-9).all().all()


def test_server_missing_from_inventory_is_analysed_as_unknown_and_not_moved(packing_case):
    scored, inventory = packing_case
    partial = inventory[inventory["server_id"] != "B"]
    plan, summary = plan_consolidation(scored, partial, 75.0, 730.0, "datacenter")
    assert "B" not in set(plan["server_id"]) | set(plan["target_server_id"])
    assert summary["excluded"] == [
        {"server_id": "B", "reason": "not in server_inventory: size and cost unknown"}
    ]
    assert summary["servers_without_cost"] == 1
    history = history_frame(
        {key: np.full(30, 20.0) for key in zip(scored["server_id"], scored["metric"], strict=True)}
    )
    profiles = profile_utilisation(history, 365, 7, 180, **CALENDAR)
    register = build_risk_register(scored, profiles, plan, partial, rightsizing_frame()).set_index(
        ["server_id", "metric"]
    )
    b = register.loc[("B", "cpu_p95")]
    assert (
        not b["in_inventory"] and pd.isna(b["savings_potential"]) and "not in server_inventory" in b["reason"]
    )
    assert register.loc[("A", "cpu_p95"), "in_inventory"]


# --------------------------------------------------------------------------------------- history profiles
def test_profile_current_level_trend_and_weekly_shape():
    ramp = np.arange(200, dtype=float) * 0.1  # +3 points per 30 days
    dates = pd.date_range(end=ANALYSIS_DATE, periods=200, freq="D")
    weekly = np.where(dates.day_of_week >= 5, 30.0, 60.0)  # weekends at half the weekday level
    history = history_frame({("s1", "cpu_p95"): ramp, ("s1", "memory_p95"): weekly})
    profile = profile_utilisation(history, 365, 7, 180, **CALENDAR).set_index("metric")
    assert profile.loc["cpu_p95", "current_level"] == pytest.approx(ramp[-7:].mean())
    assert profile.loc["cpu_p95", "monthly_trend"] == pytest.approx(3.0)
    assert profile.loc["cpu_p95", "last_date"] == ANALYSIS_DATE
    assert profile.loc["memory_p95", "weekday_sat"] == pytest.approx(30.0 / (360.0 / 7))
    assert profile.loc["memory_p95", "weekday_mon"] == pytest.approx(60.0 / (360.0 / 7))
    assert profile.loc["memory_p95", "monthly_trend"] == pytest.approx(0.0, abs=0.3)


def test_clusters_recover_well_separated_archetypes():
    rng = np.random.default_rng(3)
    archetypes = {f"{a}-{i}": a for a in ("web", "batch", "idle") for i in range(8)}
    series = {(s, m): v for s, a in archetypes.items() for m, v in archetype_history(a, rng).items()}
    profiles = profile_utilisation(history_frame(series), 365, 7, 180, **CALENDAR)
    inventory = inventory_frame({s: (4, 16, 0.2) for s in archetypes}, archetype=archetypes)
    clusters, report = cluster_servers(profiles, inventory, 2, 6, 3000, 0)
    assert report["k"] == 3
    assert report["adjusted_rand_index"] == pytest.approx(1.0)
    words = clusters.groupby("archetype")["description"].first()
    assert words["idle"].startswith("steady idle")
    assert "weekday-heavy" in words["web"]
    assert "period-end" not in words["idle"] and (
        "month-end peaks" in words["batch"] or "quarter-end peaks" in words["batch"]
    )
    assert clusters.groupby("archetype")["cluster"].first()["idle"] == 0  # clusters numbered by level


def test_clusters_without_archetypes_report_no_ari():
    rng = np.random.default_rng(4)
    series = {
        (f"s{i}", m): v
        for i in range(6)
        for m, v in archetype_history(["web", "idle"][i % 2], rng, 120).items()
    }
    profiles = profile_utilisation(history_frame(series), 365, 7, 180, **CALENDAR)
    clusters, report = cluster_servers(
        profiles, inventory_frame({f"s{i}": (4, 16, 0.2) for i in range(6)}), 2, 8, 100, 0
    )
    assert report["adjusted_rand_index"] is None and report["k"] == 2
    assert "archetype" not in clusters.columns


# ----------------------------------------------------------------------------------- register and summary
def test_register_actions_reasons_and_savings(packing_case):
    scored, inventory = packing_case
    extra = score(
        forecast_frame({("Z", "cpu_p95"): crossing_series(40, 92.0), ("Z", "memory_p95"): np.full(90, 20.0)})
    )
    scored = pd.concat([scored, extra], ignore_index=True)
    history = history_frame(
        {key: np.full(30, 20.0) for key in zip(scored["server_id"], scored["metric"], strict=True)}
    )
    profiles = profile_utilisation(history, 365, 7, 180, **CALENDAR)
    plan, _ = plan_consolidation(
        scored,
        inventory_frame({**{s: size for s, (size, _) in PACKING.items()}, "Z": (4, 16, 0.3)}),
        75.0,
        730.0,
        None,
    )
    register = build_risk_register(
        scored,
        profiles,
        plan,
        inventory_frame({**{s: size for s, (size, _) in PACKING.items()}, "Z": (4, 16, 0.3)}),
        rightsizing_frame({"Z": ("m5.2xlarge", 140.16)}),
    ).set_index(["server_id", "metric"])
    assert len(register) == len(scored)
    z_cpu, z_memory = register.loc[("Z", "cpu_p95")], register.loc[("Z", "memory_p95")]
    assert (z_cpu["action"], z_cpu["server_action"]) == ("upgrade now", "upgrade now")
    assert "first above 90 % on 2026-02-09 (day 40)" in z_cpu["reason"]
    assert (z_memory["recommended_instance_type"], z_memory["monthly_cost_change_usd"]) == (
        "m5.2xlarge",
        140.16,
    )
    assert register.drop(index="Z", level="server_id")["recommended_instance_type"].isna().all()
    rightsizing = summarise_risk(register.reset_index(), {}, {}, 5)["rightsizing"]
    assert rightsizing == {
        "servers_with_recommendation": 1,
        "downsizes": 0,
        "upsizes": 1,
        "monthly_cost_change_usd": 140.16,
    }
    assert z_memory["action"] == "monitor" and "not a consolidation candidate" in z_memory["reason"]
    b = register.loc[("B", "cpu_p95")]
    assert (b["action"], b["target_server_id"]) == ("consolidate", "A")
    assert b["savings_potential"] == pytest.approx(0.40 * 730) and "move onto A" in b["reason"]
    assert "host for" in register.loc[("A", "cpu_p95"), "reason"]
    assert (
        register.loc[("H", "cpu_p95"), "action"] == "monitor"
        and register.loc[("H", "cpu_p95"), "savings_potential"] == 0
    )
    assert register.loc[("B", "cpu_p95"), "current_level"] == pytest.approx(20.0)
    assert register.loc[("Z", "cpu_p95"), "headroom_pct"] == pytest.approx(8.0)

    summary = summarise_risk(register.reset_index(), {"k": 1}, {"monthly_savings_usd": 1.0}, 5)
    assert summary["server_tiers"] == {"very_high": 1, "high": 0, "normal": 1, "underutilized": 8}
    top = summary["top_at_risk_servers"]
    assert [(t["server_id"], t["days_to_90"], t["first_date_above_90"]) for t in top] == [
        ("Z", 40, "2026-02-09")
    ]
    assert summary["analysis_date"] == "2025-12-31"


# ------------------------------------------------------------------------------------------- evaluation
def _register_and_truth() -> tuple[pd.DataFrame, pd.DataFrame]:
    # (server, predicted cpu tier, days_to_80, days_to_90) vs truth; memory is underutilized everywhere
    predicted = {
        "a": ("very_high", 10, 20),
        "b": ("high", 30, None),
        "c": ("very_high", 5, 9),
        "d": ("normal", None, None),
    }
    actual = {
        "a": ("very_high", 12, 25),
        "b": ("very_high", 40, 60),
        "c": ("normal", None, None),
        "d": ("high", 50, None),
    }

    def frame(rows: dict) -> pd.DataFrame:
        out = []
        for server, (tier, d80, d90) in rows.items():
            out.append(
                {
                    "server_id": server,
                    "metric": "cpu_p95",
                    "risk_level": tier,
                    "days_to_80": d80,
                    "days_to_90": d90,
                }
            )
            out.append(
                {
                    "server_id": server,
                    "metric": "memory_p95",
                    "risk_level": "underutilized",
                    "days_to_80": None,
                    "days_to_90": None,
                }
            )
        return pd.DataFrame(out).astype({"days_to_80": "Int64", "days_to_90": "Int64"})

    register = frame(predicted)
    register["server_risk_level"] = register.groupby("server_id")["risk_level"].transform("first")
    return register.assign(basis="p90"), frame(actual)


def test_evaluation_against_a_constructed_truth():
    register, truth = _register_and_truth()
    evaluation = evaluate_risk_flags(register, truth, NO_BACKTEST, DEPENDENCE)
    servers = evaluation["server_level"]
    assert evaluation["truth_available"] and evaluation["servers_scored"] == 4
    # very_high: predicted {a, c}, true {a, b} -> precision 1/2, recall 1/2
    assert (servers["very_high"]["precision"], servers["very_high"]["recall"]) == (0.5, 0.5)
    # at risk: predicted {a, b, c}, true {a, b, d} -> precision 2/3, recall 2/3
    assert (servers["at_risk"]["precision"], servers["at_risk"]["recall"]) == (0.6667, 0.6667)
    assert servers["confusion"]["high"]["normal"] == 1
    assert evaluation["series_level"]["underutilized"]["recall"] == 1.0
    # days_to_80 errors where both breach: a 10 vs 12, b 30 vs 40 -> |2|, |10|; c is a false alarm, d missed
    assert evaluation["days_to_80"] == {
        "n_both": 2,
        "median_absolute_error_days": 6.0,
        "mean_absolute_error_days": 6.0,
        "median_error_days": -6.0,
        "share_within_7_days": 0.5,
        "missed": 1,
        "false_alarms": 1,
    }
    assert evaluation["days_to_90"]["median_absolute_error_days"] == 5.0


def test_evaluation_without_truth_says_so():
    register, _ = _register_and_truth()
    evaluation = evaluate_risk_flags(register, pd.DataFrame(), NO_BACKTEST, DEPENDENCE)
    assert evaluation["truth_available"] is False and "no ground truth" in evaluation["note"]


def test_evaluation_with_truth_of_another_fleet_is_an_error():
    register, truth = _register_and_truth()
    with pytest.raises(ValueError, match="share no"):
        evaluate_risk_flags(register, truth.assign(server_id="other"), NO_BACKTEST, DEPENDENCE)


def test_metrics_are_in_schema_order():
    series = {(s, m): np.full(90, 50.0) for s in ("s2", "s1") for m in reversed(METRICS)}
    scored = score(forecast_frame(series))
    assert scored["metric"].tolist() == list(METRICS) * 2 and scored["server_id"].tolist()[::4] == [
        "s1",
        "s2",
    ]


def test_two_servers_make_one_cluster_without_error():
    rng = np.random.default_rng(5)
    series = {(s, m): v for s in ("a", "b") for m, v in archetype_history("web", rng, 60).items()}
    profiles = profile_utilisation(history_frame(series), 365, 7, 180, **CALENDAR)
    clusters, report = cluster_servers(
        profiles, inventory_frame({"a": (4, 16, 0.2), "b": (4, 16, 0.2)}), 2, 8, 100, 0
    )
    assert report["k"] == 1 and clusters["cluster"].tolist() == [0, 0]
    assert clusters["description"].iloc[0].startswith("steady moderate utilisation")


def test_register_keeps_series_without_recent_history():
    scored = score(forecast_frame(flat_server("new", {"cpu_p95": 60.0})))
    history = history_frame({("other", "cpu_p95"): np.full(10, 50.0)})
    plan, _ = plan_consolidation(scored, inventory_frame({"new": (4, 16, 0.2)}), 75.0, 730.0, None)
    register = build_risk_register(
        scored,
        profile_utilisation(history, 365, 7, 180, **CALENDAR),
        plan,
        inventory_frame({"new": (4, 16, 0.2)}),
        rightsizing_frame(),
    )
    assert len(register) == len(METRICS) and register["current_level"].isna().all()


def test_history_with_categorical_keys_gives_the_same_scores_and_profiles():
    # the catalog loads clean_server_metrics with server_id and metric as categoricals (read_dictionary)
    rng = np.random.default_rng(5)
    values = {
        (server, metric): series
        for server, archetype in (("web-0", "web"), ("batch-0", "batch"), ("idle-0", "idle"))
        for metric, series in archetype_history(archetype, rng, 200).items()
    }
    values[("web-0", "cpu_p95")][-3:] = 95.0  # recent days above both thresholds
    history = history_frame(values)
    # categories in file order (shard by shard), not sorted, as the catalog loads a sharded etl's output
    categorical = history.astype(
        {
            "server_id": pd.CategoricalDtype(["web-0", "idle-0", "batch-0"]),
            "metric": pd.CategoricalDtype(METRICS[::-1]),
        }
    )
    forecasts = forecast_frame(
        {key: np.full(90, series[-28:].mean() + 20.0) for key, series in values.items()}
    )
    scored = score(forecasts, history)
    assert (scored["recent_days_above_90"] > 0).any()
    pd.testing.assert_frame_equal(score(forecasts, categorical), scored)
    pd.testing.assert_frame_equal(
        profile_utilisation(categorical, 365, 7, 180, **CALENDAR),
        profile_utilisation(history, 365, 7, 180, **CALENDAR),
    )
