"""Backtest rules that hold on short, ragged real histories: the fold plan, interval scaling and selection.

Folds are defined relative to each series' own last day: fold ``k`` of a series ends its history
``origin_offsets_days[k]`` days before that series' last day and forecasts the next ``horizon`` days. Series
that end on the analysis date share the same origin dates; a series that stopped earlier is backtested on its
own last weeks, and a series too short for a fold (fewer than ``min_train_days`` days before its origin) sits
that fold out.
"""

import zlib

import numpy as np
import pandas as pd


def plan_folds(  # noqa: PLR0913, PLR0917 (the plan's settings, one argument each)
    history_days: int,
    horizon: int,
    n_origins: int,
    holdout_share: float,
    min_train_days: int,
    spacing_days: int,
    min_origins: int,
) -> dict:
    """Chooses the origins and backtest horizon a history of ``history_days`` can support.

    The requested plan is ``n_origins`` origins spread over the last ``holdout_share`` of history, each
    forecasting ``horizon`` days. When the history is too short, the backtest horizon shrinks first (so that
    ``min_origins`` origins ``spacing_days`` apart still fit, but never below ``spacing_days``), then the
    number of origins; origins are never closer than ``spacing_days`` and every origin keeps
    ``min_train_days`` of history before it.

    Returns:
        ``requested_origins, requested_horizon, origins, horizon, origin_offsets_days`` (oldest first: days
        before a series' last day), ``independent_folds`` (folds whose forecast windows do not overlap),
        ``reference_history_days, min_train_days, spacing_days`` and ``reason`` (``None`` when nothing was
        adapted).
    """
    if n_origins < 1 or horizon < 1 or spacing_days < 1:
        raise ValueError(
            f"need n_origins, horizon and spacing_days >= 1, got {n_origins}, {horizon}, {spacing_days}"
        )
    room = history_days - min_train_days  # largest origin offset that keeps min_train_days before it
    plan = {
        "requested_origins": n_origins,
        "requested_horizon": horizon,
        "reference_history_days": int(history_days),
        "min_train_days": min_train_days,
        "spacing_days": spacing_days,
    }
    if room < 1:
        reason = (
            f"history of {history_days} days leaves no origin with min_train_days={min_train_days} before "
            "it: no backtest, models are chosen without one"
        )
        return {**plan, "origins": 0, "horizon": 0, "origin_offsets_days": [], "independent_folds": 0,
                "reason": reason}  # fmt: skip
    wanted = min(n_origins, max(min_origins, 1))
    fold_horizon = min(horizon, max(room - (wanted - 1) * spacing_days, min(spacing_days, room)))
    holdout = max(int(round(history_days * holdout_share)), fold_horizon)
    earliest = min(max(holdout, fold_horizon + (n_origins - 1) * spacing_days), room)
    count = min(n_origins, 1 + (earliest - fold_horizon) // spacing_days)
    offsets = sorted({int(o) for o in np.linspace(earliest, fold_horizon, count).round()}, reverse=True)
    reasons = []
    if fold_horizon < horizon:
        reasons.append(f"backtest horizon {fold_horizon} days instead of {horizon}")
    if len(offsets) < n_origins:
        reasons.append(f"{len(offsets)} origins instead of {n_origins}")
    reason = None
    if reasons:
        reason = (
            f"{' and '.join(reasons)}: {history_days} days of history (median series) minus "
            f"min_train_days={min_train_days} leave {room} days for origins >= {spacing_days} days apart"
        )
    return {
        **plan,
        "origins": len(offsets),
        "horizon": int(fold_horizon),
        "origin_offsets_days": offsets,
        "independent_folds": independent_folds(offsets, fold_horizon),
        "reason": reason,
    }


def independent_folds(offsets: list[int], horizon: int) -> int:
    """Counts folds whose forecast windows do not overlap (greedily from the oldest)."""
    count, previous = 0, None
    for offset in sorted(offsets, reverse=True):
        if previous is None or previous - offset >= horizon:
            count, previous = count + 1, offset
    return count


def recent_folds(offsets: list[int], count: int, horizon: int) -> list[int]:
    """The ``count`` most recent folds, preferring folds whose windows do not overlap (fold indices, sorted).

    Expensive models are backtested on a few folds only; two overlapping folds are barely two pieces of
    evidence, so from the most recent fold backwards each next fold is the latest one that does not overlap
    the folds already taken, and overlapping ones fill up only when no other is left.
    """
    order = sorted(range(len(offsets)), key=lambda fold: offsets[fold])  # most recent first
    taken: list[int] = []
    for fold in order:
        if len(taken) < count and all(abs(offsets[fold] - offsets[t]) >= horizon for t in taken):
            taken.append(fold)
    taken += [fold for fold in order if fold not in taken][: max(count - len(taken), 0)]
    return sorted(taken)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` where each value counts ``weights`` times (NaN when empty)."""
    if len(values) == 0 or weights.sum() <= 0:
        return float("nan")
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def guarded_scale(raw: float, evidence_folds: int, prior_folds: float, max_scale: float) -> float:
    """Shrinks a conformal interval scale towards 1 when few independent folds back it, and caps it.

    ``1 + (raw - 1) * n / (n + prior_folds)`` with ``n = evidence_folds``, clipped to
    ``[1 / max_scale, max_scale]``: one window never widens an interval 3x-26x on its own.
    """
    if not np.isfinite(raw) or evidence_folds < 1:
        return 1.0
    shrunk = 1 + (raw - 1) * evidence_folds / (evidence_folds + prior_folds)
    return float(np.clip(shrunk, 1 / max_scale, max_scale))


MARGIN_REFERENCE_DAYS = 28
"""Independent backtest days at or below which the full ensemble margin applies."""


def evidence_margin(ensemble_margin: float, independent_folds: int, horizon: int) -> float:
    """The ensemble margin for the evidence at hand: full up to :data:`MARGIN_REFERENCE_DAYS` independent
    backtest days, shrinking with the square root of more (like a standard error): 3 independent 90-day folds
    need a 1.6 % edge where 3 two-week folds need 4.1 %."""
    days = independent_folds * horizon
    if days <= MARGIN_REFERENCE_DAYS:
        return ensemble_margin
    return ensemble_margin * float(np.sqrt(MARGIN_REFERENCE_DAYS / days))


def choose_models(
    means: pd.DataFrame,
    score: str,
    pooling: float,
    evidence_folds: int,
    ensemble_margin: float,
) -> pd.DataFrame:
    """Per series, the model of lowest expected score, shrunk towards its group, preferring the ensemble.

    The expected score blends the series' own mean with the model's median over its group (same archetype
    and metric; the median, because a scaled score such as MASE explodes on a few near-constant series).
    The series' own weight is ``(1 - pooling) * n / (n + 1)`` for ``n = evidence_folds`` independent
    folds, so two overlapping folds hardly move it. A model other than ``ensemble`` must beat the ensemble's
    expected score by ``ensemble_margin`` (relative) to be chosen.

    Args:
        means: ``server_id, metric, archetype, model, <score>`` (one row per series and model).
        score: The score column (lower is better).
        pooling: Share of the expected score taken from the group, in [0, 1].
        evidence_folds: Independent folds behind the means.
        ensemble_margin: Relative edge a model needs over the ensemble.

    Returns:
        ``server_id, metric, archetype, model, <score>, expected_<score>``, one row per series.
    """
    expected = f"expected_{score}"
    own_weight = (1 - pooling) * evidence_folds / (evidence_folds + 1)
    pooled = means.groupby(["archetype", "metric", "model"])[score].transform("median")
    table = means.assign(**{expected: own_weight * means[score] + (1 - own_weight) * pooled})
    handicap = np.where(table["model"] == "ensemble", 1.0, 1.0 / (1 - ensemble_margin))
    table = table.assign(_rank=table[expected] * handicap)
    table = table.sort_values(["server_id", "metric", "_rank", "model"], kind="stable")
    return table.drop_duplicates(["server_id", "metric"]).drop(columns="_rank").reset_index(drop=True)


def sample_servers(server_ids: pd.Index, max_servers: int | None) -> list[str] | None:
    """A stable sample of at most ``max_servers`` server ids (sorted), or None when the fleet fits.

    Servers are ranked by the CRC-32 of ``"backtest:" + id`` (independent of the shard hash, the same in
    every run and on every machine), so the sample spreads over archetypes and shards like the fleet does.
    """
    if max_servers is not None and max_servers < 1:
        raise ValueError(f"backtest max_servers must be >= 1 or null, got {max_servers}")
    if max_servers is None or len(server_ids) <= max_servers:
        return None
    ids = pd.Index(server_ids).astype(str)
    rank = np.fromiter((zlib.crc32(f"backtest:{i}".encode()) for i in ids), dtype="int64", count=len(ids))
    return sorted(ids[np.lexsort((ids.to_numpy(), rank))[:max_servers]])
