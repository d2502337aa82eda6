"""The local AutoML stand-in: a backtest-weighted ensemble of the modelling pipeline's candidate forecasts."""

import logging

import numpy as np
import pandas as pd

from capacity_forecaster.keys import group_ids, in_lexical_order, key_combinations
from capacity_forecaster.schema import QUANTILES

from .output import FORECAST_COLUMNS

logger = logging.getLogger(__name__)
KEYS = ["server_id", "metric"]


def common_folds(model_metrics: pd.DataFrame) -> pd.DataFrame:
    """Keeps the backtest folds that every model has (all rows when there is no ``fold`` column).

    Models backtested on fewer folds (e.g. an expensive model on the most recent ones only) are then compared
    on the same days as the others.
    """
    if "fold" not in model_metrics.columns or "model" not in model_metrics.columns or model_metrics.empty:
        return model_metrics
    folds = model_metrics.groupby("model")["fold"].agg(set)
    shared = set.intersection(*folds.tolist())
    return model_metrics[model_metrics["fold"].isin(shared)] if shared else model_metrics


def ensemble_weights(
    forecasts: pd.DataFrame, model_metrics: pd.DataFrame, weight_metric: str, top_k: int | None
) -> pd.DataFrame:
    """Weights each candidate by the inverse of its mean backtest score, per server and metric.

    Only the ``top_k`` best-scoring models of a series are kept (all when ``top_k`` is None or 0). A series
    with no usable score (no rows, missing column, NaN or non-positive values) gets equal weights over its
    models.

    Args:
        forecasts: Candidate forecasts with ``server_id``, ``metric`` and ``model``.
        model_metrics: Backtest metrics with ``server_id``, ``metric``, ``model`` and ``weight_metric``
            (one row per fold or already averaged; folds are averaged here).
        weight_metric: Lower-is-better score column, e.g. ``mase``.
        top_k: How many of the best models per series to combine.

    Returns:
        Frame ``server_id``, ``metric``, ``model``, ``score``, ``weight`` (weights sum to 1 per series).
    """
    candidates = key_combinations(forecasts, [*KEYS, "model"])[0]
    if weight_metric in model_metrics.columns and set(KEYS + ["model"]).issubset(model_metrics.columns):
        scores = (
            common_folds(model_metrics)
            .dropna(subset=KEYS + ["model"])
            .assign(score=lambda f: pd.to_numeric(f[weight_metric], errors="coerce"))
            .groupby(KEYS + ["model"], as_index=False)["score"]
            .mean()
        )
        scores = scores[np.isfinite(scores["score"]) & (scores["score"] > 0)]
    else:
        logger.warning(
            "canvas_local: model_metrics has no %r per server/metric/model: equal weights", weight_metric
        )
        scores = pd.DataFrame(columns=[*KEYS, "model", "score"])
    scored = candidates.merge(scores, on=KEYS + ["model"], how="left")
    scored["score"] = scored["score"].astype(float)
    has_score = scored["score"].notna().groupby([scored[k] for k in KEYS]).transform("any").astype(bool)
    scored = scored[~has_score | scored["score"].notna()].assign(has_score=has_score)
    if top_k:  # series without any score keep all their models (equal weights)
        rank = scored.groupby(KEYS)["score"].rank(method="first")
        scored = scored[~scored["has_score"] | (rank <= top_k)]
    raw = np.where(scored["has_score"], 1.0 / scored["score"].to_numpy(float), 1.0)
    scored = scored.assign(raw=raw)
    scored["weight"] = scored["raw"] / scored.groupby(KEYS)["raw"].transform("sum")
    n_equal = scored.loc[~scored["has_score"], KEYS].drop_duplicates().shape[0]
    if n_equal:
        logger.info("canvas_local: %d series have no backtest score and use equal weights", n_equal)
    scored = scored.drop(columns=["has_score", "raw"])
    return scored.sort_values(KEYS + ["model"], kind="stable").reset_index(drop=True)


def ensemble_forecasts(
    forecasts: pd.DataFrame, weights: pd.DataFrame, model: str = "canvas_local"
) -> pd.DataFrame:
    """Combines the candidates' p10/p50/p90 with ``weights`` (weighted quantile averaging).

    A weighted mean of ordered quantiles stays ordered and inside [0, 100]; the result is clipped anyway.
    Weights are looked up once per series and model and summed per day with integer group ids: the
    candidates of a 10,000-server fleet are ~15 M rows.

    Returns:
        Forecast rows in the ``forecasts`` schema with ``model`` = ``model`` and ``is_selected`` False,
        sorted by server, metric (as text) and date.
    """
    combinations, combination = key_combinations(forecasts, [*KEYS, "model"])
    table = weights[[*KEYS, "model", "weight"]].astype(dict.fromkeys([*KEYS, "model"], "str"))
    weight = combinations.merge(table, on=[*KEYS, "model"], how="left")["weight"].to_numpy(float)[combination]
    used = ~np.isnan(weight)
    rows = forecasts.loc[used, [*KEYS, "date"]].reset_index(drop=True)
    day = group_ids(rows, [*KEYS, "date"])
    _, first_rows = np.unique(day, return_index=True)
    weighted = forecasts[list(QUANTILES)].to_numpy(float)[used] * weight[used, None]
    sums = np.column_stack([np.bincount(day, weights=np.nan_to_num(column)) for column in weighted.T])
    combined = rows.iloc[first_rows].reset_index(drop=True)
    combined[list(QUANTILES)] = np.sort(np.clip(sums.reshape(-1, len(QUANTILES)), 0.0, 100.0), axis=1)
    combined["model"] = model
    combined["is_selected"] = False
    combined = combined.sort_values([*KEYS, "date"], key=in_lexical_order, kind="stable", ignore_index=True)
    return combined[FORECAST_COLUMNS]
