"""Scores of risk flags: against the generator's ground truth (``server_truth``) when there is one, and the
risk backtest (flags computed at past forecast origins compared with what then happened), which any fleet has.
"""

import logging
from typing import Any

import numpy as np
import pandas as pd

from capacity_forecaster.schema import RISK_LEVELS

from .breach import combine_breach, history_breach_probability, server_tiers
from .dependence import rho_for, usable_backtest
from .register import AT_RISK
from .scoring import breach_columns, count_recent_days, count_recent_episodes
from .tables import day_numbers, require_columns

logger = logging.getLogger(__name__)

TRUTH_COLUMNS = ("server_id", "metric", "risk_level", "days_to_80", "days_to_90")
CUTOFF_GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Probability cut-offs scanned by the risk backtest (what each would have given)."""


def flag_scores(predicted: pd.Series, actual: pd.Series) -> dict[str, Any]:
    """Precision and recall of a boolean flag (None when undefined), with the counts behind them."""
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "predicted": tp + fp,
        "actual": tp + fn,
    }


def _tier_flags(predicted: pd.Series, actual: pd.Series) -> dict[str, Any]:
    return {
        "very_high": flag_scores(predicted == "very_high", actual == "very_high"),
        "high": flag_scores(predicted == "high", actual == "high"),
        "at_risk": flag_scores(predicted.isin(AT_RISK), actual.isin(AT_RISK)),
        "underutilized": flag_scores(predicted == "underutilized", actual == "underutilized"),
        "confusion": {
            t: {p: int(((actual == t) & (predicted == p)).sum()) for p in RISK_LEVELS} for t in RISK_LEVELS
        },
    }


def _breach_errors(predicted: pd.Series, actual: pd.Series) -> dict[str, Any]:
    """Breach-day errors where both sides breach, and how often only one side does."""
    both = predicted.notna() & actual.notna()
    error = (predicted[both].astype("int64") - actual[both].astype("int64")).to_numpy()
    absolute = np.abs(error)
    return {
        "n_both": int(both.sum()),
        "median_absolute_error_days": float(np.median(absolute)) if len(error) else None,
        "mean_absolute_error_days": round(float(absolute.mean()), 2) if len(error) else None,
        "median_error_days": float(np.median(error)) if len(error) else None,
        "share_within_7_days": round(float((absolute <= 7).mean()), 4) if len(error) else None,  # noqa: PLR2004
        "missed": int((predicted.isna() & actual.notna()).sum()),
        "false_alarms": int((predicted.notna() & actual.isna()).sum()),
    }


def evaluate_against_truth(risk_register: pd.DataFrame, server_truth: pd.DataFrame) -> dict[str, Any]:
    """Scores the register's tiers and breach days against the generator's ground truth, when there is one.

    Args:
        risk_register: Output of ``build_risk_register``.
        server_truth: The ``server_truth`` table; empty when the data is not generated (no truth exists).

    Returns:
        ``truth_available`` and, when true: precision and recall of the very_high, high, at_risk (very_high or
        high) and underutilized flags at server and server-metric level, tier confusion matrices (truth ->
        predicted counts) and the breach-day errors of ``days_to_80`` and ``days_to_90``.
    """
    if server_truth.empty:
        logger.info(
            "No server_truth (only generated fleets have one): the flags are scored on the risk backtest only"
        )
        return {
            "truth_available": False,
            "note": "server_truth is missing or empty, as for any real (not generated) fleet: there is no "
            "ground truth of the future to score the risk flags against; see backtest for the risk backtest",
        }
    require_columns(server_truth, TRUTH_COLUMNS, "server_truth")
    truth = server_truth.assign(
        server_id=server_truth["server_id"].astype("str"), metric=server_truth["metric"].astype("str")
    )
    register = risk_register[
        ["server_id", "metric", "risk_level", "server_risk_level", "days_to_80", "days_to_90"]
    ]
    joined = truth[list(TRUTH_COLUMNS)].merge(
        register, on=["server_id", "metric"], how="inner", suffixes=("_true", "")
    )
    if joined.empty:
        raise ValueError(
            "server_truth and risk_register share no (server_id, metric): is the truth from another fleet?"
        )
    joined["server_risk_level_true"] = server_tiers(joined["server_id"], joined["risk_level_true"])
    servers = joined.drop_duplicates("server_id")
    evaluation = {
        "truth_available": True,
        "basis": str(risk_register["basis"].iloc[0]),
        "servers_scored": int(len(servers)),
        "series_scored": int(len(joined)),
        "truth_series_without_forecast": int(len(truth) - len(joined)),
        "register_series_without_truth": int(len(register) - len(joined)),
        "server_level": _tier_flags(servers["server_risk_level"], servers["server_risk_level_true"]),
        "series_level": _tier_flags(joined["risk_level"], joined["risk_level_true"]),
        "days_to_80": _breach_errors(joined["days_to_80"], joined["days_to_80_true"]),
        "days_to_90": _breach_errors(joined["days_to_90"], joined["days_to_90_true"]),
    }
    at_risk = evaluation["server_level"]["at_risk"]
    logger.info(
        "At-risk servers vs truth: precision %s, recall %s; median |days_to_80 error| %s, days_to_90 %s",
        at_risk["precision"],
        at_risk["recall"],
        evaluation["days_to_80"]["median_absolute_error_days"],
        evaluation["days_to_90"]["median_absolute_error_days"],
    )
    return evaluation


def _case_grids(backtest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per (server, metric, origin) case and one column per fold day h: quantiles and actuals."""
    case = backtest.groupby(["server_id", "metric", "origin"], sort=True, observed=True).ngroup().to_numpy()
    # each case's first row carries its keys: no copy of the (possibly tens of millions of rows) backtest
    first_rows = np.unique(case, return_index=True)[1]
    cases = (
        backtest[["server_id", "metric", "origin"]]
        .iloc[first_rows]
        .reset_index(drop=True)
        .astype({"server_id": "str", "metric": "str"})
    )
    cases["_origin_day"] = day_numbers(cases["origin"])
    h = backtest["h"].to_numpy(dtype=np.int64)
    if (h < 1).any():
        raise ValueError("backtest_forecasts has h < 1: h counts fold days from 1 (the day after origin)")
    width = int(h.max())
    grids = {}
    for column in ("p10", "p50", "p90", "actual"):
        grid = np.full((len(cases), width), np.nan)
        grid[case, h - 1] = backtest[column].to_numpy(dtype=float)
        grids[column] = grid
    return cases, grids


def _actual_breach_day(actual: np.ndarray, threshold: float, min_days: int) -> np.ndarray:
    """Fold day on which the ``min_days``-th actual day above ``threshold`` happened (0: no breach)."""
    count = np.cumsum(np.nan_to_num(actual, nan=-np.inf) > threshold, axis=1)
    reached = count >= min_days
    return np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, 0)


def _lead_times(days: np.ndarray) -> dict[str, Any]:
    if not len(days):
        return {"n": 0, "median_days": None, "mean_days": None, "min_days": None}
    return {
        "n": int(len(days)),
        "median_days": float(np.median(days)),
        "mean_days": round(float(days.mean()), 2),
        "min_days": int(days.min()),
    }


def _scores_with_lead(flag: np.ndarray, truth_day: np.ndarray, cases: pd.DataFrame) -> dict[str, Any]:
    """Series-level and server-level (any metric, per origin) scores, and lead times of the hits."""
    actual = truth_day > 0
    series = flag_scores(pd.Series(flag), pd.Series(actual))
    series["lead_time"] = _lead_times(truth_day[flag & actual])
    per_server = (
        pd.DataFrame(
            {
                "server_id": cases["server_id"],
                "origin": cases["origin"],
                "flag": flag,
                "actual": actual,
                "day": np.where(actual, truth_day, np.iinfo(np.int64).max),
            }
        )
        .groupby(["server_id", "origin"], sort=False)
        .agg(flag=("flag", "max"), actual=("actual", "max"), day=("day", "min"))
    )
    server = flag_scores(per_server["flag"], per_server["actual"])
    hits = per_server["flag"] & per_server["actual"]
    server["lead_time"] = _lead_times(per_server.loc[hits, "day"].to_numpy())
    return {"series": series, "servers": server}


def _cutoff_scan(
    probability: np.ndarray, recent: np.ndarray, truth_day: np.ndarray, cases: pd.DataFrame
) -> list:
    """Server-level precision / recall / F1 that each cut-off of CUTOFF_GRID would have given."""
    rows = []
    for cutoff in CUTOFF_GRID:
        row: dict[str, Any] = {"cutoff": cutoff}
        for source, flag in (
            ("forecast", probability >= cutoff),
            ("forecast_or_recent", (probability >= cutoff) | recent),
        ):
            scores = _scores_with_lead(flag, truth_day, cases)["servers"]
            precision, recall = scores["precision"], scores["recall"]
            f1 = (
                round(2 * precision * recall / (precision + recall), 4)
                if precision is not None and recall is not None and precision + recall > 0
                else None
            )
            row[source] = {"precision": precision, "recall": recall, "f1": f1, "flagged": scores["predicted"]}
        rows.append(row)
    return rows


def backtest_risk_flags(  # noqa: PLR0913, PLR0914, PLR0917 - one argument per parameter leaf
    backtest_forecasts: pd.DataFrame,
    clean_server_metrics: pd.DataFrame,
    dependence: dict[str, Any],
    thresholds: dict[str, float],
    cutoffs: dict[str, float],
    breach_min_days: int,
    recent_window_days: int,
    recent_min_days: int,
    exceedance_window_days: int,
) -> dict[str, Any]:
    """The register's flags computed at every past origin of the backtest, scored on what then happened.

    For each (server, metric, origin) the fold's forecast gives the breach probabilities over the fold's days
    and the clean history up to the origin gives the recent-days rule and the history's breach probability
    (episodes in the last ``exceedance_window_days`` days), exactly as for today's register. The
    truth is whether the actuals of the fold breached (at least ``breach_min_days`` days above). A high
    flag (at risk: very_high or high) is scored against breaches of the high threshold, a very_high flag
    against breaches of the very-high one. Lead time = days from the origin to the actual breach, for hits.

    Returns:
        ``available`` and, when true: folds (origins, fold horizon, cases), per threshold the scores of the
        configured rule (``forecast_or_recent``), the forecast probability alone and the recent-days rule
        alone
        (series and server level, with lead times), and ``cutoff_scan``: what each probability cut-off would
        have given at server level.
    """
    backtest_forecasts, note = usable_backtest(backtest_forecasts)
    if note:
        return {"available": False, "note": f"{note}: no risk backtest"}
    cases, grids = _case_grids(backtest_forecasts)
    rho = rho_for(dependence, cases["metric"])
    result: dict[str, Any] = {
        "available": True,
        "origins": sorted(pd.to_datetime(cases["origin"]).dt.strftime("%Y-%m-%d").unique().tolist()),
        "fold_horizon_days": int(grids["p50"].shape[1]),
        "cases": int(len(cases)),
        "servers": int(cases["server_id"].nunique()),
        "breach_min_days": int(breach_min_days),
        "recent_rule": f">= {recent_min_days} of the last {recent_window_days} days above",
        "history_window_days": int(exceedance_window_days),
        "cutoffs": dict(cutoffs),
        "thresholds": {},
    }
    levels = {"80": thresholds["high"], "90": thresholds["very_high"]}
    recent = {label: np.zeros(len(cases), dtype=np.int64) for label in levels}
    episodes = {label: np.zeros(len(cases), dtype=np.int64) for label in levels}
    observed = np.zeros(len(cases), dtype=np.int64)
    # every origin's windows lie after this day: one pass cuts years of history to those weeks
    window_days = max(recent_window_days, exceedance_window_days)
    first_day = int(cases["_origin_day"].min()) - window_days + 1 if len(cases) else 0
    recent_history = clean_server_metrics.loc[day_numbers(clean_server_metrics["date"]) >= first_day]
    for origin_day in np.unique(cases["_origin_day"]):
        at = np.flatnonzero(cases["_origin_day"].to_numpy() == origin_day)
        keys = cases.iloc[at].reset_index(drop=True)
        counts = count_recent_days(recent_history, keys, int(origin_day), recent_window_days, levels)
        runs, observed[at] = count_recent_episodes(
            recent_history, keys, int(origin_day), exceedance_window_days, levels, breach_min_days
        )
        for label in levels:
            recent[label][at], episodes[label][at] = counts[label], runs[label]
    fold_days = (~np.isnan(grids["p50"])).sum(axis=1)
    probability, truth_day, recent_flag = {}, {}, {}
    for label, key in (("80", "high"), ("90", "very_high")):
        model = breach_columns(grids, rho, thresholds[key], breach_min_days)
        history = history_breach_probability(episodes[label], observed, fold_days)
        probability[label] = combine_breach(model, history)[0]
        truth_day[label] = _actual_breach_day(grids["actual"], thresholds[key], breach_min_days)
        recent_flag[label] = recent[label] >= recent_min_days
    # the register's rule: at risk (80) when either threshold's flag fires; very_high (90) on its own
    flags = {
        "80": {
            "forecast": (probability["80"] >= cutoffs["high"]) | (probability["90"] >= cutoffs["very_high"]),
            "recent": recent_flag["80"],
        },
        "90": {"forecast": probability["90"] >= cutoffs["very_high"], "recent": recent_flag["90"]},
    }
    for label in ("80", "90"):
        forecast, recent_only = flags[label]["forecast"], flags[label]["recent"]
        result["thresholds"][label] = {
            "threshold": thresholds["high" if label == "80" else "very_high"],
            "true_breaches": int((truth_day[label] > 0).sum()),
            "forecast_or_recent": _scores_with_lead(forecast | recent_only, truth_day[label], cases),
            "forecast": _scores_with_lead(forecast, truth_day[label], cases),
            "recent": _scores_with_lead(recent_only, truth_day[label], cases),
            "cutoff_scan": _cutoff_scan(probability[label], recent_flag[label], truth_day[label], cases),
        }
    at_risk = result["thresholds"]["80"]["forecast_or_recent"]["servers"]
    logger.info(
        "Risk backtest, %d origins, %d-day folds: at-risk servers precision %s, recall %s, median lead %s d",
        len(result["origins"]),
        result["fold_horizon_days"],
        at_risk["precision"],
        at_risk["recall"],
        at_risk["lead_time"]["median_days"],
    )
    return result
