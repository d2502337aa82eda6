"""Prediction intervals that hold on held-out days: the ensemble's quantiles, conformal scales per week.

Every model's p10-p90 interval is rescaled by a conformal factor estimated on its backtest, separately per
metric and per week of the horizon (days 1-7, 8-14, ...): errors grow with the horizon, and one factor for all
days leaves the early days too wide and the late ones too narrow. Factors never fall from one week to the
next, and forecast days beyond the backtest horizon (short histories backtest fewer days than they forecast)
take the last backtested week's factor. Members are calibrated first, the ensemble is formed from the
calibrated members and is then calibrated itself.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd

from capacity_forecaster.keys import group_ids, key_combinations
from capacity_forecaster.models.base import finalise_quantiles
from capacity_forecaster.schema import QUANTILES

WEEK_DAYS = 7
"""Days per horizon bucket of the conformal scales."""


def horizon_weeks(days_ahead: np.ndarray) -> np.ndarray:
    """Horizon week of each forecast day (0 = days 1-7 after the origin, 1 = days 8-14, ...)."""
    return np.maximum(np.asarray(days_ahead, dtype=np.int64) - 1, 0) // WEEK_DAYS


def interval_ratio(frame: pd.DataFrame, actual: np.ndarray) -> np.ndarray:
    """How much the p10-p50 / p50-p90 half-widths must be scaled for each actual to fall inside."""
    below = actual < frame["p50"].to_numpy()
    width = np.where(below, frame["p50"] - frame["p10"], frame["p90"] - frame["p50"])
    gap = np.abs(actual - frame["p50"].to_numpy())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap == 0, 0.0, gap / np.maximum(width, 1e-9))


def scale_interval(frame: pd.DataFrame, scale: np.ndarray) -> pd.DataFrame:
    """``frame`` with its p10-p50 and p50-p90 half-widths multiplied by ``scale`` (per row), clipped."""
    out = frame.copy()
    out["p10"] = frame["p50"] - (frame["p50"] - frame["p10"]) * scale
    out["p90"] = frame["p50"] + (frame["p90"] - frame["p50"]) * scale
    return finalise_quantiles(out)


def ensemble_quantiles(frame: pd.DataFrame, members: list[str], keys: list[str]) -> pd.DataFrame:
    """The ``ensemble`` model's rows: the members' median (the mean for two) wherever all of them forecast.

    A median of quantiles is narrower than the members' intervals whenever their medians disagree or one
    member's interval is degenerate, so the ensemble's half-widths are never below the members' median
    half-widths: below p50, ``max(p50 - median p10, median(p50_i - p10_i))``, and likewise above.
    """
    rows = frame[frame["model"].isin(members)]
    if not members or rows.empty:
        return frame.iloc[0:0]
    count = len(set(members))
    group = group_ids(rows, keys)
    order = np.argsort(group, kind="stable")
    complete = order[np.bincount(group)[group[order]] == count]  # blocks of ``count`` rows, one per group
    if not len(complete):
        return frame.iloc[0:0]
    values = rows[list(QUANTILES)].to_numpy(dtype="float64")[complete].reshape(-1, count, len(QUANTILES))
    p10, p50, p90 = np.median(values, axis=1).T
    lower = np.median(values[:, :, 1] - values[:, :, 0], axis=1)
    upper = np.median(values[:, :, 2] - values[:, :, 1], axis=1)
    median = rows[keys].iloc[complete[::count]].reset_index(drop=True)
    median["p10"] = np.minimum(p10, p50 - lower)
    median["p50"] = p50
    median["p90"] = np.maximum(p90, p50 + upper)
    return finalise_quantiles(median.assign(model="ensemble"))


def weekly_scales(  # noqa: PLR0913, PLR0917 (the backtest of one model and metric, then the rule)
    ratio: np.ndarray,
    weight: np.ndarray,
    observed: np.ndarray,
    week: np.ndarray,
    fold: np.ndarray,
    other_folds: Callable[[int], list[int]],
    guard: Callable[[np.ndarray, np.ndarray, list[int]], tuple[float, float]],
) -> tuple[pd.DataFrame, np.ndarray]:
    """Conformal scales per horizon week of one model and metric, and the cross-fitted scale of each row.

    Args:
        ratio: ``interval_ratio`` of each backtest row.
        weight: Weight of each row (a day shared by overlapping folds counts once in total).
        observed: Rows whose actual was observed (only these calibrate).
        week: ``horizon_weeks`` of each row.
        fold: Fold of each row.
        other_folds: The folds whose rows calibrate a given fold (cross-fitting).
        guard: ``(ratios, weights, folds) -> (raw, guarded)`` scale of a set of rows.

    Returns:
        ``horizon_week, scale, raw_scale`` (scales non-decreasing with the week) and, per row, the scale
        from the other folds (also non-decreasing with the week within each fold).
    """
    weeks = np.unique(week)
    folds = sorted(int(f) for f in np.unique(fold))
    rows_of = [observed & (week == w) for w in weeks]
    table = pd.DataFrame(
        [
            (int(w), *guard(ratio[rows], weight[rows], folds)[::-1])
            for w, rows in zip(weeks, rows_of, strict=True)
        ],
        columns=["horizon_week", "scale", "raw_scale"],
    )
    table["scale"] = np.maximum.accumulate(table["scale"].to_numpy())
    row_scale = np.ones(len(ratio))
    for f in folds:
        others = other_folds(f)
        in_others = np.isin(fold, others)
        by_week = np.ones(len(weeks))
        for i, in_week in enumerate(rows_of):
            rows = in_week & in_others
            if rows.any():
                by_week[i] = guard(ratio[rows], weight[rows], others)[1]
        by_week = np.maximum.accumulate(by_week)
        mine = fold == f
        row_scale[mine] = by_week[np.searchsorted(weeks, week[mine])]
    return table, row_scale


def apply_weekly_scales(frame: pd.DataFrame, scales: pd.DataFrame, days_ahead: np.ndarray) -> pd.DataFrame:
    """Rescales each forecast row by its model's, metric's and horizon week's scale (1 where there is none).

    Days beyond the last week in ``scales`` take that week's scale. ``scales`` without ``horizon_week``
    holds one scale per model and metric for every day. Scales are looked up once per model and metric
    (a table of weeks), not joined row by row: forecasts of a large fleet are tens of millions of rows.
    """
    if frame.empty:
        return frame
    if "horizon_week" not in scales.columns:
        scales = scales.assign(horizon_week=0)
    table = scales[["model", "metric", "horizon_week", "scale"]].dropna(subset=["scale"])
    table = table.astype({"model": str, "metric": str, "horizon_week": np.int64})
    combinations, pair = key_combinations(frame, ["model", "metric"])
    pairs = pd.MultiIndex.from_frame(combinations)
    last = table.groupby(["model", "metric"])["horizon_week"].max().reindex(pairs).fillna(0).astype(np.int64)
    weeks = int(last.max()) + 1
    grid = pd.MultiIndex.from_arrays(
        [np.repeat(pairs.get_level_values(0), weeks), np.repeat(pairs.get_level_values(1), weeks),
         np.tile(np.arange(weeks), len(pairs))]
    )  # fmt: skip
    by_week = table.set_index(["model", "metric", "horizon_week"])["scale"].reindex(grid).fillna(1.0)
    week = np.minimum(horizon_weeks(days_ahead), last.to_numpy()[pair])
    scale = by_week.to_numpy().reshape(len(pairs), weeks)[pair, week]
    return scale_interval(frame, scale)
