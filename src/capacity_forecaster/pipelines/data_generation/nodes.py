"""Synthetic fleet generator: inventory, daily P95 utilisation, monitoring dirt and ground truth.

Everything is vectorised over (days x servers x metrics) with numpy. Each node draws from its own random
stream, ``np.random.default_rng([random_seed, <stream>])``, so a given seed always gives the same data and a
change to one node's parameters leaves the other nodes' draws alone.
"""

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.schema import METRICS, RISK_LEVELS

logger = logging.getLogger(__name__)

_METRICS = list(METRICS)
_N_METRICS = len(METRICS)
_STREAM_INVENTORY, _STREAM_PROFILES, _STREAM_NOISE, _STREAM_DIRT = 1, 2, 3, 4
# AWS-style size names for the instance_type column.
_SIZE_NAMES = {
    1: "medium",
    2: "large",
    4: "xlarge",
    8: "2xlarge",
    16: "4xlarge",
    32: "8xlarge",
    64: "16xlarge",
}


def _rng(random_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(random_seed), stream])


def _metric_vector(table: dict[str, float], what: str) -> np.ndarray:
    """Turns a ``{metric: value}`` mapping into an array in METRICS order."""
    missing = set(_METRICS) - set(table)
    if missing:
        raise ValueError(f"{what} has no value for {sorted(missing)}")
    return np.array([table[m] for m in _METRICS], dtype=float)


def _archetype_counts(n_servers: int, archetype_mix: dict[str, float]) -> dict[str, int]:
    """Splits ``n_servers`` over the archetypes by largest remainder, so counts sum exactly."""
    shares = pd.Series(archetype_mix, dtype=float)
    if (shares < 0).any() or not np.isclose(shares.sum(), 1.0, atol=1e-6):
        raise ValueError(f"archetype_mix shares must be >= 0 and sum to 1, got {dict(shares)}")
    exact = shares * n_servers
    counts = np.floor(exact).astype(int)
    remainder = (exact - counts).sort_values(ascending=False, kind="stable")
    counts[remainder.index[: n_servers - counts.sum()]] += 1
    return counts.to_dict()


def generate_server_inventory(
    n_servers: int,
    archetype_mix: dict[str, float],
    archetypes: dict[str, dict[str, Any]],
    instance_families: dict[str, dict[str, float]],
    datacenters: list[str],
    random_seed: int,
) -> pd.DataFrame:
    """Draws the fleet: one row per server with its archetype, size, price and location.

    Args:
        n_servers: Fleet size (``params:data_generation.n_servers``).
        archetype_mix: Share of each archetype, summing to 1.
        archetypes: Per-archetype profile table; uses ``instance_families`` and ``vcpus`` of each archetype.
        instance_families: ``{family: {memory_gb_per_vcpu, usd_per_vcpu_hour}}``.
        datacenters: Datacenter names to spread the fleet over.
        random_seed: Seed of the generator.

    Returns:
        Columns ``server_id`` (``srv-0001``...), ``archetype``, ``instance_family``, ``instance_type``,
        ``vcpus``, ``memory_gb``, ``hourly_cost_usd``, ``datacenter``.
    """
    if n_servers < 1:
        raise ValueError(f"n_servers must be at least 1, got {n_servers}")
    unknown = set(archetype_mix) - set(archetypes)
    if unknown:
        raise ValueError(f"archetype_mix names archetypes without a profile: {sorted(unknown)}")
    rng = _rng(random_seed, _STREAM_INVENTORY)
    counts = _archetype_counts(n_servers, archetype_mix)
    archetype = rng.permutation(np.repeat(list(counts), list(counts.values())))

    family = np.empty(n_servers, dtype=object)
    vcpus = np.empty(n_servers, dtype=np.int64)
    for name in counts:
        rows = archetype == name
        family[rows] = rng.choice(archetypes[name]["instance_families"], size=rows.sum())
        vcpus[rows] = rng.choice(archetypes[name]["vcpus"], size=rows.sum())
    unknown_families = set(family) - set(instance_families)
    if unknown_families:
        raise ValueError(f"archetypes use instance families without prices: {sorted(unknown_families)}")
    families = pd.DataFrame(instance_families).T.loc[family]
    width = max(4, len(str(n_servers)))
    return pd.DataFrame(
        {
            "server_id": [f"srv-{i:0{width}d}" for i in range(1, n_servers + 1)],
            "archetype": archetype.astype(str),
            "instance_family": family.astype(str),
            "instance_type": [
                f"{f}.{_SIZE_NAMES.get(v, f'{v}vcpu')}" for f, v in zip(family, vcpus, strict=True)
            ],
            "vcpus": vcpus,
            "memory_gb": vcpus * families["memory_gb_per_vcpu"].to_numpy(dtype=np.int64),
            "hourly_cost_usd": np.round(vcpus * families["usd_per_vcpu_hour"].to_numpy(dtype=float), 4),
            "datacenter": rng.choice(datacenters, size=n_servers).astype(str),
        }
    )


def _uniform(rng: np.random.Generator, bounds: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Draws uniformly between ``bounds[..., 0]`` and ``bounds[..., 1]`` (broadcast to ``size``)."""
    return bounds[..., 0] + (bounds[..., 1] - bounds[..., 0]) * rng.random(size)


def draw_server_profiles(  # noqa: PLR0914 - one draw per profile column
    server_inventory: pd.DataFrame,
    archetypes: dict[str, dict[str, Any]],
    history_days: int,
    grower_share: float,
    grower_target: list[float],
    grower_ramp_days: list[int],
    level_shift_share: float,
    level_shift_size: list[float],
    random_seed: int,
) -> pd.DataFrame:
    """Draws each server's behaviour: current levels, drift, peaks, growth ramp and level shift.

    Args:
        server_inventory: Output of ``generate_server_inventory``.
        archetypes: Per-archetype profile table (``level``, ``growth_per_year``, ``peak_scale``,
            ``grow_metric``).
        history_days: Days of history; level shifts fall inside it, away from its ends.
        grower_share: Share of servers (of archetypes with a ``grow_metric``) that grow past 80 %.
        grower_target: Range of the trend level a grower reaches on the last horizon day.
        grower_ramp_days: Range of the length of a grower's linear ramp, ending on the last horizon day.
        level_shift_share: Share of servers with one level shift in the history.
        level_shift_size: Range of the shift size in points (positive = level went up at the shift).
        random_seed: Seed of the generator.

    Returns:
        One row per server: ``server_id``, ``archetype``, ``level_<metric>``, ``growth_<metric>`` (points per
        year), ``peak_scale``, ``is_grower``, ``grow_metric``, ``ramp_target``, ``ramp_days``, ``shift_day``
        (-1 = none) and ``shift_<metric>``.
    """
    rng = _rng(random_seed, _STREAM_PROFILES)
    n = len(server_inventory)
    arch = server_inventory["archetype"].to_numpy(dtype=object)
    missing = set(arch) - set(archetypes)
    if missing:
        raise ValueError(f"server_inventory has archetypes without a profile: {sorted(missing)}")

    def per_server(key: str) -> np.ndarray:
        return (
            np.stack([np.asarray(archetypes[a][key], dtype=float) for a in arch]) if n else np.empty((0, 2))
        )

    level_bounds = np.stack([np.stack([archetypes[a]["level"][m] for m in _METRICS]) for a in arch]).astype(
        float
    )  # (servers, metrics, 2)
    levels = _uniform(rng, level_bounds, (n, _N_METRICS))
    growth = _uniform(rng, per_server("growth_per_year")[:, None, :], (n, _N_METRICS))
    peak_scale = _uniform(rng, per_server("peak_scale"), (n,))

    grow_metric = np.array([archetypes[a].get("grow_metric") or "" for a in arch], dtype=object)
    can_grow = grow_metric != ""
    is_grower = np.zeros(n, dtype=bool)
    n_growers = int(round(grower_share * can_grow.sum()))
    is_grower[rng.choice(np.flatnonzero(can_grow), size=n_growers, replace=False)] = True
    ramp_target = np.where(is_grower, _uniform(rng, np.asarray(grower_target, float), (n,)), np.nan)
    low, high = grower_ramp_days
    ramp_days = np.where(is_grower, rng.integers(low, high + 1, size=n), 0)

    has_shift = rng.random(n) < level_shift_share
    margin = min(60, history_days // 4)
    shift_day = np.where(has_shift, rng.integers(margin, max(margin + 1, history_days - margin), size=n), -1)
    shift_size = _uniform(rng, np.asarray(level_shift_size, float), (n,))
    shifts = np.where(has_shift[:, None], shift_size[:, None] * rng.uniform(0.5, 1.0, (n, _N_METRICS)), 0.0)

    profiles = pd.DataFrame(
        {
            "server_id": server_inventory["server_id"].to_numpy(),
            "archetype": arch.astype(str),
            **{f"level_{m}": levels[:, i] for i, m in enumerate(_METRICS)},
            **{f"growth_{m}": growth[:, i] for i, m in enumerate(_METRICS)},
            "peak_scale": peak_scale,
            "is_grower": is_grower,
            "grow_metric": np.where(is_grower, grow_metric, "").astype(str),
            "ramp_target": ramp_target,
            "ramp_days": ramp_days.astype(np.int64),
            "shift_day": shift_day.astype(np.int64),
            **{f"shift_{m}": shifts[:, i] for i, m in enumerate(_METRICS)},
        }
    )
    logger.info("Drew %d server profiles: %d growers, %d level shifts", n, is_grower.sum(), has_shift.sum())
    return profiles


def _archetype_table(profiles: pd.DataFrame, archetypes: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Looks up the per-archetype arrays for every server (first axis = servers)."""
    arch = profiles["archetype"].to_numpy(dtype=object)
    names = sorted(set(arch))
    index = np.searchsorted(names, arch)

    def table(key: str) -> np.ndarray:
        rows = [archetypes[a][key] for a in names]
        values = [
            _metric_vector(r, f"archetypes.{a}.{key}") if isinstance(r, dict) else r
            for a, r in zip(names, rows, strict=True)
        ]
        return np.asarray(values, dtype=np.float32)[index]

    return {
        "weekly_shape": table("weekly_shape"),  # (servers, 7)
        "weekly_sensitivity": table("weekly_sensitivity"),
        "holiday_dip": table("holiday_dip"),
        "holiday_sensitivity": table("holiday_sensitivity"),
        "month_end_peak": table("month_end_peak"),
        "quarter_end_peak": table("quarter_end_peak"),
        "noise_sd": table("noise_sd"),
        "ar_coefficient": table("ar_coefficient"),
        "cholesky": _cholesky_factors(names, archetypes)[index],  # (servers, metrics, metrics)
    }


def _cholesky_factors(names: list[str], archetypes: dict[str, dict[str, Any]]) -> np.ndarray:
    """Returns the lower Cholesky factor of each archetype's correlation matrix."""
    factors = []
    for name in names:
        corr = np.asarray(archetypes[name]["correlation"], dtype=float)
        if (
            corr.shape != (_N_METRICS, _N_METRICS)
            or not np.allclose(corr, corr.T)
            or not np.allclose(np.diag(corr), 1.0)
        ):
            raise ValueError(
                f"archetypes.{name}.correlation must be a symmetric 4x4 matrix with a unit diagonal"
            )
        try:
            factors.append(np.linalg.cholesky(corr))
        except np.linalg.LinAlgError as err:
            raise ValueError(f"archetypes.{name}.correlation is not positive definite") from err
    return np.stack(factors)


def _correlated_ar_noise(
    rng: np.random.Generator, n_days: int, cholesky: np.ndarray, ar: np.ndarray
) -> np.ndarray:
    """Unit-variance noise of shape (days, servers, metrics): correlated across metrics, AR(1) over days."""
    n_servers = cholesky.shape[0]
    shocks = rng.standard_normal((n_days, n_servers, _N_METRICS), dtype=np.float32)
    shocks = np.einsum("smk,dsk->dsm", cholesky.astype(np.float32), shocks, optimize=True)
    phi = ar.astype(np.float32)[:, None]
    scale = np.sqrt(1.0 - phi**2)
    # Stationary AR(1): x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t keeps unit variance and the correlation of e.
    for day in range(1, n_days):  # loop over days only; each step is one vectorised update of the fleet
        shocks[day] *= scale
        shocks[day] += phi * shocks[day - 1]
    return shocks


def simulate_utilisation(  # noqa: PLR0914 - the additive model has many named parts
    server_profiles: pd.DataFrame,
    archetypes: dict[str, dict[str, Any]],
    history_start: str,
    history_days: int,
    horizon: int,
    grower_secondary_weight: float,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
    random_seed: int,
) -> pd.DataFrame:
    """Simulates clean daily P95 utilisation for the history and the horizon in one go.

    value = (level + drift + growth ramp - shift before its day) x weekly shape x holiday dip
    + max(month-end peak, end-of-quarter peak) + correlated AR(1) noise, clipped to [0, 100], 2 decimals.
    Levels are anchored at the analysis date (the last history day).

    Args:
        server_profiles: Output of ``draw_server_profiles``.
        archetypes: Per-archetype profile table.
        history_start: First history day (``YYYY-MM-DD``).
        history_days: Days of history.
        horizon: Days after the history to simulate (``params:horizon``).
        grower_secondary_weight: Share of the growth ramp that a grower's other metrics follow.
        country: Holiday country (``params:calendar.country``).
        month_end_business_days: Month-end window (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).
        random_seed: Seed of the generator.

    Returns:
        Wide frame sorted by ``server_id`` and ``timestamp`` (datetime64[ns]), one float64 column per metric.
    """
    if history_days < 1 or horizon < 1:
        raise ValueError(f"history_days and horizon must be positive, got {history_days} and {horizon}")
    n_days = history_days + horizon
    dates = pd.date_range(pd.Timestamp(history_start), periods=n_days, freq="D")
    cal = calendar_features(dates, country, month_end_business_days, quarter_end_business_days)
    tab = _archetype_table(server_profiles, archetypes)
    n = len(server_profiles)

    level_cols = [f"level_{m}" for m in _METRICS]
    levels = server_profiles[level_cols].to_numpy(dtype=np.float32)
    growth = server_profiles[[f"growth_{m}" for m in _METRICS]].to_numpy(dtype=np.float32) / 365.25
    since_analysis = (np.arange(n_days, dtype=np.float32) - (history_days - 1))[:, None, None]
    base = levels[None] + growth[None] * since_analysis  # (days, servers, metrics)

    # Growers: linear ramp of the grow metric (others follow a share) ending at ramp_target on the last day.
    growers = np.flatnonzero(server_profiles["is_grower"].to_numpy(dtype=bool))
    if len(growers):
        grow_index = np.array([_METRICS.index(m) for m in server_profiles["grow_metric"].to_numpy()[growers]])
        weights = np.where(np.arange(_N_METRICS)[None] == grow_index[:, None], 1.0, grower_secondary_weight)
        target = server_profiles["ramp_target"].to_numpy(dtype=float)[growers]
        amount = np.maximum(target - levels[growers, grow_index], 0.0)
        ramp_days = np.maximum(server_profiles["ramp_days"].to_numpy(dtype=float)[growers], 1.0)
        progress = np.clip(
            (np.arange(n_days)[:, None] - (n_days - 1 - ramp_days)[None]) / ramp_days, 0.0, 1.0
        )
        base[:, growers] += (progress[:, :, None] * (amount[:, None] * weights)[None]).astype(np.float32)

    # Level shifts: the level before the shift day differed by -shift (the current level stays anchored).
    shift_day = server_profiles["shift_day"].to_numpy()
    shifted = np.flatnonzero(shift_day >= 0)
    if len(shifted):
        before_shift = np.arange(n_days)[:, None] < shift_day[shifted][None]
        shifts = server_profiles[[f"shift_{m}" for m in _METRICS]].to_numpy(dtype=np.float32)[shifted]
        base[:, shifted] -= before_shift[:, :, None] * shifts[None]
    np.maximum(base, 0.5, out=base)

    # Weekly shape: one (servers, metrics) factor per weekday, gathered per day.
    weekday_factor = 1.0 + (tab["weekly_shape"].T[:, :, None] - 1.0) * tab["weekly_sensitivity"][None]
    values = base
    values *= weekday_factor[cal["day_of_week"].to_numpy()]
    holiday = np.flatnonzero(cal["is_holiday"].to_numpy())
    values[holiday] *= 1.0 + (tab["holiday_dip"][:, None] - 1.0) * tab["holiday_sensitivity"]

    # Month-end and end-of-quarter peaks: the larger of the two applies on days in both windows.
    peak_scale = server_profiles["peak_scale"].to_numpy(dtype=np.float32)[:, None]
    month_end_peak = tab["month_end_peak"] * peak_scale
    quarter_end_peak = tab["quarter_end_peak"] * peak_scale
    is_month_end = cal["is_month_end"].to_numpy()
    is_quarter_end = cal["is_end_of_quarter"].to_numpy()
    values[np.flatnonzero(is_month_end & ~is_quarter_end)] += month_end_peak
    values[np.flatnonzero(is_quarter_end & ~is_month_end)] += quarter_end_peak
    values[np.flatnonzero(is_quarter_end & is_month_end)] += np.maximum(quarter_end_peak, month_end_peak)

    noise = _correlated_ar_noise(
        _rng(random_seed, _STREAM_NOISE), n_days, tab["cholesky"], tab["ar_coefficient"]
    )
    noise *= tab["noise_sd"][None]
    values += noise
    del noise
    np.clip(values, 0.0, 100.0, out=values)

    columns = np.round(values.transpose(2, 1, 0).reshape(_N_METRICS, n * n_days).astype(np.float64), 2)
    del values
    frame = pd.DataFrame(
        {
            "timestamp": np.tile(dates.values.astype("datetime64[ns]"), n),
            "server_id": _repeat_labels(server_profiles["server_id"], np.repeat(np.arange(n), n_days)),
            **dict(zip(_METRICS, columns, strict=True)),
        },
        copy=False,
    )
    logger.info("Simulated %d servers x %d days (%d history + %d horizon)", n, n_days, history_days, horizon)
    return frame


def split_history_and_future(
    simulated_metrics: pd.DataFrame, horizon: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits the simulation at the analysis date: the last ``horizon`` days are the future.

    Returns:
        ``(history, future_metrics)``, both with the simulation's columns; ``future_metrics`` starts the day
        after the last history day.
    """
    dates = simulated_metrics["timestamp"]
    first_future = dates.max() - pd.Timedelta(days=horizon - 1)
    is_future = (dates >= first_future).to_numpy()
    if is_future.all():
        raise ValueError(f"the simulation has no history before its last {horizon} days")
    history = simulated_metrics.loc[~is_future].reset_index(drop=True)
    future = simulated_metrics.loc[is_future].reset_index(drop=True)
    return history, future


def add_monitoring_dirt(  # noqa: PLR0914
    history: pd.DataFrame,
    missing_day_share: float,
    gap_server_share: float,
    gap_days: list[int],
    duplicate_share: float,
    spike_share: float,
    spike_out_of_range_share: float,
    random_seed: int,
) -> pd.DataFrame:
    """Turns the clean history into a monitoring export: glitches, missing days and gaps, duplicated rows.

    Args:
        history: Clean wide history (``timestamp`` datetime64, ``server_id``, metric columns).
        missing_day_share: Share of rows dropped as isolated missing days.
        gap_server_share: Share of servers with one multi-day gap.
        gap_days: Range of the gap length in days.
        duplicate_share: Share of rows exported twice (an exact copy right after the row).
        spike_share: Share of metric values replaced by a glitch.
        spike_out_of_range_share: Share of glitches outside [0, 100] (101-150 or -10 to -1); the others jump
            25-60 points up within [0, 100].
        random_seed: Seed of the generator.

    Returns:
        ``raw_server_metrics``: ``timestamp`` as ``YYYY-MM-DD`` strings, ``server_id``, metric columns rounded
        to 2 decimals, sorted by server and day.
    """
    rng = _rng(random_seed, _STREAM_DIRT)
    n_rows = len(history)
    values = history[_METRICS].to_numpy(dtype=float, copy=True)

    spike = rng.random(values.shape) < spike_share
    n_spikes = int(spike.sum())
    out_of_range = rng.random(n_spikes) < spike_out_of_range_share
    above = rng.random(n_spikes) < 0.5
    glitch = np.where(
        out_of_range,
        np.where(above, rng.uniform(101.0, 150.0, n_spikes), rng.uniform(-10.0, -1.0, n_spikes)),
        np.minimum(values[spike] + rng.uniform(25.0, 60.0, n_spikes), 100.0),
    )
    values[spike] = np.round(glitch, 2)

    keep = rng.random(n_rows) >= missing_day_share
    server_codes, servers = pd.factorize(history["server_id"])
    day_codes, days = pd.factorize(history["timestamp"])
    gap_servers = rng.random(len(servers)) < gap_server_share
    if gap_servers.any():
        day_index = ((history["timestamp"] - history["timestamp"].min()) // pd.Timedelta(days=1)).to_numpy()
        lengths = rng.integers(gap_days[0], gap_days[1] + 1, size=len(servers))
        starts = 1 + (rng.random(len(servers)) * np.maximum(day_index.max() - lengths, 1)).astype(np.int64)
        in_gap = (
            gap_servers[server_codes]
            & (day_index >= starts[server_codes])
            & (day_index < (starts + lengths)[server_codes])
        )
        keep &= ~in_gap
    repeats = keep.astype(np.int64) + (keep & (rng.random(n_rows) < duplicate_share))

    rows = np.repeat(np.arange(n_rows), repeats)
    day_strings = pd.DatetimeIndex(days).strftime("%Y-%m-%d")
    raw = pd.DataFrame(
        {
            "timestamp": _repeat_labels(day_strings, day_codes[rows]),
            "server_id": _repeat_labels(servers, server_codes[rows]),
            **{m: values[rows, i] for i, m in enumerate(_METRICS)},
        },
        copy=False,
    )
    logger.info(
        "Monitoring dirt: %d spikes (%d out of range), %d rows dropped (%d servers with a gap), "
        "%d duplicates",
        n_spikes,
        out_of_range.sum(),
        n_rows - keep.sum(),
        gap_servers.sum(),
        (repeats > 1).sum(),
    )
    return raw


def _repeat_labels(
    labels: pd.Index | pd.Series | np.ndarray, codes: np.ndarray
) -> pd.api.extensions.ExtensionArray:
    """Returns ``labels[codes]`` as a pandas ``str`` array, built in Arrow (no Python string per row)."""
    unique = pa.array(np.asarray(labels, dtype=object), type=pa.string())
    return pd.array(unique.take(pa.array(np.asarray(codes, dtype=np.int64))), dtype="str")


def _first_day_above(values: np.ndarray, threshold: float, days_after: np.ndarray) -> np.ndarray:
    """For (servers, days, metrics) values: days_after of the first day above ``threshold``, or -1."""
    above = values > threshold
    first = days_after[above.argmax(axis=1)]
    return np.where(above.any(axis=1), first, -1)


def build_server_truth(future_metrics: pd.DataFrame) -> pd.DataFrame:
    """Computes the true horizon peak, mean, first breach days and risk tier of every server and metric.

    The analysis date is the day before the first future day, so the first future day is day 1. Tiers:
    very_high if peak > 90, else high if peak > 80, else underutilized if mean < 40, else normal.
    ``server_risk_level`` is the server's most severe metric tier (underutilized only when every metric is).

    Args:
        future_metrics: Clean wide future values (a complete server x day grid).

    Returns:
        One row per server and metric: ``server_id``, ``metric``, ``peak``, ``mean``, ``first_date_above_80``,
        ``first_date_above_90``, ``days_to_80``, ``days_to_90`` (Int64), ``risk_level``,
        ``server_risk_level``.
    """
    future = future_metrics.sort_values(["server_id", "timestamp"], kind="stable")
    servers = future["server_id"].unique()
    dates = pd.DatetimeIndex(np.sort(future["timestamp"].unique()))
    if len(future) != len(servers) * len(dates) or future.duplicated(["server_id", "timestamp"]).any():
        raise ValueError("future_metrics must hold exactly one row per server and day (a complete grid)")
    values = future[_METRICS].to_numpy(dtype=float).reshape(len(servers), len(dates), _N_METRICS)
    analysis_date = dates[0] - pd.Timedelta(days=1)
    days_after = np.asarray((dates - analysis_date).days, dtype=np.int64)

    peak = values.max(axis=1)
    mean = values.mean(axis=1)
    tier = np.select([peak > 90, peak > 80, mean < 40], ["very_high", "high", "underutilized"], "normal")
    severity = np.vectorize(RISK_LEVELS.index)(tier)  # 0 = most severe
    server_tier = np.asarray(RISK_LEVELS)[np.where((severity == 3).all(axis=1), 3, severity.min(axis=1))]

    def dates_and_days(threshold: float) -> tuple[pd.Series, pd.Series]:
        days = _first_day_above(values, threshold, days_after).ravel()
        found = days > 0
        when = pd.Series(analysis_date + pd.to_timedelta(np.where(found, days, 0), unit="D")).where(found)
        return when.astype("datetime64[ns]"), pd.Series(days, dtype="Int64").where(found)

    date_80, days_80 = dates_and_days(80.0)
    date_90, days_90 = dates_and_days(90.0)
    truth = pd.DataFrame(
        {
            "server_id": np.repeat(servers, _N_METRICS).astype(str),
            "metric": np.tile(_METRICS, len(servers)),
            "peak": peak.ravel(),
            "mean": mean.ravel(),
            "first_date_above_80": date_80,
            "first_date_above_90": date_90,
            "days_to_80": days_80,
            "days_to_90": days_90,
            "risk_level": tier.ravel(),
            "server_risk_level": np.repeat(server_tier, _N_METRICS),
        }
    )
    counts = pd.Series(server_tier).value_counts().reindex(RISK_LEVELS, fill_value=0)
    logger.info("Server truth tiers over %d days: %s", len(dates), counts.to_dict())
    return truth
