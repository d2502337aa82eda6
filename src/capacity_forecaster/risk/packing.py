"""Consolidation of underutilized servers: 2-D first-fit decreasing packing, and the inventory behind it."""

import logging
from typing import Any

import numpy as np
import pandas as pd

from .tables import require_columns

logger = logging.getLogger(__name__)

INVENTORY_COLUMNS = ("server_id", "vcpus", "memory_gb", "hourly_cost_usd")
UNKNOWN = "unknown"
"""Archetype of a server that is not in ``server_inventory`` (sizes and costs NaN)."""
_SIZING_METRICS = {"cpu": "cpu_p95", "memory": "memory_p95"}


def complete_inventory(server_ids: pd.Series, server_inventory: pd.DataFrame) -> pd.DataFrame:
    """Inventory indexed by ``server_id``, with an unknown row for every analysed server it lacks.

    An unknown row has archetype ``unknown`` and NaN sizes and costs (etl's ``unknown_servers: keep`` lets
    such servers through): they are analysed, but never sized, costed or consolidated.

    Raises:
        ValueError: When a column is missing or a server is listed more than once.
    """
    require_columns(server_inventory, INVENTORY_COLUMNS, "server_inventory")
    duplicated = server_inventory["server_id"].astype("str").duplicated()
    if duplicated.any():
        raise ValueError(
            f"server_inventory lists {sorted(server_inventory['server_id'][duplicated].unique())[:5]} "
            "more than once: keep one row per server_id"
        )
    inventory = server_inventory.assign(server_id=server_inventory["server_id"].astype("str")).set_index(
        "server_id"
    )
    missing = sorted(set(pd.Series(server_ids).astype("str")) - set(inventory.index))
    if missing:
        logger.warning(
            "%d analysed server(s) are not in server_inventory (e.g. %s): archetype unknown, sizes and costs "
            "NaN, left out of the consolidation plan",
            len(missing),
            missing[:5],
        )
        extra = pd.DataFrame({"archetype": UNKNOWN}, index=pd.Index(missing, name="server_id"))
        inventory = pd.concat([inventory, extra])
        for column in INVENTORY_COLUMNS[1:]:
            inventory[column] = pd.to_numeric(inventory[column], errors="coerce").astype("float64")
    return inventory


def plan_moves(  # noqa: PLR0914, PLR0915 - the packing loop needs its bookkeeping
    forecast_risk: pd.DataFrame,
    server_inventory: pd.DataFrame,
    target_ceiling: float,
    hours_per_month: float,
    group_column: str | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Packs the underutilized servers onto as few of themselves as possible (2-D first-fit decreasing).

    Each candidate needs ``vcpus x peak p90 cpu %`` vCPUs and ``memory_gb x peak p90 memory %`` GB over the
    horizon. Candidates are taken largest first (vCPUs, then memory, then demand); each moves onto the first
    kept host where both needs fit under ``target_ceiling`` % of the host's capacity (its own load included),
    otherwise it is kept and becomes a host. Moves stay inside ``group_column`` (e.g. the datacenter) when the
    inventory has it. A moved server is switched off and saves ``hourly_cost_usd x hours_per_month``.

    Args:
        forecast_risk: Output of ``score_forecast_risk``.
        server_inventory: ``server_id``, ``vcpus``, ``memory_gb``, ``hourly_cost_usd`` (+ extras). Servers
            missing from it get an unknown row (``complete_inventory``) and are left out of the plan.
        target_ceiling: Highest projected p90 utilisation (%) allowed on a host after the moves.
        hours_per_month: Hours billed per month (730).
        group_column: Inventory column that moves may not cross (``null`` to ignore).

    Returns:
        ``consolidation_plan`` (one row per moved server: ``server_id``, ``target_server_id``, ``group``,
        ``cpu_demand_vcpus``, ``memory_demand_gb``, ``target_cpu_utilization``, ``target_memory_utilization``
        (projected p90 peak % on the host after every move), ``monthly_savings_usd``) and a savings summary
        (with ``excluded``: the candidates left out and why).
    """
    if not 0 < target_ceiling <= 100:  # noqa: PLR2004
        raise ValueError(f"consolidation_ceiling must be in (0, 100], got {target_ceiling}")
    inventory = complete_inventory(forecast_risk["server_id"], server_inventory)
    servers = forecast_risk["server_id"].astype("str").unique()
    fleet_cost = float(inventory.loc[servers, "hourly_cost_usd"].sum() * hours_per_month)
    candidates = forecast_risk[forecast_risk["server_risk_level"] == "underutilized"]
    peaks = candidates.pivot_table(
        index="server_id", columns="metric", values="peak_p90_horizon", aggfunc="max"
    )
    sizing = inventory.loc[peaks.index.astype("str"), ["vcpus", "memory_gb", "hourly_cost_usd"]].astype(float)
    for kind, metric in _SIZING_METRICS.items():
        sizing[f"{kind}_peak"] = peaks[metric].to_numpy() if metric in peaks.columns else np.nan
    sizing["cpu_demand"] = sizing["vcpus"] * sizing["cpu_peak"] / 100
    sizing["memory_demand"] = sizing["memory_gb"] * sizing["memory_peak"] / 100
    unknown = inventory.loc[sizing.index, "archetype"].eq(UNKNOWN) if "archetype" in inventory else False
    usable = sizing[["cpu_demand", "memory_demand", "vcpus", "memory_gb"]].notna().all(axis=1)
    usable &= (sizing["vcpus"] > 0) & (sizing["memory_gb"] > 0)
    excluded = [
        {
            "server_id": str(server_id),
            "reason": "not in server_inventory: size and cost unknown"
            if is_unknown
            else "no cpu/memory forecast or no size in server_inventory",
        }
        for server_id, is_unknown in zip(
            sizing.index[~usable], np.broadcast_to(unknown, len(sizing))[~usable.to_numpy()], strict=True
        )
    ]
    if excluded:
        logger.warning(
            "%d underutilized server(s) are left out of the consolidation plan: %s",
            len(excluded),
            excluded[:5],
        )
    sizing = sizing[usable]
    use_groups = bool(group_column) and group_column in inventory.columns
    if group_column and not use_groups:
        logger.warning("server_inventory has no %r column: moves may cross it", group_column)
    sizing["group"] = inventory.loc[sizing.index, group_column].astype("str") if use_groups else "all"
    sizing = sizing.sort_values(
        ["vcpus", "memory_gb", "cpu_demand", "memory_demand"], ascending=False, kind="stable"
    )

    moves, hosts = [], []
    for group, members in sizing.groupby("group", sort=True):
        host_ids: list[str] = []
        free_cpu, free_memory = np.empty(len(members)), np.empty(len(members))
        # plain arrays, not iterrows: each candidate costs one vectorised scan of the kept hosts
        columns = ("cpu_demand", "memory_demand", "vcpus", "memory_gb", "hourly_cost_usd")
        for server_id, cpu, memory, vcpus, memory_gb, hourly in zip(
            members.index, *(members[c].to_numpy(dtype=float) for c in columns), strict=True
        ):
            kept = len(host_ids)
            fits = (free_cpu[:kept] >= cpu) & (free_memory[:kept] >= memory)
            if fits.any():
                host = int(fits.argmax())
                free_cpu[host] -= cpu
                free_memory[host] -= memory
                moves.append((server_id, host_ids[host], group, cpu, memory, hourly * hours_per_month))
            else:
                free_cpu[kept] = vcpus * target_ceiling / 100 - cpu
                free_memory[kept] = memory_gb * target_ceiling / 100 - memory
                host_ids.append(server_id)
        hosts.extend(host_ids)
    plan = pd.DataFrame(
        moves,
        columns=[
            "server_id",
            "target_server_id",
            "group",
            "cpu_demand_vcpus",
            "memory_demand_gb",
            "monthly_savings_usd",
        ],
    )
    plan = plan.astype(
        {
            "server_id": "str",
            "target_server_id": "str",
            "group": "str",
            "cpu_demand_vcpus": "float64",
            "memory_demand_gb": "float64",
            "monthly_savings_usd": "float64",
        }
    )
    target = dict(zip(plan["server_id"], plan["target_server_id"], strict=True))
    host_load = (
        sizing[["cpu_demand", "memory_demand"]].groupby([target.get(s, s) for s in sizing.index]).sum()
    )
    plan["target_cpu_utilization"] = (
        plan["target_server_id"].map(host_load["cpu_demand"] / sizing["vcpus"]).astype(float) * 100
    )
    plan["target_memory_utilization"] = (
        plan["target_server_id"].map(host_load["memory_demand"] / sizing["memory_gb"]).astype(float) * 100
    )
    savings = float(plan["monthly_savings_usd"].sum())
    summary = {
        "candidates": int(len(candidates["server_id"].unique())),
        "candidates_sized": int(len(sizing)),
        "servers_moved": int(len(plan)),
        "hosts_kept": int(len(hosts)),
        "hosts_receiving": int(plan["target_server_id"].nunique()),
        "target_ceiling_pct": float(target_ceiling),
        "group_column": group_column if use_groups else None,
        "monthly_savings_usd": round(savings, 2),
        "fleet_monthly_cost_usd": round(fleet_cost, 2),
        "savings_share": round(savings / fleet_cost, 4) if fleet_cost > 0 else None,
        "servers_without_cost": int(inventory.loc[servers, "hourly_cost_usd"].isna().sum()),
        "excluded": excluded,
    }
    logger.info(
        "Consolidation: %d candidates -> %d moves onto %d hosts, %.0f USD/month (%s of fleet cost)",
        summary["candidates"],
        summary["servers_moved"],
        summary["hosts_receiving"],
        savings,
        summary["savings_share"],
    )
    return plan, summary
