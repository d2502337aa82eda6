"""ETL: validate a monitoring export, turn it into clean daily P95 on a complete calendar, and build features.

Flow: ``validate_raw_metrics`` (schema, values, inventory) -> ``aggregate_daily_metrics`` (exact duplicates,
sub-daily samples -> daily P95) -> ``clean_daily_metrics`` (complete calendar, clipping, robust outliers,
short-gap imputation, long gaps left NaN) -> ``build_data_quality_report`` and ``build_server_features``.

Cleaning and features work on dense (series x days) numpy matrices: after reindexing every server to a
complete daily calendar each series is a contiguous array, so nothing loops over servers in Python.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.freshness import analysis_date, find_stale_servers
from capacity_forecaster.schema import METRICS
from capacity_forecaster.sharding import resolve_shard_count, shard_name, shard_of

logger = logging.getLogger(__name__)

_METRICS = list(METRICS)
_LONG_METRICS = sorted(METRICS)  # clean tables are sorted by metric name
_REQUIRED = ["timestamp", "server_id", *_METRICS]
_N_EXAMPLES = 3
_MAD_TO_SD = 1.4826
_MEAN_AD_TO_SD = 1.2533  # sqrt(pi / 2): mean absolute deviation -> sd for normal data
_UNKNOWN_SERVER_ACTIONS = ("error", "drop", "keep")
_IMPUTATION_METHODS = ("time", "seasonal")
_NS_PER_DAY = 86_400_000_000_000
_DEFAULT_MIN_DATE = "2000-01-01"
_FLOOR = "partial_floor_"  # daily column prefix: lower bound of a partial day's P95 (aggregation -> cleaning)
_MIN_ROWS_RATIO_CHECK = 100  # fewer finite values than this: too few to call a metric a ratio
_SPLIT_ROWS = 1_000_000  # rows routed at a time when the export was loaded whole
_ROW = "_row"  # a shard's column: each row's 0-based position in the export, for error messages


class RawMetricsError(ValueError):
    """A raw metrics export that cannot be used: names the file, the column, example rows and the problem."""


# --------------------------------------------------------------------------------------------- helpers
def _str_column(names: pd.Index | list[str], codes: np.ndarray) -> pd.Series:
    """``names[codes]`` as a pandas ``str`` column, built in Arrow (much faster than ``.astype(str)``)."""
    taken = pc.take(pa.array(np.asarray(names, dtype=object), pa.large_string()), pa.array(codes))
    return pd.Series(pd.array(taken, dtype="str"))


def _changes(column: pd.Series) -> np.ndarray:
    """True where a row's value differs from the previous row's (the first row is True)."""
    if len(column) == 0:
        return np.zeros(0, dtype=bool)
    values = pa.array(column.array) if isinstance(column.dtype, pd.StringDtype) else column.to_numpy()
    if isinstance(values, np.ndarray):
        return np.r_[True, values[1:] != values[:-1]]
    return np.r_[True, pc.not_equal(values[1:], values[:-1]).to_numpy(zero_copy_only=False)]


# --------------------------------------------------------------------------------------------- validation
def _examples(frame: pd.DataFrame, bad: np.ndarray, columns: list[str]) -> str:
    """Formats the first offending rows as ``row i (col='v', ...)`` (``i`` = 0-based data row)."""
    rows = np.flatnonzero(bad)[:_N_EXAMPLES]
    shown = [c for c in columns if c in frame.columns]
    label = frame[_ROW].to_numpy() if _ROW in frame.columns else np.arange(len(frame))  # a shard: export rows
    return "; ".join(
        f"row {label[i]} (" + ", ".join(f"{c}={frame[c].iloc[i]!r}" for c in shown) + ")" for i in rows
    )


def _problem(source: str, column: str, bad: np.ndarray, frame: pd.DataFrame, what: str) -> str:
    return (
        f"file {source}, column '{column}': {int(bad.sum())} row(s) {what}, e.g. "
        f"{_examples(frame, bad, list(dict.fromkeys(['timestamp', 'server_id', column])))}"
    )


def _parse_timestamps(column: pd.Series) -> pd.Series:
    """Parses ISO 8601 timestamps (dates, date-times, offsets); time zones are converted to UTC, dropped."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(column.dtype):
        return column
    parsed = pd.to_datetime(column, format="ISO8601", utc=True, errors="coerce")
    return parsed.dt.tz_localize(None)


def _is_boolean(column: pd.Series) -> bool:
    """True for a column of booleans (``bool``/``boolean`` dtype, or Python bools in an object column)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return True
    if column.dtype != object:
        return False
    present = column.dropna()
    return len(present) > 0 and all(isinstance(v, (bool, np.bool_)) for v in present.head(1000))


def _parse_metric(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Returns float64 values and the mask of cells that hold something that is not a finite number."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        return values, np.isinf(values)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    text = column.astype("str").str.strip()
    blank = (
        column.isna().to_numpy()
        | (text == "").to_numpy()
        | text.str.lower().isin(["nan", "na", "null"]).to_numpy()
    )
    return values, (np.isnan(values) & ~blank) | np.isinf(values)


def _date_bounds(valid_date_range: dict[str, Any] | None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First allowed day and the first day after the allowed range (``max: null``: today (UTC) + 1 day)."""
    bounds = {"min": _DEFAULT_MIN_DATE, "max": None, **(valid_date_range or {})}
    unknown = set(bounds) - {"min", "max"}
    if unknown:
        raise ValueError(f"params:etl.valid_date_range takes the keys min and max, got {sorted(unknown)}")
    low = pd.Timestamp(bounds["min"] or _DEFAULT_MIN_DATE).normalize()
    high = (
        pd.Timestamp.now(tz="UTC").tz_localize(None).normalize() + pd.Timedelta(days=1)
        if bounds["max"] is None
        else pd.Timestamp(bounds["max"]).normalize()
    )
    if high < low:
        raise ValueError(f"params:etl.valid_date_range: max {high.date()} is before min {low.date()}")
    return low, high + pd.Timedelta(days=1)


def _scales(value_scale: float | dict[str, float] | None) -> dict[str, float]:
    """Per metric factor from ``params:etl.value_scale``: one number for all metrics or metric -> factor."""
    if value_scale is None:
        return {}
    if isinstance(value_scale, dict):
        unknown = sorted(set(value_scale) - set(_METRICS))
        if unknown:
            raise ValueError(f"params:etl.value_scale: unknown metric(s) {unknown}; metrics are {_METRICS}")
        return {m: float(f) for m, f in value_scale.items()}
    return dict.fromkeys(_METRICS, float(value_scale))


def _looks_like_ratios(values: np.ndarray) -> bool:
    """True when a metric's whole range sits in [0, 1] (not all zero) over a non-trivial number of rows."""
    finite = values[np.isfinite(values)]
    return len(finite) >= _MIN_ROWS_RATIO_CHECK and finite.min() >= 0.0 and 0.0 < finite.max() <= 1.0


def validate_raw_metrics(  # noqa: PLR0912, PLR0915 (one check after the other, all problems collected)
    raw_server_metrics: pd.DataFrame,
    server_inventory: pd.DataFrame,
    column_mapping: dict[str, str] | None,
    throughput_capacity: dict[str, float] | None,
    unknown_servers: str,
    value_scale: float | dict[str, float] | None = None,
    valid_date_range: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Checks a raw export and returns it typed: naive UTC timestamps, categorical ids, float64 metrics.

    Every problem found is collected first, then one ``RawMetricsError`` names the file
    (``raw_server_metrics.attrs["source"]``), each bad column, how many rows are affected, example rows and
    what is wrong. Empty metric cells are allowed (they become gaps); text, ``inf``, booleans, unparseable
    timestamps and timestamps outside ``valid_date_range`` (a 1970 epoch-0 or a 2031 typo would stretch the
    calendar) are not. A metric whose whole range sits in [0, 1] looks like 0-1 ratios exported instead of
    percent: it is an error unless ``value_scale`` names a factor for it (100 for ratios, 1 to confirm
    percentages below 1 %).

    Args:
        raw_server_metrics: Export with ``timestamp``, ``server_id`` and the four metric columns (after
            mapping).
        server_inventory: Inventory with a ``server_id`` column.
        column_mapping: Export column -> project column, e.g. ``{cpu_pct: cpu_p95}``
            (``params:etl.column_mapping``).
        throughput_capacity: Metric -> capacity in the export's unit, for metrics exported as throughput
            (e.g. ``{disk_io_p95: 102400}`` KB/s); those values become % of capacity
            (``params:etl.throughput_capacity``).
        unknown_servers: What to do with servers missing from the inventory: ``error``, ``drop`` (rows removed
            and reported) or ``keep`` (reported only) (``params:etl.unknown_servers``). An empty inventory (no
            file) makes every server unknown.
        value_scale: Factor the export's values are multiplied by, one number or per metric, e.g.
            ``{cpu_p95: 100}`` for 0-1 ratios (``params:etl.value_scale``; before ``throughput_capacity``).
        valid_date_range: ``{min: "2000-01-01", max: null}``: first and last allowed day, ``max: null`` =
            today (UTC) + 1 day (``params:etl.valid_date_range``).

    Returns:
        The typed frame (only the required columns) and validation statistics for the quality report.
    """
    source = str(raw_server_metrics.attrs.get("source", "<in-memory raw_server_metrics>"))
    if unknown_servers not in _UNKNOWN_SERVER_ACTIONS:
        raise ValueError(
            f"params:etl.unknown_servers must be one of {_UNKNOWN_SERVER_ACTIONS}, got {unknown_servers!r}"
        )
    frame = raw_server_metrics.rename(columns=dict(column_mapping or {}))
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        frame = frame.drop(columns=[_ROW], errors="ignore")
        first = frame.head(_N_EXAMPLES).to_dict(orient="records")
        joined = [d for d in (";", "\t", "|") if any(d in str(c) for c in frame.columns)]
        hint = (
            f" The header looks separated by {joined[0]!r}, not ',': read the file with that delimiter "
            f"(load_args: {{sep: {joined[0]!r}}} in the catalog entry)."
            if joined
            else ""
        )
        raise RawMetricsError(
            f"file {source}: required column(s) {missing} not found. Columns present: {list(frame.columns)}; "
            f"example rows: {first}. Rename them with params:etl.column_mapping (e.g. {{cpu_pct: cpu_p95}})."
            + hint
        )
    frame = frame[_REQUIRED + [_ROW]] if _ROW in frame.columns else frame[_REQUIRED]
    if frame.empty:
        raise RawMetricsError(f"file {source}: no data rows (columns {_REQUIRED})")
    problems: list[str] = []
    low, end = _date_bounds(valid_date_range)
    scales = _scales(value_scale)

    if pd.api.types.is_numeric_dtype(frame["timestamp"].dtype):  # epoch numbers: unit unknown, refuse
        timestamps = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
        problems.append(
            _problem(
                source,
                "timestamp",
                np.ones(len(frame), dtype=bool),
                frame,
                "are numbers (epoch?), not ISO 8601 timestamps such as 2024-01-31 or 2024-01-31T13:05:00Z",
            )
        )
    else:
        timestamps = _parse_timestamps(frame["timestamp"])
        bad = timestamps.isna().to_numpy()
        if bad.any():
            problems.append(_problem(source, "timestamp", bad, frame, "are empty or not ISO 8601 timestamps"))
        ts = timestamps.to_numpy(dtype="datetime64[ns]")
        outside = ~bad & ((ts < low.to_datetime64()) | (ts >= end.to_datetime64()))
        if outside.any():
            problems.append(
                _problem(
                    source,
                    "timestamp",
                    outside,
                    frame,
                    f"fall outside the plausible range {low.date()} .. {(end - pd.Timedelta(days=1)).date()} "
                    "(an epoch-0 1970 date or a typo?); correct or remove those rows, or widen "
                    "params:etl.valid_date_range {min: ..., max: ...}",
                )
            )

    server_id = frame["server_id"]
    if not isinstance(server_id.dtype, pd.CategoricalDtype):
        missing_id = server_id.isna().to_numpy()
        server_id = server_id.astype("str").str.strip()
        blank = missing_id | (server_id == "").to_numpy()
        if blank.any():
            problems.append(_problem(source, "server_id", blank, frame, "have an empty server_id"))
        server_id = pd.Categorical(server_id)
    else:
        server_id = pd.Categorical(
            server_id.cat.rename_categories([str(c) for c in server_id.cat.categories])
        )

    metrics: dict[str, np.ndarray] = {}
    capacity = dict(throughput_capacity or {})
    for metric in _METRICS:
        if _is_boolean(frame[metric]):
            problems.append(
                _problem(
                    source,
                    metric,
                    frame[metric].notna().to_numpy(),
                    frame,
                    "hold booleans (True/False), not utilisation in %; export the numeric metric or map the "
                    "right column with params:etl.column_mapping",
                )
            )
            metrics[metric] = np.full(len(frame), np.nan)
            continue
        values, bad = _parse_metric(frame[metric])
        if bad.any():
            problems.append(_problem(source, metric, bad, frame, "are not finite numbers"))
        if metric in scales:
            values = values * scales[metric]
        elif metric not in capacity and _looks_like_ratios(values):
            problems.append(
                _problem(
                    source,
                    metric,
                    np.isfinite(values),
                    frame,
                    "all lie in [0, 1]: these look like 0-1 ratios, not percent. Set params:etl.value_scale "
                    f"{{{metric}: 100}} (or value_scale: 100 for every metric) to turn them into %, or "
                    f"{{{metric}: 1}} if they really are percentages below 1 %",
                )
            )
        if metric in capacity:
            values = values / float(capacity[metric]) * 100.0
        metrics[metric] = values

    no_inventory = server_inventory.empty and not len(server_inventory.columns)  # optional file absent
    if "server_id" not in server_inventory.columns and not no_inventory:
        inv_source = server_inventory.attrs.get("source", "server_inventory")
        raise RawMetricsError(
            f"file {inv_source}: column 'server_id' not found (columns: {list(server_inventory.columns)})"
        )
    known = set() if no_inventory else set(server_inventory["server_id"].astype("str").str.strip())
    unknown_names = sorted(set(server_id.categories) - known)
    unknown_mask = np.zeros(len(frame), dtype=bool)
    if unknown_names:
        unknown_mask = np.asarray(pd.Series(server_id).isin(unknown_names))
        if unknown_servers == "error":
            problems.append(
                _problem(
                    source,
                    "server_id",
                    unknown_mask,
                    frame,
                    f"name servers missing from server_inventory "
                    f"({len(unknown_names)} server(s): {unknown_names[:10]}); add them to the inventory "
                    "or set params:etl.unknown_servers to drop or keep",
                )
            )
    if problems:
        raise RawMetricsError(
            "Invalid raw_server_metrics (rows are 0-based data rows; CSV line = row + 2):\n- "
            + "\n- ".join(problems)
        )

    validated = pd.DataFrame(
        {"timestamp": timestamps.to_numpy(dtype="datetime64[ns]"), "server_id": server_id, **metrics}
    )
    dropped = 0
    if unknown_names and unknown_servers == "drop":
        dropped = int(unknown_mask.sum())
        validated = validated.loc[~unknown_mask].reset_index(drop=True)
        validated["server_id"] = validated["server_id"].cat.remove_unused_categories()
    if unknown_names:
        logger.warning(
            "%d server(s) not in server_inventory (%s): %s",
            len(unknown_names),
            unknown_servers,
            unknown_names[:10],
        )
    stats = {
        "source": source,
        "rows_in": len(frame),
        "valid_date_range": [str(low.date()), str((end - pd.Timedelta(days=1)).date())],
        "value_scale": scales,
        "server_inventory": "none (every server unknown)" if no_inventory else f"{len(known)} server(s)",
        "inventory_servers": None if no_inventory else len(known),
        "unknown_servers": unknown_names,
        "unknown_servers_action": unknown_servers,
        "unknown_server_rows_dropped": dropped,
        "unknown_server_rows_kept": int(unknown_mask.sum()) if unknown_servers == "keep" else 0,
        "inventory_servers_without_metrics": len(known - set(server_id.categories)),
    }
    return validated, stats


# ------------------------------------------------------------------------------------------- aggregation
def _same_server_and_time(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose server_id and timestamp also appear on another row (every row of such a group is True)."""
    codes = frame["server_id"].cat.codes.to_numpy()
    ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]")
    if len(ts) < 2:
        return np.zeros(len(ts), dtype=bool)
    same_server = codes[1:] == codes[:-1]
    in_order = bool(((codes[1:] > codes[:-1]) | (same_server & (ts[1:] >= ts[:-1]))).all())
    if in_order:  # the usual export order (server, time): equal keys are neighbours
        pair = same_server & (ts[1:] == ts[:-1])
        return np.r_[pair, False] | np.r_[False, pair]
    return frame.duplicated(["server_id", "timestamp"], keep=False).to_numpy()


def _merge_conflicting_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Merges rows with the same server_id and timestamp but different values into one: the max per metric.

    The max is the conservative choice for capacity (a real peak is never averaged away). Returns the frame
    with one row per server and timestamp, and what was merged (counts and example groups) for the quality
    report.
    """
    conflicting = _same_server_and_time(frame)
    stats: dict[str, Any] = {
        "rule": "max of the conflicting values per metric (conservative for capacity)",
        "timestamps": 0,
        "rows_merged": 0,
        "examples": [],
    }
    if not conflicting.any():
        return frame, stats
    rows = frame.loc[conflicting]
    merged = rows.groupby(["server_id", "timestamp"], observed=True, sort=False)[_METRICS].max().reset_index()
    stats["timestamps"] = len(merged)
    stats["rows_merged"] = int(conflicting.sum()) - len(merged)
    for key in merged.head(_N_EXAMPLES).itertuples(index=False):
        group = rows.loc[(rows["server_id"] == key.server_id) & (rows["timestamp"] == key.timestamp)]
        stats["examples"].append(
            {
                "server_id": str(key.server_id),
                "timestamp": str(key.timestamp),
                **{m: [None if np.isnan(v) else float(v) for v in group[m]] for m in _METRICS},
            }
        )
    logger.warning(
        "%d server/timestamp pair(s) had rows with different values (%d rows merged, rule: max), e.g. %s",
        stats["timestamps"],
        stats["rows_merged"],
        stats["examples"][:1],
    )
    frame = pd.concat([frame.loc[~conflicting], merged], ignore_index=True)
    return frame, stats


def _partial_day_floors(
    values: np.ndarray, group: np.ndarray, sizes: np.ndarray, partial: np.ndarray, typical: np.ndarray
) -> dict[str, np.ndarray]:
    """Per partial day and metric, a lower bound of the P95 the full day would have had (NaN elsewhere).

    With ``n`` samples in a full day (the server's usual count), the linear P95 is at least ``v`` as soon as
    ``n - floor(0.95 (n - 1))`` samples are ``>= v``; so the partial day's k-th largest sample, with that
    ``k``, is a value its full day reached whatever the missing samples were. Cleaning never imputes a partial
    day below it, so a peak seen in the hours that were collected is not erased.
    """
    floors = {metric: np.full(len(sizes), np.nan) for metric in _METRICS}
    if not partial.any():
        return floors
    in_partial = np.repeat(partial, sizes)
    days = group[in_partial]
    need = (typical - np.floor(0.95 * (typical - 1)))[days]
    samples = values[in_partial]
    ranks = pd.DataFrame(samples, columns=_METRICS).groupby(days).rank(ascending=False, method="first")
    for m, metric in enumerate(_METRICS):
        hit = ranks[metric].to_numpy() == need
        floors[metric][days[hit]] = samples[hit, m]
    return floors


def aggregate_daily_metrics(
    validated_metrics: pd.DataFrame, min_daily_coverage: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Removes exact duplicates and turns sub-daily samples into the daily P95 of each server and metric.

    Rows repeating a server and timestamp with different values are merged into their max per metric (counted
    and listed in the statistics). A day that has one row keeps its values unchanged (daily input passes
    through). When a day has several samples, its value is their 95th percentile (linear interpolation, NaN
    samples ignored). In a sub-daily export, a day with fewer samples than ``min_daily_coverage`` x the
    server's median samples per day (e.g. an outage that left two hours of data) would give a biased P95:
    inside the series it is marked ``is_partial`` (cleaning turns it into a gap, imputed or reported, and
    lists it; the ``partial_floor_<metric>`` columns hold what its samples prove about the full day's P95), at
    the start or end of a series it is dropped. Both are counted.

    Args:
        validated_metrics: Output of ``validate_raw_metrics``.
        min_daily_coverage: Minimum share of a server's usual daily samples
            (``params:etl.min_daily_coverage``).

    Returns:
        Daily frame ``server_id`` (categorical), ``date`` (midnight), metrics, ``samples`` (rows behind the
        day) and ``is_partial``; sorted by server and date. And the aggregation statistics for the quality
        report.
    """
    n_in = len(validated_metrics)
    deduplicated = validated_metrics.loc[~validated_metrics.duplicated()]
    duplicates = n_in - len(deduplicated)
    deduplicated, conflicts = _merge_conflicting_rows(deduplicated)
    codes = deduplicated["server_id"].cat.codes.to_numpy().astype("int64")
    ts = deduplicated["timestamp"].to_numpy(dtype="datetime64[ns]").astype("int64")
    day = ts // _NS_PER_DAY
    day0 = int(day.min()) if len(day) else 0
    key = codes * (int(day.max()) - day0 + 1 if len(day) else 1) + (day - day0)
    presorted = len(key) < 2 or bool((key[1:] >= key[:-1]).all())  # exports are usually in server, time order
    order = np.arange(len(key)) if presorted else np.argsort(key, kind="stable")
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]]) if len(key) else np.array([], int)
    sizes = np.diff(np.r_[starts, len(key)])
    first = order[starts]
    daily = pd.DataFrame(
        {
            "server_id": pd.Categorical.from_codes(
                codes[first], categories=deduplicated["server_id"].cat.categories
            ),
            "date": (day[first] * _NS_PER_DAY).astype("datetime64[ns]"),
        }
    )
    sub_daily = bool((sizes > 1).any())
    if sub_daily:
        group = np.repeat(np.arange(len(starts)), sizes)
        values = deduplicated[_METRICS].to_numpy(dtype="float64")[order]
        p95 = pd.DataFrame(values, columns=_METRICS).groupby(group).quantile(0.95)
        for metric in _METRICS:
            daily[metric] = p95[metric].to_numpy()
    else:
        for metric in _METRICS:
            daily[metric] = deduplicated[metric].to_numpy()[first]

    sparse_blanked = sparse_edge = 0
    if sub_daily:
        daily_codes = codes[first]
        typical = pd.Series(sizes).groupby(daily_codes).transform("median").to_numpy()
        sparse = sizes < min_daily_coverage * typical
        position = np.arange(len(sizes))
        full = pd.Series(np.where(sparse, np.nan, position))
        lo = full.groupby(daily_codes).transform("min").to_numpy()
        hi = full.groupby(daily_codes).transform("max").to_numpy()
        edge = sparse & ~((position > lo) & (position < hi))
        interior = sparse & ~edge
        sparse_edge, sparse_blanked = int(edge.sum()), int(interior.sum())
        daily["samples"] = sizes.astype("int32")
        daily["is_partial"] = interior
        floors = _partial_day_floors(values, group, sizes, interior, typical)
        for metric in _METRICS:
            daily[_FLOOR + metric] = floors[metric]
        daily = daily.loc[~edge].reset_index(drop=True)
    else:
        daily["samples"] = sizes.astype("int32")
        daily["is_partial"] = False
    daily["server_id"] = daily["server_id"].cat.remove_unused_categories()
    stats = {
        "rows_after_validation": n_in,
        "duplicates_removed": duplicates,
        "conflicting_rows_merged": conflicts["rows_merged"],
        "conflicting_duplicates": conflicts,
        "sampling": "sub-daily" if sub_daily else "daily",
        "subdaily_samples_aggregated": int(len(deduplicated) - len(starts)),
        "daily_rows_observed": len(starts),
        "sparse_days_blanked": sparse_blanked,
        "sparse_edge_days_dropped": sparse_edge,
    }
    logger.info("Daily aggregation: %s", stats)
    return daily, stats


# ---------------------------------------------------------------------------------------------- cleaning
def _nanmedian_last_axis(stack: np.ndarray, min_count: int) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN below ``min_count`` values); vectorised by sorting."""
    ordered = np.sort(stack, axis=-1)  # NaN sort last
    count = (~np.isnan(stack)).sum(axis=-1)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, (count // 2)[..., None].clip(max=stack.shape[-1] - 1), axis=-1)[..., 0]
    return np.where(count >= min_count, (low + high) / 2, np.nan)


def _shift(matrix: np.ndarray, k: int) -> np.ndarray:
    """Shifts columns right by ``k`` (day t-k's value lands on day t), NaN-padded; a negative ``k`` left."""
    out = np.full_like(matrix, np.nan)
    if k > 0:
        out[:, k:] = matrix[:, :-k]
    elif k < 0:
        out[:, :k] = matrix[:, -k:]
    else:
        out[:] = matrix
    return out


def _weekly_baseline(x: np.ndarray, weeks: int) -> np.ndarray:
    """Median of the same weekday ``1..weeks`` weeks before and after (the day itself left out, so a spike
    cannot pull its own baseline); robust to level shifts, the weekly shape and other spikes."""
    offsets = [k for k in range(-weeks, weeks + 1) if k]
    stack = np.empty((*x.shape, len(offsets)), dtype="float32")
    for j, k in enumerate(offsets):
        stack[..., j] = _shift(x, 7 * k)
    return _nanmedian_last_axis(stack, min_count=3).astype("float64")


def _robust_scale(deviation: np.ndarray) -> np.ndarray:
    """Per-row robust standard deviation of absolute deviations: 1.4826 x MAD, floored by 1.2533 x their mean.

    The mean floor matters for series whose MAD is ~0 (e.g. a VM pinned at 100 % most days): there, ordinary
    dips are the series' behaviour, not glitches.
    """
    mad = np.nan_to_num(_nanmedian_last_axis(deviation, min_count=1))
    finite = np.isfinite(deviation)
    mean = np.where(finite, deviation, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
    return np.maximum(_MAD_TO_SD * mad, _MEAN_AD_TO_SD * mean)[:, None]


def _flag_outliers(
    x: np.ndarray, day_classes: list[np.ndarray], weeks: int, threshold: float, min_scale: float
) -> np.ndarray:
    """Robust outliers: residual from a same-weekday baseline, divided by a robust scale, above ``threshold``.

    On recurring calendar days (each class: quarter-end window, month-end window, holidays, and their
    overlaps) a value is judged against that series' own distribution on those days: its typical residual
    there is subtracted and the scale is the larger of the series' scale and the class's, so recurring peaks
    and dips are not outliers while a glitch far beyond them still is.
    """
    residual = x - _weekly_baseline(x, weeks)
    deviation = np.abs(residual - _nanmedian_last_axis(residual, min_count=1)[:, None])
    scale = np.maximum(_robust_scale(deviation), min_scale)
    score = deviation / scale
    for days in day_classes:
        if days.any():
            on_days = residual[:, days]
            class_deviation = np.abs(
                on_days - np.nan_to_num(_nanmedian_last_axis(on_days, min_count=1))[:, None]
            )
            score[:, days] = class_deviation / np.maximum(scale, _robust_scale(class_deviation))
    with np.errstate(invalid="ignore"):
        return score > threshold  # NaN compares False


def _neighbours(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the previous and next valid column for every cell (-1 / n_columns when there is none)."""
    n = valid.shape[1]
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(valid, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(valid, idx, n)[:, ::-1], axis=1)[:, ::-1]
    return prev, nxt


def _interpolate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation across NaN runs: the filled matrix, and each cell's gap length and edge flag."""
    valid = ~np.isnan(x)
    prev, nxt = _neighbours(valid)
    rows = np.arange(x.shape[0])[:, None]
    inside = (prev >= 0) & (nxt < x.shape[1])
    p, q = np.clip(prev, 0, x.shape[1] - 1), np.clip(nxt, 0, x.shape[1] - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = (np.arange(x.shape[1]) - p) / (q - p)
        filled = np.where(valid, x, np.where(inside, x[rows, p] + (x[rows, q] - x[rows, p]) * weight, np.nan))
    return filled, nxt - prev - 1, inside


def _estimates(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Estimates for every NaN cell from its observed neighbours, and the length of the NaN run it is in.

    ``time``: linear between the previous and next observed day. ``seasonal``: linear between the same weekday
    before and after, falling back to ``time`` where one of those is missing. Runs touching a series edge
    (no observation on one side) get no estimate and a length of ``n_days + 1``.
    """
    filled, run_length, inside = _interpolate(x)
    run_length = np.where(inside, run_length, x.shape[1] + 1)
    if method == "seasonal":
        seasonal = np.full_like(x, np.nan)
        for phase in range(7):
            seasonal[:, phase::7] = _interpolate(x[:, phase::7])[0]
        filled = np.where(np.isnan(seasonal), filled, seasonal)
    return filled, run_length


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: dates as YYYY-MM-DD, values rounded to 0.01, NaN as None."""
    out = frame.assign(
        date=frame["date"].dt.strftime("%Y-%m-%d"),
        before=frame["before"].round(2),
        after=frame["after"].round(2),
    ).astype({"before": object, "after": object})
    return out.where(out.notna(), None).to_dict(orient="records")


def _server_last_days(
    servers: pd.Index, dates: pd.DatetimeIndex, last_observed: np.ndarray, last: np.ndarray
) -> pd.DataFrame:
    """The smallest long table on which ``capacity_forecaster.freshness`` answers as on the clean table.

    Per server: its last calendar day with an empty value, and its last day with an observed (not imputed)
    value; a server without one has only the first row. Computed from the dense matrices, it spares the
    quality report a pass over tens of millions of clean rows.
    """
    has_value = last_observed >= 0
    return pd.DataFrame(
        {
            "server_id": np.r_[np.asarray(servers), np.asarray(servers)[has_value]],
            "date": np.r_[dates[last].to_numpy(), dates[last_observed[has_value]].to_numpy()],
            "value": np.r_[np.full(len(servers), np.nan), np.zeros(int(has_value.sum()))],
            "is_imputed": False,
        }
    )


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, first column and length of every run of True along axis 1."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    change = np.diff(padded, axis=1)
    row_s, start = np.nonzero(change == 1)
    row_e, end = np.nonzero(change == -1)
    return row_s, start, end - start  # np.nonzero is row-major, so starts and ends pair up


def clean_daily_metrics(  # noqa: PLR0915
    daily_metrics: pd.DataFrame,
    max_gap_days: int,
    imputation_method: str,
    outlier_threshold: float,
    outlier_window_weeks: int,
    outlier_min_scale: float,
    replace_outliers: bool,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
    high_threshold: float = 80.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Builds the clean long table: complete calendar, clipped, outliers flagged, short gaps imputed.

    Per server the calendar runs from its first to its last day. Per metric series, in this order:
    values < 0 or > 100 are clipped (``is_clipped``); outliers are flagged (``is_outlier``) when their
    distance from a robust baseline exceeds ``outlier_threshold`` x 1.4826 x MAD of the series' residuals. The
    baseline is the median of the same weekday over +-``outlier_window_weeks`` weeks, and on month-end,
    end-of-quarter and holiday days the series' typical residual on such days is subtracted first, so peaks
    that recur are not flagged while one-off glitches are. With ``replace_outliers`` flagged values of a daily
    export (one row per day) are re-estimated like gaps. A day aggregated from sub-daily samples is never
    replaced by this rule: its P95 of many samples is already robust to a single glitch, so an unusual day is
    a real one (flagged, kept). Partial days (``is_partial`` from aggregation: a collection artefact) become
    gaps, never imputed below the lower bound their samples prove (``partial_floor_<metric>``). Every replaced
    day is listed in the statistics (server, metric, date, before, after, rule), those above
    ``high_threshold`` counted. Runs of missing days up to ``max_gap_days`` long with observed days on both
    sides are imputed (``is_imputed``); longer gaps and gaps at a series edge stay NaN and are listed in the
    statistics.

    Args:
        daily_metrics: Output of ``aggregate_daily_metrics``.
        max_gap_days: Longest gap that is imputed (``params:etl.max_gap_days``).
        imputation_method: ``time`` (linear in time) or ``seasonal`` (linear between the same weekdays)
            (``params:etl.imputation_method``).
        outlier_threshold: Robust z-score above which a value is an outlier
            (``params:etl.outlier_threshold``).
        outlier_window_weeks: Weeks each side in the weekday baseline (``params:etl.outlier_window_weeks``).
        outlier_min_scale: Floor of the robust scale in percentage points, so flat series do not flag noise
            (``params:etl.outlier_min_scale``).
        replace_outliers: Re-estimate flagged values (True) or keep them (``params:etl.replace_outliers``).
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).
        high_threshold: Utilisation (%): a replaced day above it that ends lower (or missing) is counted apart
            and logged (``params:etl.high_threshold``).

    Returns:
        ``clean_server_metrics`` (server_id, metric, date, value, is_imputed, is_clipped, is_outlier; sorted
        by server_id, metric, date) and the cleaning statistics for the quality report.
    """
    if imputation_method not in _IMPUTATION_METHODS:
        raise ValueError(
            f"params:etl.imputation_method must be one of {_IMPUTATION_METHODS}, got {imputation_method!r}"
        )
    servers = daily_metrics["server_id"].cat.categories.astype("str")
    codes = daily_metrics["server_id"].cat.codes.to_numpy().astype("int64")
    day_ns = daily_metrics["date"].to_numpy(dtype="datetime64[ns]").astype("int64") // _NS_PER_DAY
    day0 = int(day_ns.min())
    n_days = int(day_ns.max()) - day0 + 1
    col = day_ns - day0
    n_series = len(servers)
    first = np.full(n_series, n_days, dtype="int64")
    last = np.full(n_series, -1, dtype="int64")
    np.minimum.at(first, codes, col)
    np.maximum.at(last, codes, col)
    day_idx = np.arange(n_days)
    in_range = (day_idx >= first[:, None]) & (day_idx <= last[:, None])
    dates = pd.date_range(pd.Timestamp(day0 * _NS_PER_DAY), periods=n_days, freq="D")
    cal = calendar_features(dates, country, month_end_business_days, quarter_end_business_days)
    # recurring calendar days, one class per combination (e.g. Thanksgiving inside a month-end window)
    kind = (
        cal["is_end_of_quarter"].to_numpy().astype(int) * 4
        + cal["is_month_end"].to_numpy().astype(int) * 2
        + cal["is_holiday"].to_numpy().astype(int)
    )
    day_classes = [kind == k for k in np.unique(kind) if k]

    n_range = int(in_range.sum())
    shape = (n_series, len(_LONG_METRICS), n_days)
    value = np.empty(shape, dtype="float64")
    flags = {name: np.zeros(shape, dtype=bool) for name in ("is_imputed", "is_clipped", "is_outlier")}
    by_metric: dict[str, dict[str, int]] = {}
    gap_rows: list[pd.DataFrame] = []
    single = np.zeros((n_series, n_days), dtype=bool)  # days given by one row: a daily export's value
    partial = np.zeros((n_series, n_days), dtype=bool)
    samples = daily_metrics["samples"].to_numpy() if "samples" in daily_metrics else np.ones(len(codes), int)
    single[codes, col] = samples <= 1
    if "is_partial" in daily_metrics:
        partial[codes, col] = daily_metrics["is_partial"].to_numpy(dtype=bool)
    flat = codes * n_days + col
    by_cell = np.argsort(flat, kind="stable")
    replaced_parts: list[pd.DataFrame] = []
    last_observed = np.full(n_series, -1, dtype="int64")  # last day with an observed, kept value (any metric)
    for m, metric in enumerate(_LONG_METRICS):
        x = np.full((n_series, n_days), np.nan)
        x[codes, col] = daily_metrics[metric].to_numpy(dtype="float64")
        x[partial] = np.nan  # a partial day's P95 is biased: a gap (listed below with its value)
        observed = ~np.isnan(x)
        clipped = observed & ((x < 0) | (x > 100))
        np.clip(x, 0.0, 100.0, out=x)
        outlier = _flag_outliers(x, day_classes, outlier_window_weeks, outlier_threshold, outlier_min_scale)
        missing = in_range & ~observed
        estimate, gap_length = _estimates(x, imputation_method)  # runs of genuinely missing days
        gap_filled = missing & (gap_length <= max_gap_days)
        replaced = np.zeros_like(outlier)
        replaceable = outlier & single  # a sub-daily P95 is the value: real peaks are kept
        if replace_outliers and replaceable.any():
            # estimates from values that stay (a glitch never anchors an imputation); a flagged value is
            # replaced only when the run of gaps and replaceable outliers around it is short
            masked_estimate, masked_length = _estimates(np.where(replaceable, np.nan, x), imputation_method)
            estimate = np.where(np.isnan(masked_estimate), estimate, masked_estimate)
            replaced = replaceable & (masked_length <= max_gap_days)
        update = gap_filled | replaced
        x[update] = estimate[update]
        if _FLOOR + metric in daily_metrics:  # a partial day is never imputed below what its samples prove
            floor = np.full((n_series, n_days), np.nan)
            floor[codes, col] = daily_metrics[_FLOOR + metric].to_numpy(dtype="float64")
            raise_to = gap_filled & (floor > x)
            x[raise_to] = floor[raise_to]
        kept = observed & ~replaced
        last_kept = n_days - 1 - np.argmax(kept[:, ::-1], axis=1)
        last_observed = np.maximum(last_observed, np.where(kept.any(axis=1), last_kept, -1))
        row, day_col = np.nonzero(replaced | (partial & in_range))
        wanted = np.searchsorted(flat, row * n_days + day_col, sorter=by_cell)
        replaced_parts.append(
            pd.DataFrame(
                {
                    "server_id": servers[row],
                    "metric": metric,
                    "date": dates[day_col],
                    "before": daily_metrics[metric].to_numpy(dtype="float64")[by_cell[wanted]],
                    "after": x[row, day_col],
                    "rule": np.where(replaced[row, day_col], "outlier_daily_value", "partial_day"),
                }
            )
        )
        left = missing & ~gap_filled
        value[:, m, :] = x
        flags["is_imputed"][:, m, :] = update
        flags["is_clipped"][:, m, :] = clipped
        flags["is_outlier"][:, m, :] = outlier
        by_metric[metric] = {
            "values_observed": int(observed.sum()),
            "values_missing": int((in_range & ~observed).sum()),
            "values_imputed": int(gap_filled.sum()),
            "values_left_missing": int(left.sum()),
            "values_clipped": int(clipped.sum()),
            "values_flagged_outlier": int(outlier.sum()),
            "outliers_replaced": int(replaced.sum()),
            "outliers_kept_sub_daily": int((outlier & ~single).sum()),
        }
        row, start, length = _runs(left)
        gap_rows.append(pd.DataFrame({"row": row, "start": start, "days": length, "metric": metric}))

    keep = np.broadcast_to(in_range[:, None, :], shape)
    n_metrics = len(_LONG_METRICS)
    series_len = (last - first + 1).clip(min=0)
    server_codes = np.repeat(np.arange(n_series), series_len * n_metrics)
    metric_codes = np.repeat(np.tile(np.arange(n_metrics), n_series), np.repeat(series_len, n_metrics))
    clean = pd.DataFrame(
        {
            "server_id": _str_column(servers, server_codes),
            "metric": _str_column(_LONG_METRICS, metric_codes),
            "date": np.broadcast_to(dates.to_numpy(dtype="datetime64[ns]"), shape)[keep],
            "value": value[keep],
            **{name: flag[keep] for name, flag in flags.items()},
        }
    )
    del value, flags

    gaps = pd.concat(gap_rows, ignore_index=True)
    long_gaps: list[dict[str, Any]] = []
    if len(gaps):
        gaps["reason"] = np.where(
            (gaps["start"] == first[gaps["row"]]) | (gaps["start"] + gaps["days"] - 1 == last[gaps["row"]]),
            "at series edge",
            f"longer than {max_gap_days} days",
        )
        grouped = (
            gaps.groupby(["row", "start", "days", "reason"], sort=True)["metric"].agg(list).reset_index()
        )
        for r in grouped.itertuples(index=False):
            long_gaps.append(
                {
                    "server_id": str(servers[r.row]),
                    "start": str(dates[r.start].date()),
                    "end": str(dates[r.start + r.days - 1].date()),
                    "days": int(r.days),
                    "metrics": list(r.metric),
                    "reason": r.reason,
                }
            )
    totals = {key: sum(stats[key] for stats in by_metric.values()) for key in next(iter(by_metric.values()))}
    replaced_days = pd.concat(replaced_parts, ignore_index=True).sort_values(["server_id", "date", "metric"])
    # a peak lost: above the threshold before, lower (or left missing) after
    above = (replaced_days["before"] > high_threshold) & ~(replaced_days["after"] >= replaced_days["before"])
    stats = {
        "servers": n_series,
        "first_date": str(dates[0].date()),
        "last_date": str(dates[-1].date()),
        "rows_out": n_range,
        "values_out": n_range * n_metrics,
        "calendar_days_added": n_range - len(daily_metrics),
        **totals,
        "by_metric": by_metric,
        "long_gaps": long_gaps,
        "high_threshold": float(high_threshold),
        "days_replaced": len(replaced_days),
        "days_replaced_above_high_threshold": int(above.sum()),
        "days_replaced_by_rule": {str(k): int(v) for k, v in replaced_days["rule"].value_counts().items()},
        "replaced_days": _records(replaced_days),
        "server_last_days": _server_last_days(servers, dates, last_observed, last),
    }
    if above.any():
        logger.warning(
            "%d replaced day(s) were above %.0f %% and are lower after "
            "(data_quality_report.replaced_days): %s",
            int(above.sum()),
            high_threshold,
            _records(replaced_days.loc[above].head(_N_EXAMPLES)),
        )
    logger.info(
        "Cleaned %d server-days: %d clipped, %d outliers flagged (%d replaced), %d imputed, %d left missing",
        n_range,
        totals["values_clipped"],
        totals["values_flagged_outlier"],
        totals["outliers_replaced"],
        totals["values_imputed"],
        totals["values_left_missing"],
    )
    return clean, stats


# ---------------------------------------------------------------------------------------------- reporting
_REPLACED_DAY_RULES = {
    "outlier_daily_value": "a daily export's single value far from its same-weekday baseline (robust "
    "z-score above outlier_threshold), re-estimated like a short gap; sub-daily P95 days are never replaced "
    "this way",
    "partial_day": "a sub-daily day with fewer samples than min_daily_coverage x the server's usual count "
    "(a collection artefact): its P95 is biased, so it became a gap (after = imputed value, null if left "
    "missing)",
}


def _day(value: Any) -> str | None:
    return None if pd.isna(value) else str(pd.Timestamp(value).date())


def _int_or_none(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


# The report's counts: each adds up across shards (the fleet's is the sum of the shards').
_ADDITIVE_COUNTS = (
    "rows_in",
    "rows_out",
    "values_out",
    "servers",
    "unknown_server_rows_dropped",
    "unknown_server_rows_kept",
    "inventory_servers_without_metrics",
    "duplicates_removed",
    "conflicting_rows_merged",
    "subdaily_samples_aggregated",
    "daily_rows_observed",
    "sparse_days_blanked",
    "sparse_edge_days_dropped",
    "calendar_days_added",
    "values_observed",
    "values_missing",
    "values_imputed",
    "values_left_missing",
    "values_clipped",
    "values_flagged_outlier",
    "outliers_replaced",
    "outliers_kept_sub_daily",
    "days_replaced",
    "days_replaced_above_high_threshold",
)


def _counts(*stage_stats: dict[str, Any]) -> dict[str, int]:
    """The ``_ADDITIVE_COUNTS`` of a data set, from its validation, aggregation and cleaning statistics."""
    merged = {key: value for stats in stage_stats for key, value in stats.items()}
    return {key: merged[key] for key in _ADDITIVE_COUNTS}


def build_data_quality_report(
    validation_stats: dict[str, Any],
    aggregation_stats: dict[str, Any],
    cleaning_stats: dict[str, Any],
    stale_after_days: int,
) -> dict[str, Any]:
    """Merges the stage statistics into the quality report; checks that every row and value is accounted for.

    Identities (each is recomputed here and the node fails if one does not hold):
    ``rows_in = unknown_server_rows_dropped + duplicates_removed + conflicting_rows_merged +
    subdaily_samples_aggregated + daily_rows_observed``; ``rows_out = daily_rows_observed -
    sparse_edge_days_dropped + calendar_days_added``; ``values_out = values_observed + values_missing``;
    ``values_missing = values_imputed + values_left_missing``. Stale servers (silent for more than
    ``stale_after_days`` before the fleet's last day) come from ``capacity_forecaster.freshness``, applied to
    the cleaning statistics' ``server_last_days`` (each server's last calendar and last observed day).

    Args:
        validation_stats: Statistics of ``validate_raw_metrics``.
        aggregation_stats: Statistics of ``aggregate_daily_metrics``.
        cleaning_stats: Statistics of ``clean_daily_metrics``.
        stale_after_days: Days of silence after which a server is stale (``params:stale_after_days``).

    Returns:
        The ``data_quality_report`` dictionary (JSON-serialisable).
    """
    v, a, c = validation_stats, aggregation_stats, cleaning_stats
    rows_in_check = (
        v["unknown_server_rows_dropped"]
        + a["duplicates_removed"]
        + a["conflicting_rows_merged"]
        + a["subdaily_samples_aggregated"]
        + a["daily_rows_observed"]
    )
    rows_out_check = a["daily_rows_observed"] - a["sparse_edge_days_dropped"] + c["calendar_days_added"]
    checks = {
        "rows_in": (v["rows_in"], rows_in_check),
        "rows_out": (c["rows_out"], rows_out_check),
        "values_out": (c["values_out"], c["values_observed"] + c["values_missing"]),
        "values_missing": (c["values_missing"], c["values_imputed"] + c["values_left_missing"]),
    }
    broken = {k: pair for k, pair in checks.items() if pair[0] != pair[1]}
    if broken:
        raise RuntimeError(f"data_quality_report does not add up (reported, recomputed): {broken}")
    servers_with_gaps = sorted({g["server_id"] for g in c["long_gaps"]})
    stale = find_stale_servers(c["server_last_days"], stale_after_days)
    if len(stale):
        logger.warning(
            "%d server(s) stopped reporting more than %d days before %s: %s",
            len(stale),
            stale_after_days,
            analysis_date(c["server_last_days"]).date(),
            stale["server_id"].head(10).tolist(),
        )
    report = {
        "source": v["source"],
        "sampling": a["sampling"],
        **_counts(v, a, c),
        "first_date": c["first_date"],
        "last_date": c["last_date"],
        "valid_date_range": v["valid_date_range"],
        "value_scale": v["value_scale"],
        "server_inventory": v["server_inventory"],
        "unknown_servers": v["unknown_servers"],
        "unknown_servers_action": v["unknown_servers_action"],
        "conflicting_duplicates": a["conflicting_duplicates"],
        "outliers_kept": c["values_flagged_outlier"] - c["outliers_replaced"],
        "high_threshold": c["high_threshold"],
        "days_replaced_by_rule": c["days_replaced_by_rule"],
        "replaced_day_rules": _REPLACED_DAY_RULES,
        "replaced_days": c["replaced_days"],
        "analysis_date": str(analysis_date(c["server_last_days"]).date()),
        "stale_after_days": stale_after_days,
        "stale_servers": [
            {
                "server_id": str(r.server_id),
                "last_day": _day(r.last_day),
                "days_silent": _int_or_none(r.days_silent),
            }
            for r in stale.itertuples(index=False)
        ],
        "servers_with_long_gaps": servers_with_gaps,
        "long_gaps": c["long_gaps"],
        "by_metric": c["by_metric"],
        "accounting": {
            "rows_in": "unknown_server_rows_dropped + duplicates_removed + conflicting_rows_merged + "
            "subdaily_samples_aggregated + daily_rows_observed",
            "rows_out": "daily_rows_observed - sparse_edge_days_dropped + calendar_days_added",
            "values_out": "rows_out x 4 metrics = values_observed + values_missing",
            "values_missing": "values_imputed + values_left_missing",
            "balanced": True,
        },
    }
    logger.info(
        "Data quality: %d rows in, %d server-days out, %d duplicates, %d imputed, %d clipped, %d outliers, "
        "%d servers with long gaps",
        report["rows_in"],
        report["rows_out"],
        report["duplicates_removed"],
        report["values_imputed"],
        report["values_clipped"],
        report["values_flagged_outlier"],
        len(servers_with_gaps),
    )
    return report


# ---------------------------------------------------------------------------------------------- features
def _prefix_sums(values: np.ndarray, dtype: str = "float64") -> np.ndarray:
    """Cumulative sums with a leading 0, so ``out[i] - out[i - w]`` is the sum of rows ``i-w..i-1``."""
    out = np.empty(len(values) + 1, dtype=dtype)
    out[0] = 0.0
    np.cumsum(values, out=out[1:])
    return out


def _window_before(prefix: np.ndarray, w: int) -> np.ndarray:
    """Sum of the ``w`` rows before each row (t-w..t-1) from ``_prefix_sums``; NaN for the first w rows."""
    n = len(prefix) - 1
    out = np.full(n, np.nan if prefix.dtype.kind == "f" else -1, dtype=prefix.dtype)
    if w < n:
        out[w:] = prefix[w:n] - prefix[: n - w]
    return out


def build_server_features(
    clean_server_metrics: pd.DataFrame,
    lags: list[int],
    rolling_windows: list[int],
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Adds lags, leak-free rolling statistics and calendar features to the clean long table.

    ``lag_k`` is the value k days earlier in the same series. ``rolling_mean_w`` / ``rolling_std_w`` (ddof=1)
    cover the w days ENDING THE DAY BEFORE (t-w..t-1), so a row never sees its own value; they are NaN until
    the series has w earlier days or when a long gap (NaN) falls in the window. Computed on the flat,
    series-sorted array with cumulative sums of per-series centred values (no groupby-rolling).

    Args:
        clean_server_metrics: Clean long table, sorted by server_id, metric, date with a complete calendar.
        lags: Lags in days (``params:etl.lags``), e.g. [1, 7, 30, 90, 97, 364].
        rolling_windows: Window lengths in days (``params:etl.rolling_windows``).
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).

    Returns:
        ``server_features``: keys, value, ``lag_*``, ``rolling_mean_*``, ``rolling_std_*`` (float32), calendar
        columns and ``is_imputed``.
    """
    keys = clean_server_metrics[["server_id", "metric", "date"]]
    value = clean_server_metrics["value"].to_numpy(dtype="float64")
    n = len(value)
    new_series = _changes(keys["server_id"]) | _changes(keys["metric"])
    series = (np.cumsum(new_series, dtype="int64") - 1).astype("int32")
    starts = np.flatnonzero(new_series)
    position = (np.arange(n, dtype="int64") - starts[series]).astype("int32")
    del new_series, starts
    names = [f"lag_{k}" for k in lags] + [
        f"rolling_{s}_{w}" for w in rolling_windows for s in ("mean", "std")
    ]
    block = np.full((len(names), n), np.nan, dtype="float32")  # one float32 block: no consolidation copy
    row = iter(range(len(names)))
    for k in lags:
        lagged = block[next(row)]
        if 0 < k < n:
            ok = position[k:] >= k
            lagged[k:][ok] = value[:-k][ok]
    is_nan = np.isnan(value)
    sums = np.bincount(series, weights=np.where(is_nan, 0.0, value)) if n else np.array([])
    counts = np.bincount(series, weights=~is_nan) if n else np.array([])
    base = (sums / np.maximum(counts, 1))[series]  # per-series mean: keeps the cumulative sums small
    del series
    centred = np.where(is_nan, 0.0, value - base)
    s1, s2, nans = _prefix_sums(centred), _prefix_sums(centred * centred), _prefix_sums(is_nan, "int32")
    del centred, is_nan
    with np.errstate(invalid="ignore"):
        for w in rolling_windows:
            total, squares = _window_before(s1, w), _window_before(s2, w)
            ok = (position >= w) & (_window_before(nans, w) == 0)
            block[next(row)] = np.where(ok, total / w + base, np.nan)
            var = (squares - total * total / w) / (w - 1) if w > 1 else np.full(n, np.nan)
            del total, squares
            block[next(row)] = np.where(ok, np.sqrt(np.maximum(var, 0.0)), np.nan)
            del var, ok
    del s1, s2, nans, base, position
    dates = keys["date"].to_numpy(dtype="datetime64[ns]")
    day = dates.astype("datetime64[D]").astype("int64")
    day0 = int(day.min()) if n else 0
    grid = pd.date_range(
        pd.Timestamp(day0, unit="D"), periods=(int(day.max()) - day0 + 1) if n else 0, freq="D"
    )
    cal = calendar_features(grid, country, month_end_business_days, quarter_end_business_days)
    index = day - day0
    del day
    frame = pd.DataFrame(block.T, columns=names, copy=False)
    for loc, (name, column) in enumerate(
        [
            ("server_id", keys["server_id"].array),
            ("metric", keys["metric"].array),
            ("date", dates),
            ("value", value),
        ]
    ):
        frame.insert(loc, name, column)  # arrays, not Series: no index alignment, no copy
    for name in cal.columns.drop("date"):
        frame[name] = cal[name].to_numpy()[index]
    frame["is_imputed"] = clean_server_metrics["is_imputed"].to_numpy(dtype=bool)
    logger.info(
        "Built %d feature rows with %d lags and %d rolling windows", n, len(lags), len(rolling_windows)
    )
    return frame


# ---------------------------------------------------------------------------------------------- sharding
def _release(*saved: dict[str, pd.DataFrame]) -> None:
    """Empties dicts a generator node yielded once Kedro has saved them (it resumes the generator only then).

    Kedro splits the items of a generator node with several outputs with ``itertools.tee``, which keeps up to
    57 items alive until the node ends; emptying them is what bounds memory by one shard or chunk.
    """
    for mapping in saved:
        mapping.clear()
    pa.default_memory_pool().release_unused()  # hand freed Arrow buffers back to the OS


def _chunks_of(raw: pd.DataFrame | Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The export as chunks: an iterator (``chunk_rows`` in the catalog) as it comes, a loaded frame in slices
    of ``_SPLIT_ROWS`` (routing copies one slice at a time, not the whole export)."""
    if not isinstance(raw, pd.DataFrame):
        yield from raw
        return
    for start in range(0, max(len(raw), 1), _SPLIT_ROWS):
        piece = raw.iloc[start : start + _SPLIT_ROWS]
        piece.attrs = {**raw.attrs, "first_row": start}
        yield piece


def _shards_of_ids(ids: pd.Series, shards: int) -> np.ndarray:
    """1-based shard of each server id, hashed on the trimmed text (as validation trims ids)."""
    if shards == 1:
        return np.ones(len(ids), dtype="int64")
    return shard_of(ids.astype("str").str.strip(), shards)


def split_raw_metrics(
    raw_server_metrics: pd.DataFrame | Iterable[pd.DataFrame],
    server_inventory: pd.DataFrame,
    column_mapping: dict[str, str] | None,
    shards: int | str,
    servers_per_shard: int,
) -> Iterator[tuple[dict[str, pd.DataFrame], dict[str, Any]]]:
    """One pass over the raw export that routes every row to its server's shard, chunk by chunk.

    A server's shard is ``capacity_forecaster.sharding.shard_of`` of its id, so it is the same in every run.
    Each row keeps its position in the export (column ``_row``), so validation errors name the export's rows.
    Rows are not checked here: a row without a usable server id goes to the shard of its (empty) id and is
    reported by validation.

    Args:
        raw_server_metrics: The export, as one frame or as an iterator of chunks (``chunk_rows`` of
            ``MetricsExportDataset``), which bounds memory by a chunk.
        server_inventory: Inventory; its server count sizes ``shards: auto`` (one shard without it).
        column_mapping: Export column -> project column (``params:etl.column_mapping``), to find the id
            column.
        shards: Shard count, or ``auto`` (``params:etl.shards``).
        servers_per_shard: Servers per shard for ``auto`` (``params:etl.servers_per_shard``).

    Yields:
        Per chunk: ``{shard_name: rows}`` for ``raw_metric_shards`` and the shard plan so far
        (``{"shards": K, "source": file, "rows": {shard_name: rows routed}, "chunks": n}``).
    """
    n_servers = len(server_inventory) if "server_id" in server_inventory.columns else 0
    if shards == "auto" and not n_servers:
        logger.warning("etl.shards is auto but there is no server_inventory to size it: one shard")
        shards = 1
    count = resolve_shard_count(shards, n_servers, servers_per_shard)
    names = [shard_name(i, count) for i in range(1, count + 1)]
    id_column = next((c for c, v in (column_mapping or {}).items() if v == "server_id"), "server_id")
    plan: dict[str, Any] = {"shards": count, "source": None, "rows": dict.fromkeys(names, 0), "chunks": 0}
    for chunk in _chunks_of(raw_server_metrics):
        first_row = int(chunk.attrs.get("first_row", 0))
        plan["source"] = str(chunk.attrs.get("source", "<in-memory raw_server_metrics>"))
        rows = chunk.assign(**{_ROW: np.arange(first_row, first_row + len(chunk), dtype="int64")})
        assignment = (
            _shards_of_ids(rows[id_column], count)
            if id_column in rows.columns
            else np.ones(len(rows), dtype="int64")  # validation names the missing column
        )
        parts = {name: rows[assignment == i].reset_index(drop=True) for i, name in enumerate(names, start=1)}
        for name, part in parts.items():
            plan["rows"][name] += len(part)
        plan["chunks"] += 1
        logger.info(
            "Routed rows %d..%d of %s to %d shard(s)",
            first_row,
            first_row + len(chunk) - 1,
            plan["source"],
            count,
        )
        yield parts, plan
        _release(parts)


def _inventory_part(server_inventory: pd.DataFrame, index: int, shards: int) -> pd.DataFrame:
    """The inventory rows of one shard (all of it for one shard or without a ``server_id`` column)."""
    if shards == 1 or "server_id" not in server_inventory.columns:
        return server_inventory
    part = server_inventory[_shards_of_ids(server_inventory["server_id"], shards) == index]
    part.attrs = dict(server_inventory.attrs)
    return part


def clean_metric_shards(  # noqa: PLR0913 - the parameters of every etl step, each wired on its own
    raw_metric_shards: dict[str, Any],
    etl_shard_plan: dict[str, Any],
    server_inventory: pd.DataFrame,
    column_mapping: dict[str, str] | None,
    throughput_capacity: dict[str, float] | None,
    unknown_servers: str,
    value_scale: float | dict[str, float] | None,
    valid_date_range: dict[str, Any] | None,
    min_daily_coverage: float,
    max_gap_days: int,
    imputation_method: str,
    outlier_threshold: float,
    outlier_window_weeks: int,
    outlier_min_scale: float,
    replace_outliers: bool,
    high_threshold: float,
    lags: list[int],
    rolling_windows: list[int],
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> Iterator[tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, Any]]]:
    """Validates, aggregates, cleans and builds features one shard at a time (memory bounded by a shard).

    Each shard goes through ``validate_raw_metrics``, ``aggregate_daily_metrics``, ``clean_daily_metrics`` and
    ``build_server_features`` with the parameters documented there; every rule works per server, so a server's
    rows come out as in an unsharded run. Each shard sees the inventory rows of its own servers (a server is
    in the same shard in both), so unknown servers and inventory counts add up across shards.

    Args:
        raw_metric_shards: ``{shard_name: loader}`` from ``split_raw_metrics`` (a shard without rows is
            absent).
        etl_shard_plan: The plan of ``split_raw_metrics``: shard count, source file, rows per shard.
        server_inventory: Inventory with a ``server_id`` column (or empty: every server unknown).
        column_mapping, throughput_capacity, unknown_servers, value_scale, valid_date_range: As in
            ``validate_raw_metrics`` (``params:etl.*``).
        min_daily_coverage: As in ``aggregate_daily_metrics``.
        max_gap_days, imputation_method, outlier_threshold, outlier_window_weeks, outlier_min_scale,
            replace_outliers, high_threshold: As in ``clean_daily_metrics``.
        lags, rolling_windows: As in ``build_server_features``.
        country, month_end_business_days, quarter_end_business_days: The business calendar
            (``params:calendar.*``).

    Yields:
        Per shard, in order: ``{shard_name: clean rows}`` (``clean_server_metrics``), ``{shard_name: feature
        rows}`` (``server_features``) and the stage statistics of the shards so far (``etl_shard_stats``:
        ``{shard_name: {"validation": ..., "aggregation": ..., "cleaning": ...}}``, ``None`` for an empty
        shard).
    """
    count, source = int(etl_shard_plan["shards"]), etl_shard_plan["source"]
    if not sum(etl_shard_plan["rows"].values()):
        raise RawMetricsError(f"file {source}: no data rows")
    calendar = {
        "country": country,
        "month_end_business_days": month_end_business_days,
        "quarter_end_business_days": quarter_end_business_days,
    }
    stats: dict[str, Any] = {}
    for index in range(1, count + 1):
        name = shard_name(index, count)
        if not etl_shard_plan["rows"][name]:
            stats[name] = None
            yield {name: pd.DataFrame()}, {name: pd.DataFrame()}, stats
            continue
        if name not in raw_metric_shards:
            raise RuntimeError(f"raw_metric_shards has no {name} although the split routed rows to it")
        raw = raw_metric_shards[name]()
        raw.attrs["source"] = source
        validated, v_stats = validate_raw_metrics(
            raw,
            _inventory_part(server_inventory, index, count),
            column_mapping,
            throughput_capacity,
            unknown_servers,
            value_scale,
            valid_date_range,
        )
        del raw
        daily, a_stats = aggregate_daily_metrics(validated, min_daily_coverage)
        del validated
        clean, c_stats = clean_daily_metrics(
            daily,
            max_gap_days,
            imputation_method,
            outlier_threshold,
            outlier_window_weeks,
            outlier_min_scale,
            replace_outliers,
            high_threshold=high_threshold,
            **calendar,
        )
        del daily
        features = build_server_features(clean, lags, rolling_windows, **calendar)
        stats[name] = {"validation": v_stats, "aggregation": a_stats, "cleaning": c_stats}
        logger.info("etl %s: %d raw rows -> %d clean rows", name, v_stats["rows_in"], c_stats["rows_out"])
        clean_part, features_part = {name: clean}, {name: features}
        del clean, features
        yield clean_part, features_part, stats
        _release(clean_part, features_part)


def _sum(parts: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, int]:
    return {key: sum(part[key] for part in parts) for key in keys}


def _additive(stats: dict[str, Any]) -> tuple[str, ...]:
    """The ``_ADDITIVE_COUNTS`` that one stage's statistics hold."""
    return tuple(key for key in _ADDITIVE_COUNTS if key in stats)


def _merge_stage_stats(parts: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The fleet's validation, aggregation and cleaning statistics from the shards' (counts summed, lists
    joined in server order), as ``build_data_quality_report`` takes them."""
    vs = [p["validation"] for p in parts]
    ag = [p["aggregation"] for p in parts]
    cs = [p["cleaning"] for p in parts]
    v = {
        **vs[0],
        **_sum(vs, _additive(vs[0])),
        "unknown_servers": sorted(set().union(*(x["unknown_servers"] for x in vs))),
    }
    if vs[0]["inventory_servers"] is not None:
        v["inventory_servers"] = sum(x["inventory_servers"] for x in vs)
        v["server_inventory"] = f"{v['inventory_servers']} server(s)"
    conflicts = [x["conflicting_duplicates"] for x in ag]
    a = {
        **ag[0],
        **_sum(ag, ("rows_after_validation", *_additive(ag[0]))),
        "sampling": "sub-daily" if any(x["sampling"] == "sub-daily" for x in ag) else "daily",
        "conflicting_duplicates": {
            **conflicts[0],
            **_sum(conflicts, ("timestamps", "rows_merged")),
            "examples": [e for x in conflicts for e in x["examples"]][:_N_EXAMPLES],
        },
    }
    metric_keys = list(next(iter(cs[0]["by_metric"].values())))
    by_rule: dict[str, int] = {}
    for x in cs:
        for rule, n in x["days_replaced_by_rule"].items():
            by_rule[rule] = by_rule.get(rule, 0) + n
    c = {
        **cs[0],
        **_sum(cs, _additive(cs[0])),
        "first_date": min(x["first_date"] for x in cs),
        "last_date": max(x["last_date"] for x in cs),
        "by_metric": {m: _sum([x["by_metric"][m] for x in cs], metric_keys) for m in cs[0]["by_metric"]},
        "long_gaps": sorted(
            (g for x in cs for g in x["long_gaps"]),
            key=lambda g: (g["server_id"], g["start"], g["days"], g["reason"]),
        ),
        "days_replaced_by_rule": by_rule,
        "replaced_days": sorted(
            (d for x in cs for d in x["replaced_days"]),
            key=lambda d: (d["server_id"], d["date"], d["metric"]),
        ),
        "server_last_days": pd.concat([x["server_last_days"] for x in cs], ignore_index=True),
    }
    return v, a, c


def build_fleet_quality_report(etl_shard_stats: dict[str, Any], stale_after_days: int) -> dict[str, Any]:
    """The fleet's ``data_quality_report`` from the shards' statistics, with each shard's counts when K > 1.

    The shards' statistics are merged (counts summed, lists joined) and go through
    ``build_data_quality_report``, so every identity is checked on the fleet and stale servers are judged
    against the fleet's last day. With several shards, ``shards`` lists each shard's counts; every count in it
    adds up to the fleet's (a shard without servers has zeros).

    Args:
        etl_shard_stats: ``{shard_name: stage statistics or None}`` from ``clean_metric_shards``.
        stale_after_days: Days of silence after which a server is stale (``params:stale_after_days``).

    Returns:
        The ``data_quality_report`` dictionary (JSON-serialisable).
    """
    present = [s for s in etl_shard_stats.values() if s is not None]
    report = build_data_quality_report(*_merge_stage_stats(present), stale_after_days)
    if len(etl_shard_stats) > 1:
        report["shards"] = {
            name: dict.fromkeys(_ADDITIVE_COUNTS, 0)
            if stats is None
            else _counts(stats["validation"], stats["aggregation"], stats["cleaning"])
            for name, stats in etl_shard_stats.items()
        }
    return report
