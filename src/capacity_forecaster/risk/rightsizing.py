"""Right-sizing EC2 servers on their forecasts: the cheapest instance type that keeps the forecast peak under
a target utilisation through the horizon, and what the move changes per month.

A server on ``current`` with ``vcpus`` and ``memory_gb`` whose forecast peak (e.g. p90) over the horizon is
``cpu_peak`` % and ``memory_peak`` % needs ``vcpus x cpu_peak / target`` vCPUs and
``memory_gb x memory_peak / target`` GiB. The recommendation is the cheapest type of the same family that has
both (the smallest, since prices grow with size within a family), else the cheapest of the allowed families.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd

RECOMMENDATION_COLUMNS: tuple[str, ...] = (
    "server_id",
    "instance_type",
    "region",
    "cpu_peak",
    "memory_peak",
    "required_vcpus",
    "required_memory_gb",
    "recommended_instance_type",
    "current_hourly_cost_usd",
    "recommended_hourly_cost_usd",
    "monthly_cost_change_usd",
    "reason",
)
"""Columns of :func:`right_size`'s result (peaks in %, costs in USD)."""


def peak_forecasts(
    forecasts: pd.DataFrame,
    forecast_model: str,
    basis: str,
    metrics: Sequence[str] = ("cpu_p95", "memory_p95"),
) -> pd.DataFrame:
    """Each server's highest ``basis`` quantile over the horizon, one column per metric (NaN when missing).

    Args:
        forecasts: ``server_id, metric, date, model, p10, p50, p90, is_selected``.
        forecast_model: ``"selected"`` for the ``is_selected`` rows, or a model name.
        basis: Quantile column, e.g. ``p90``.
        metrics: Metrics to return.

    Returns:
        Indexed by ``server_id``; columns ``metrics``.

    Raises:
        ValueError: If ``basis`` is not a column or no row belongs to ``forecast_model``.
    """
    if basis not in forecasts.columns:
        raise ValueError(f"forecasts has no column {basis!r} (columns: {list(forecasts.columns)})")
    if forecast_model == "selected":
        rows = forecasts[forecasts["is_selected"].fillna(False).astype(bool)]
    else:
        rows = forecasts[forecasts["model"].astype("str") == forecast_model]
    if rows.empty:
        raise ValueError(
            f"forecasts has no rows for forecast_model={forecast_model!r} "
            f"(models: {sorted(forecasts['model'].astype('str').unique())})"
        )
    rows = rows[rows["metric"].isin(metrics)]
    peaks = rows.groupby(["server_id", "metric"], observed=True)[basis].max().unstack("metric")
    return peaks.reindex(columns=list(metrics)).rename_axis(columns=None)


_FIT_ORDER = ["hourly_cost_usd", "vcpus", "memory_gb", "instance_type"]


class _Candidates:
    """Instance types of one price-table slice, cheapest first, for a quick "cheapest that fits" lookup."""

    def __init__(self, table: pd.DataFrame) -> None:
        ordered = table.sort_values(_FIT_ORDER)
        self.types = ordered["instance_type"].to_numpy(dtype=object)
        self.costs = ordered["hourly_cost_usd"].to_numpy(dtype=float)
        self.vcpus = ordered["vcpus"].to_numpy(dtype=float)
        self.memory_gb = ordered["memory_gb"].to_numpy(dtype=float)

    def cheapest_fit(self, vcpus: float, memory_gb: float) -> tuple[str, float] | None:
        """Type and hourly cost of the cheapest type with at least ``vcpus`` and ``memory_gb``, else None."""
        fits = (self.vcpus >= vcpus) & (self.memory_gb >= memory_gb)
        if not fits.any():
            return None
        first = int(fits.argmax())
        return self.types[first], float(self.costs[first])


class _PriceIndex:
    """The price table indexed once per region: type specs, and candidates per family and allowed families.

    Servers are looked up one by one in O(1) (no DataFrame filtering per server), so 10,000 servers take a
    fraction of a second.
    """

    def __init__(self, prices: pd.DataFrame, allowed_families: Sequence[str]) -> None:
        self.specs = {
            (region, instance_type): (family, float(vcpus), float(memory_gb), float(cost))
            for region, instance_type, family, vcpus, memory_gb, cost in prices.drop_duplicates(
                ["region", "instance_type"]
            )[["region", "instance_type", "family", "vcpus", "memory_gb", "hourly_cost_usd"]].itertuples(
                index=False
            )
        }
        self.by_family = {key: _Candidates(table) for key, table in prices.groupby(["region", "family"])}
        allowed = prices[prices["family"].isin(list(allowed_families))]
        self.allowed = {region: _Candidates(table) for region, table in allowed.groupby("region")}

    def cheapest_fit(
        self, region: str, family: str, vcpus: float, memory_gb: float
    ) -> tuple[tuple[str, float] | None, bool]:
        """Cheapest fitting type of ``family``, else of the allowed families; and whether it is own."""
        own = self.by_family.get((region, family))
        choice = own.cheapest_fit(vcpus, memory_gb) if own is not None else None
        if choice is not None:
            return choice, True
        allowed = self.allowed.get(region)
        return (allowed.cheapest_fit(vcpus, memory_gb) if allowed is not None else None), False


def _region_of(server_inventory: pd.DataFrame, default_region: str) -> pd.Series:
    """``region`` column when present, else the availability zone's region (``us-east-1b`` -> ``us-east-1``),
    else ``default_region``."""
    region = pd.Series(default_region, index=server_inventory.index, dtype="object")
    if "datacenter" in server_inventory.columns:
        zone = (
            server_inventory["datacenter"].astype("str").str.extract(r"^([a-z]{2}(?:-[a-z]+)+-\d+)[a-z]$")[0]
        )
        region = zone.where(zone.notna(), region)
    if "region" in server_inventory.columns:
        given = server_inventory["region"]
        region = given.where(given.notna() & (given.astype("str") != ""), region)
    return region.astype("str")


def right_size(  # noqa: PLR0914, PLR0917 - one row of bookkeeping per server; one argument per parameter
    peaks: pd.DataFrame,
    server_inventory: pd.DataFrame,
    prices: pd.DataFrame,
    target_utilisation: float,
    allowed_families: Sequence[str],
    hours_per_month: float,
    default_region: str,
) -> pd.DataFrame:
    """One recommendation per inventory server (columns ``RECOMMENDATION_COLUMNS``).

    The recommendation is empty, with the reason, when the server's type is not an EC2 type of the price
    table in its region (e.g. an on-premises host), when it has no cpu forecast, or when nothing fits. When
    the memory forecast is missing (no CloudWatch agent), memory is kept at least at the current size.

    Args:
        peaks: Output of :func:`peak_forecasts` (``cpu_p95``, ``memory_p95`` in %, indexed by server).
        server_inventory: ``server_id`` and, optional in the contract, ``instance_type``, ``region`` or an
            availability zone as ``datacenter``.
        prices: Price table: ``region, instance_type, family, vcpus, memory_gb, hourly_cost_usd``.
        target_utilisation: Highest forecast peak (%) allowed on the recommended type, e.g. 70.
        allowed_families: Families to look in when the server's own family has nothing that fits.
        hours_per_month: Hours billed per month, e.g. 730.
        default_region: Price region of servers whose inventory row names none.
    """
    if not 0 < target_utilisation <= 100:
        raise ValueError(f"target_utilisation must be in (0, 100] %, got {target_utilisation}")
    inventory = server_inventory.drop_duplicates("server_id").reset_index(drop=True)
    if "instance_type" not in inventory.columns:  # optional in the contract (e.g. an on-premises fleet)
        inventory = inventory.assign(instance_type=None)
    regions = _region_of(inventory, default_region)
    index = _PriceIndex(prices, allowed_families)
    cpu_peaks = peaks["cpu_p95"].to_dict() if "cpu_p95" in peaks else {}
    memory_peaks = peaks["memory_p95"].to_dict() if "memory_p95" in peaks else {}
    rows = []
    for server_id, current, region in zip(
        inventory["server_id"], inventory["instance_type"], regions, strict=True
    ):
        row = dict.fromkeys(RECOMMENDATION_COLUMNS, np.nan)
        row.update(server_id=server_id, instance_type=current, region=region, reason="")
        spec = index.specs.get((region, current))
        cpu_peak = cpu_peaks.get(server_id, np.nan)
        memory_peak = memory_peaks.get(server_id, np.nan)
        row.update(cpu_peak=cpu_peak, memory_peak=memory_peak)
        if spec is None:
            row["reason"] = (
                "no instance_type in server_inventory"
                if pd.isna(current)
                else f"{current} is not an EC2 instance type of the price table in {region}"
            )
            rows.append(row)
            continue
        family, spec_vcpus, spec_memory_gb, spec_cost = spec
        row["current_hourly_cost_usd"] = spec_cost
        if pd.isna(cpu_peak):
            row["reason"] = "no cpu_p95 forecast"
            rows.append(row)
            continue
        vcpus = spec_vcpus * cpu_peak / target_utilisation
        memory_note = ""
        if pd.isna(memory_peak):
            memory_gb = spec_memory_gb
            memory_note = "; memory not monitored, kept at the current size"
        else:
            memory_gb = spec_memory_gb * memory_peak / target_utilisation
        row.update(required_vcpus=round(vcpus, 2), required_memory_gb=round(memory_gb, 2))
        needs = f"needs {vcpus:.1f} vCPU and {memory_gb:.1f} GiB to stay under {target_utilisation:g} %"
        choice, own_family = index.cheapest_fit(region, family, vcpus, memory_gb)
        where = (
            f"in family {family}"
            if own_family
            else f"none in family {family}; cheapest of the allowed families"
        )
        if choice is None:
            row["reason"] = f"{needs}: more than any type of family {family} or the allowed families"
            rows.append(row)
            continue
        recommended, recommended_cost = choice
        change = (recommended_cost - row["current_hourly_cost_usd"]) * hours_per_month
        row.update(
            recommended_instance_type=recommended,
            recommended_hourly_cost_usd=recommended_cost,
            monthly_cost_change_usd=round(change, 2),
            reason=(
                f"{needs} ({where}){memory_note}"
                if recommended != current
                else f"{needs}: already the smallest fitting type{memory_note}"
            ),
        )
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(RECOMMENDATION_COLUMNS))
    out["recommended_instance_type"] = (
        out["recommended_instance_type"]
        .astype("object")
        .where(out["recommended_instance_type"].notna(), None)
    )
    return out
