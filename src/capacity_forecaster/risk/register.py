"""The risk register (one row per server and metric, with its action and reason in words) and its summary."""

import logging
from typing import Any

import numpy as np
import pandas as pd

from capacity_forecaster.schema import RISK_LEVELS

from .packing import complete_inventory

logger = logging.getLogger(__name__)

SEVERITY = {level: rank for rank, level in enumerate(RISK_LEVELS)}
AT_RISK = ("very_high", "high")
ACTIONS = {
    "very_high": "upgrade now",
    "high": "plan upgrade",
    "normal": "monitor",
    "underutilized": "consolidate",
}
CHECK_MONITORING = "check monitoring"


def _date(value: Any) -> str:
    return f"{pd.Timestamp(value):%Y-%m-%d}"


def _risk_reason(row: Any, peak: str) -> str:
    """Why a very_high / high row is at risk: breach probability, recent days above, forecast crossing."""
    label = "90" if row.risk_level == "very_high" else "80"
    parts = []
    probability = getattr(row, f"prob_above_{label}")
    if pd.notna(probability) and probability > 0:
        text = f"probability {probability:.2f} of breaching {label} % within the horizon"
        expected = getattr(row, f"expected_breach_date_{label}")
        if pd.notna(expected):
            text += f" (median breach date {_date(expected)})"
        parts.append(text)
    recent = getattr(row, f"recent_days_above_{label}")
    if recent:
        parts.append(f"already above {label} % on {recent} recent day(s)")
    days, when = getattr(row, f"days_to_{label}"), getattr(row, f"first_date_above_{label}")
    if pd.notna(days):
        parts.append(f"{peak}; first above {label} % on {_date(when)} (day {days})")
    else:
        parts.append(peak)
    calendar = [
        flag
        for flag, on in (
            ("an end-of-quarter window", row.breach_in_quarter_end),
            ("a month-end window", row.breach_in_month_end),
            ("a public holiday", row.breach_on_holiday),
        )
        if on
    ]
    if calendar:
        parts.append(f"the first breach falls in {' and on '.join(calendar)}")
    return "; ".join(parts)


def reason(row: Any, host_guests: dict[str, int]) -> str:  # noqa: PLR0911 - one return per case
    """Why a register row has its tier and action, in words with the numbers behind it."""
    if row.stale:
        return (
            f"no data for {row.days_silent} days (last day {_date(row.last_day)}): check its monitoring; "
            "not tiered from an old forecast"
        )
    basis = row.basis
    peak = f"{basis} forecast peaks at {row.projected_utilization:.1f} %"
    if row.risk_level in AT_RISK:
        return _risk_reason(row, peak)
    if row.risk_level == "normal":
        return f"{peak} and averages {row.projected_mean:.1f} %: inside the thresholds"
    text = f"{basis} forecast averages {row.projected_mean:.1f} % (peak {row.projected_utilization:.1f} %)"
    if row.server_risk_level != "underutilized":
        other = f"the server is {row.server_risk_level} on another metric"
        return f"{text}, but {other}: not a consolidation candidate"
    if not row.in_inventory:
        return f"{text}; not in server_inventory: size and cost unknown, left out of the consolidation plan"
    if isinstance(row.target_server_id, str):
        return f"{text}; move onto {row.target_server_id}, saving {row.savings_potential:,.0f} USD/month"
    guests = host_guests.get(row.server_id, 0)
    if guests:
        return f"{text}; keep it as the host for {guests} consolidated server(s)"
    return f"{text}; no other candidate fits next to it: consider a smaller instance"


def _with_rightsizing(register: pd.DataFrame, rightsizing: pd.DataFrame) -> pd.DataFrame:
    """Adds per server ``recommended_instance_type``, ``monthly_cost_change_usd``, ``rightsizing_reason``."""
    columns = {
        "recommended_instance_type": "recommended_instance_type",
        "monthly_cost_change_usd": "monthly_cost_change_usd",
        "reason": "rightsizing_reason",
    }
    per_server = rightsizing.drop_duplicates("server_id").set_index("server_id")
    for source, target in columns.items():
        register[target] = register["server_id"].map(per_server[source]) if len(per_server) else np.nan
    register["monthly_cost_change_usd"] = register["monthly_cost_change_usd"].astype(float)
    return register


def build_register(
    forecast_risk: pd.DataFrame,
    utilisation_profiles: pd.DataFrame,
    consolidation_plan: pd.DataFrame,
    server_inventory: pd.DataFrame,
    rightsizing: pd.DataFrame,
) -> pd.DataFrame:
    """Joins forecast risk, current level and trend, inventory, the consolidation plan and the right-sizing
    recommendations (see the node)."""
    history = utilisation_profiles[["server_id", "metric", "current_level", "monthly_trend"]]
    register = forecast_risk.merge(history, on=["server_id", "metric"], how="left", validate="one_to_one")
    if register["current_level"].isna().any():
        logger.warning(
            "%d series have no recent clean history: current_level is empty",
            register["current_level"].isna().sum(),
        )
    inventory = complete_inventory(register["server_id"], server_inventory)
    register["in_inventory"] = register["server_id"].map(inventory["hourly_cost_usd"].notna()).astype(bool)
    moves = consolidation_plan.set_index("server_id")
    register["headroom_pct"] = (100.0 - register["projected_utilization"]).clip(lower=0.0)
    savings = register["server_id"].map(moves["monthly_savings_usd"]).fillna(0.0).astype(float)
    register["savings_potential"] = savings.where(register["in_inventory"])
    register["target_server_id"] = register["server_id"].map(moves["target_server_id"]).astype("str")
    action = register["risk_level"].map(ACTIONS)
    lone = (register["risk_level"] == "underutilized") & (register["server_risk_level"] != "underutilized")
    stale = register["stale"].astype(bool)
    register["action"] = action.where(~lone, "monitor").where(~stale, CHECK_MONITORING).astype("str")
    server_action = register["server_risk_level"].map(ACTIONS)
    register["server_action"] = server_action.where(~stale, CHECK_MONITORING).astype("str")
    host_guests = consolidation_plan["target_server_id"].value_counts().to_dict()
    register["reason"] = pd.Series(
        [reason(row, host_guests) for row in register.itertuples(index=False)],
        index=register.index,
        dtype="str",
    )
    return _with_rightsizing(register, rightsizing)


def _json_date(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")


def _json_int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _json_float(value: Any) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)


def _rightsizing_summary(servers: pd.DataFrame) -> dict[str, Any]:
    """How many servers have a right-sizing recommendation and the summed monthly cost change (USD)."""
    recommended = servers["recommended_instance_type"].notna() & (servers["recommended_instance_type"] != "")
    change = servers.loc[recommended, "monthly_cost_change_usd"]
    return {
        "servers_with_recommendation": int(recommended.sum()),
        "downsizes": int((change < 0).sum()),
        "upsizes": int((change > 0).sum()),
        "monthly_cost_change_usd": round(float(change.sum()), 2),
    }


def summarise(
    risk_register: pd.DataFrame,
    cluster_report: dict[str, Any],
    consolidation_summary: dict[str, Any],
    top_servers: int,
) -> dict[str, Any]:
    """The JSON risk summary: tier counts, top at-risk, stale and unknown servers, savings, clusters."""
    servers = risk_register.drop_duplicates("server_id")
    ranked = risk_register.assign(
        _severity=risk_register["risk_level"].map(SEVERITY),
        _d90=risk_register["days_to_90"].astype("Float64").fillna(np.inf),
        _d80=risk_register["days_to_80"].astype("Float64").fillna(np.inf),
    ).sort_values(["_severity", "_d90", "_d80", "projected_utilization"], ascending=[True, True, True, False])
    worst = ranked[ranked["risk_level"].isin(AT_RISK)].drop_duplicates("server_id").head(top_servers)
    top = [
        {
            "server_id": row.server_id,
            "metric": row.metric,
            "risk_level": row.risk_level,
            "action": row.action,
            "projected_utilization": _json_float(row.projected_utilization),
            "prob_above_80": _json_float(row.prob_above_80),
            "prob_above_90": _json_float(row.prob_above_90),
            "expected_breach_date_80": _json_date(row.expected_breach_date_80),
            "expected_breach_date_90": _json_date(row.expected_breach_date_90),
            "recent_days_above_80": _json_int(row.recent_days_above_80),
            "days_to_80": _json_int(row.days_to_80),
            "days_to_90": _json_int(row.days_to_90),
            "first_date_above_80": _json_date(row.first_date_above_80),
            "first_date_above_90": _json_date(row.first_date_above_90),
            "breach_in_quarter_end": bool(row.breach_in_quarter_end),
            "breach_on_holiday": bool(row.breach_on_holiday),
        }
        for row in worst.itertuples(index=False)
    ]
    stale = servers[servers["stale"].astype(bool)]
    levels = list(RISK_LEVELS)
    return {
        "analysis_date": _json_date(risk_register["analysis_date"].max()),
        "basis": str(risk_register["basis"].iloc[0]),
        "models": sorted(risk_register["model"].dropna().astype("str").unique()),
        "servers": int(len(servers)),
        "series": int(len(risk_register)),
        "server_tiers": {
            k: int(v)
            for k, v in servers["server_risk_level"].value_counts().reindex(levels, fill_value=0).items()
        },
        "series_tiers": {
            k: int(v)
            for k, v in risk_register["risk_level"].value_counts().reindex(levels, fill_value=0).items()
        },
        "stale_servers": [
            {
                "server_id": row.server_id,
                "last_day": _json_date(row.last_day),
                "days_silent": _json_int(row.days_silent),
            }
            for row in stale.itertuples(index=False)
        ],
        "servers_not_in_inventory": sorted(
            servers.loc[~servers["in_inventory"].astype(bool), "server_id"].astype("str")
        ),
        "top_at_risk_servers": top,
        "savings": consolidation_summary,
        "rightsizing": _rightsizing_summary(servers),
        "clusters": {k: v for k, v in cluster_report.items() if k != "features"},
    }
