"""Nodes of the modelling pipeline: backtest, fit and predict each forecaster, then score, select and publish.

Every model sees long frames ``unique_id, ds, y``; a ``unique_id`` is ``"<server_id>|<metric>"`` and global
models are fitted once per metric across all servers.
"""

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, cpu_count, delayed
from sklearn.base import clone

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.keys import common_categories, group_ids, key_combinations
from capacity_forecaster.models import FORECASTERS, BaseForecaster
from capacity_forecaster.models.backtest import (
    choose_models,
    evidence_margin,
    guarded_scale,
    independent_folds,
    plan_folds,
    recent_folds,
    sample_servers,
    weighted_quantile,
)
from capacity_forecaster.models.base import QUANTILE_LEVELS
from capacity_forecaster.models.intervals import (
    apply_weekly_scales,
    ensemble_quantiles,
    horizon_weeks,
    interval_ratio,
    scale_interval,
    weekly_scales,
)
from capacity_forecaster.progress import track
from capacity_forecaster.schema import METRICS, QUANTILES
from capacity_forecaster.sharding import (
    load_partition,
    map_shards,
    partitions_of_run,
    partitions_to_run,
    resolve_shard_count,
    shard_name,
    split_by_shard,
    worker_count,
)

logger = logging.getLogger(__name__)

_SEPARATOR = "|"
_FORECAST_COLUMNS = ["server_id", "metric", "date", "model", *QUANTILES]
_BACKTEST_COLUMNS = ["unique_id", "metric", "fold", "origin", "ds", "model", *QUANTILES]
_SCORES = (
    "mae",
    "rmse",
    "mape",
    "smape",
    "mase",
    "wape",
    "pinball_p10",
    "pinball_p50",
    "pinball_p90",
    "coverage",
)


def prepare_model_input(clean_server_metrics: pd.DataFrame, server_inventory: pd.DataFrame) -> pd.DataFrame:
    """Turns the clean long table into the models' long frame, with gaps filled for fitting only.

    Each series runs from its first to its own last clean day (observed, not imputed): a server onboarded
    late starts late and a server that stopped reporting ends early, so its forecast starts the day after
    its own last clean day (``capacity_forecaster.freshness`` decides elsewhere whether it is stale).

    The text columns are categorical (categories sorted): at 10,000 servers the frame has ~60 M rows, and
    every backtest fold filters and groups it; integer codes keep that linear and the frame ~2 GB.

    Args:
        clean_server_metrics: ``server_id, metric, date, value[, is_imputed]`` (daily calendar; NaN in gaps).
        server_inventory: ``server_id, archetype`` (+ other columns, unused).

    Returns:
        ``unique_id, server_id, metric, archetype, ds, y, is_observed, history_days`` sorted by server, metric
        and day: ``y`` is ``value`` with NaN gaps linearly interpolated, ``is_observed`` is False where
        ``value`` was NaN (never scored) and ``history_days`` counts the series' observed days.
    """
    missing = {"server_id", "metric", "date", "value"} - set(clean_server_metrics.columns)
    if missing:
        raise ValueError(f"clean_server_metrics is missing columns {sorted(missing)}")
    server_codes, servers = _sorted_codes(clean_server_metrics["server_id"])
    metric_codes, metrics = _sorted_codes(clean_server_metrics["metric"])
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"clean_server_metrics has unknown metrics {sorted(unknown)}; expected {METRICS}")
    series = (server_codes * len(metrics) + metric_codes).astype(np.int32)  # row arrays stay 4-byte
    del server_codes, metric_codes
    day = pd.to_datetime(clean_server_metrics["date"]).to_numpy().astype("datetime64[D]").astype(np.int32)
    order = np.lexsort((day, series))
    series, day = series[order], day[order]
    value = clean_server_metrics["value"].to_numpy(dtype="float64")[order]
    clean = ~np.isnan(value)
    if "is_imputed" in clean_server_metrics:
        clean &= ~clean_server_metrics["is_imputed"].to_numpy(dtype=bool)[order]
    del order
    inside = _within_clean_days(series, day, clean, len(servers) * len(metrics))
    empty = np.setdiff1d(np.unique(series), np.unique(series[inside]))
    if len(empty):
        names = [f"{servers[s // len(metrics)]}{_SEPARATOR}{metrics[s % len(metrics)]}" for s in empty[:5]]
        logger.warning("Dropping %d series without any clean value: %s", len(empty), names)
    series, day, value, clean = series[inside], day[inside], value[inside], clean[inside]
    del inside
    starts = np.flatnonzero(np.r_[True, series[1:] != series[:-1]]) if len(series) else np.array([], int)
    present = series[starts]
    series_codes = np.repeat(np.arange(len(present), dtype=np.int32), np.diff(np.r_[starts, len(series)]))
    del series
    series_servers, series_metrics = present // len(metrics), present % len(metrics)
    ids = pd.Index(servers[series_servers] + _SEPARATOR + metrics[series_metrics])
    archetypes = server_inventory.assign(server_id=server_inventory["server_id"].astype(str)).set_index(
        "server_id"
    )["archetype"].astype(str)
    server_archetype = pd.Index(servers).map(archetypes).fillna("unknown").astype(str)
    archetype_codes, archetype_names = pd.factorize(server_archetype, sort=True)
    frame = pd.DataFrame(
        {
            "unique_id": _categorical(series_codes, ids),
            "server_id": pd.Categorical.from_codes(series_servers[series_codes], categories=servers),
            "metric": pd.Categorical.from_codes(series_metrics[series_codes], categories=metrics),
            "archetype": pd.Categorical.from_codes(
                archetype_codes[series_servers][series_codes], categories=archetype_names
            ),
            "ds": day.astype("datetime64[D]").astype("datetime64[ns]"),
            "y": _interpolate_inside(value),
            "is_observed": ~np.isnan(value),
            "history_days": np.bincount(series_codes, weights=clean).astype(np.int32)[series_codes],
        }
    )
    logger.info("Model input: %d series, %d rows", len(ids), len(frame))
    return frame


def _sorted_codes(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of a text or categorical column and its distinct values as sorted text (no text is
    made per row: a categorical's own codes are remapped)."""
    codes, uniques = pd.factorize(column)
    return _sorted_names(codes, pd.Index(uniques).astype(str))


def _sorted_names(codes: np.ndarray, names: pd.Index) -> tuple[np.ndarray, pd.Index]:
    """``codes`` into ``names`` re-pointed at ``names`` sorted as text, and the sorted names."""
    rank = np.empty(len(names), dtype=np.int32)
    rank[names.argsort(kind="stable")] = np.arange(len(names), dtype=np.int32)
    return rank[codes], names.sort_values()


def _within_clean_days(series: np.ndarray, day: np.ndarray, clean: np.ndarray, n_series: int) -> np.ndarray:
    """Rows from their series' first to its last clean day (rows sorted by series code, then day)."""
    if not clean.any():
        return np.zeros(len(series), dtype=bool)
    clean_series, clean_day = series[clean], day[clean]
    boundary = np.r_[True, clean_series[1:] != clean_series[:-1], True]
    first = np.full(n_series, np.iinfo(np.int32).max, dtype=np.int32)
    last = np.full(n_series, np.iinfo(np.int32).min, dtype=np.int32)
    first[clean_series[boundary[:-1]]] = clean_day[boundary[:-1]]
    last[clean_series[boundary[1:]]] = clean_day[boundary[1:]]
    return (day >= first[series]) & (day <= last[series])


def _categorical(codes: np.ndarray, names: pd.Index) -> pd.Categorical:
    """``names[codes]`` as a categorical whose categories are sorted (groupbys then sort as on the text)."""
    sorted_codes, categories = _sorted_names(codes, names)
    return pd.Categorical.from_codes(sorted_codes, categories=categories)


def _interpolate_inside(value: np.ndarray) -> np.ndarray:
    """Fills NaN linearly between the nearest observed values (rows are series after series, each series
    starting and ending on an observed value, so a fill never reaches across two series)."""
    observed = ~np.isnan(value)
    if observed.all():
        return value
    position = np.arange(len(value))
    before = np.maximum.accumulate(np.where(observed, position, -1))
    after = np.minimum.accumulate(np.where(observed, position, len(value))[::-1])[::-1]
    gap = ~observed
    share = (position[gap] - before[gap]) / (after[gap] - before[gap])
    filled = value.copy()
    filled[gap] = value[before[gap]] + share * (value[after[gap]] - value[before[gap]])
    return filled


def _categorical_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its categorical columns as plain strings (to join with the models' outputs)."""
    categorical = _categorical_columns(frame)
    return frame.astype(dict.fromkeys(categorical, "str")) if categorical else frame


def _rows_per_key(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """How many rows of ``frame`` share each row's ``keys``."""
    ids = group_ids(frame, keys)
    return np.bincount(ids)[ids]


def _own_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the categories its categorical columns do not use removed."""
    return frame.assign(**{c: frame[c].cat.remove_unused_categories() for c in _categorical_columns(frame)})


def _at_series(frame: pd.DataFrame, values: pd.Series) -> np.ndarray:
    """``values`` (indexed by ``server_id, metric``) at each row of ``frame`` (NaN/NaT where absent); one
    lookup per series, not per row."""
    series, ids = key_combinations(frame, ["server_id", "metric"])
    return values.reindex(pd.MultiIndex.from_frame(series)).to_numpy()[ids]


def _series_table(model_input: pd.DataFrame) -> pd.DataFrame:
    """One row per series (sorted by ``unique_id``): ``unique_id, server_id, metric, archetype,
    history_days`` (text columns as plain strings)."""
    columns = ["unique_id", "server_id", "metric", "archetype", "history_days"]
    first_rows = ~model_input["unique_id"].duplicated()  # a series' keys are the same on all its rows
    series = model_input.loc[first_rows, columns].sort_values("unique_id", ignore_index=True)
    return _as_text(series).astype({"history_days": "int64"})


def plan_backtest(  # noqa: PLR0913, PLR0917 (one argument per node input)
    model_input: pd.DataFrame,
    horizon: int,
    n_origins: int,
    holdout_share: float,
    min_train_days: int,
    spacing_days: int,
    min_origins: int,
    max_servers: int | None = None,
) -> dict[str, Any]:
    """Chooses the backtest folds the fleet's histories can support (``models.backtest.plan_folds``) and,
    on a fleet larger than ``max_servers``, the servers that are backtested.

    The plan is sized on the median series length and applied relative to each series' own last day.
    Backtests only choose models and calibrate intervals per archetype and metric, so a sample of servers
    serves a large fleet as well as all of them, at a fixed cost; the other servers get their group's
    choice (``select_models``, basis ``group``) and the sample's interval scales.

    Args:
        model_input: Output of ``prepare_model_input``.
        horizon: Requested days ahead (``params:horizon``); the final forecasts always cover it.
        n_origins: Requested origins (``params:modelling.backtest.n_origins``).
        holdout_share: Share of history holding the origins (``params:modelling.backtest.holdout_share``).
        min_train_days: History every fold keeps before its origin (``...backtest.min_train_days``).
        spacing_days: Least days between two origins (``...backtest.spacing_days``).
        min_origins: Origins kept by shortening the backtest horizon first (``...backtest.min_origins``).
        max_servers: Most servers backtested (``...backtest.max_servers``; None: every server).

    Returns:
        The plan (see ``plan_folds``) plus ``analysis_date``, the ``origin_dates`` of series ending on it,
        ``servers`` (the backtested server ids, sorted; None: every server) and ``fleet_servers``.
    """
    lengths = model_input.groupby("unique_id")["ds"].agg(["min", "max"])
    days = int(((lengths["max"] - lengths["min"]).dt.days + 1).median())
    plan = plan_folds(days, horizon, n_origins, holdout_share, min_train_days, spacing_days, min_origins)
    last = model_input["ds"].max()
    plan["analysis_date"] = str(last.date())
    plan["origin_dates"] = [str((last - pd.Timedelta(days=o)).date()) for o in plan["origin_offsets_days"]]
    servers = pd.Index(model_input["server_id"].unique()).astype(str)
    plan["fleet_servers"] = len(servers)
    plan["servers"] = sample_servers(servers, max_servers)
    if plan["servers"] is not None:
        logger.info("Backtesting %d of %d servers (a stable sample)", len(plan["servers"]), len(servers))
    if plan["reason"]:
        logger.warning("Backtest adapted to the history: %s", plan["reason"])
    logger.info(
        "Backtest plan: %d origins (%s), horizon %d days, %d independent folds",
        plan["origins"], ", ".join(plan["origin_dates"]), plan["horizon"], plan["independent_folds"],
    )  # fmt: skip
    return plan


def split_model_input(
    model_input: pd.DataFrame, shards: int | str, servers_per_shard: int
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Splits the model input into shards by a stable hash of ``server_id`` (``sharding.split_by_shard``).

    Args:
        model_input: Output of ``prepare_model_input``.
        shards: ``params:modelling.shards``: the shard count K, or ``"auto"`` for one shard per
            ``servers_per_shard`` servers.
        servers_per_shard: ``params:modelling.servers_per_shard`` (used by ``"auto"``).

    Returns:
        ``{shard name: the shard's rows}`` (every shard, empty ones too; K = 1: the frame itself, no copy)
        and the shard plan ``{"shards": K, "servers": {shard name: servers}}``.
    """
    servers = model_input["server_id"].nunique()
    count = resolve_shard_count(shards, servers, servers_per_shard)
    if count == 1:
        parts = {shard_name(1, 1): model_input}
    else:  # a shard's categoricals keep only its own series (a SageMaker job loads only its partition)
        parts = {name: _own_categories(part) for name, part in split_by_shard(model_input, count).items()}
    plan = {
        "shards": count,
        "servers": {name: int(part["server_id"].nunique()) for name, part in parts.items()},
    }
    logger.info("Modelling %d servers in %d shard(s): %s", servers, count, plan["servers"])
    return parts, plan


def _make_forecaster(kind: str, hyperparameters: dict[str, Any], **shared: Any) -> BaseForecaster:
    """Builds the ``kind`` forecaster; ``shared`` settings (horizon, calendar) apply where it takes them."""
    if kind not in FORECASTERS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(FORECASTERS)}")
    model = FORECASTERS[kind](**(hyperparameters or {}))
    return model.set_params(**{k: v for k, v in shared.items() if k in model.get_params()})


def _fit_per_metric(model: BaseForecaster, frame: pd.DataFrame, metric_jobs: int) -> dict[str, Any]:
    """Fits a fresh clone per metric (global models are per metric), ``metric_jobs`` metrics at a time.

    Each metric's rows are cut out only when its fit starts, so one at a time is held besides ``frame``.
    """
    metric = frame["metric"]
    metrics = sorted(str(m) for m in metric.unique())
    rows = frame[["unique_id", "ds", "y"]]
    fitted = Parallel(n_jobs=metric_jobs)(delayed(clone(model).fit)(rows[metric == m]) for m in metrics)
    return dict(zip(metrics, fitted, strict=True))


def _long_enough(frame: pd.DataFrame, min_days: int) -> pd.DataFrame:
    """Rows of the series with at least ``min_days`` days in ``frame``."""
    return frame[frame.groupby("unique_id")["ds"].transform("size") >= min_days]


def backtest_forecaster(
    model_input: pd.DataFrame,
    backtest_plan: dict[str, Any],
    *,
    enabled: bool,
    kind: str,
    hyperparameters: dict[str, Any],
    backtest_folds: int | None,
    metric_jobs: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rolling-origin backtest: per fold, fit on each series' history up to its origin and forecast ahead.

    A fold's origin is ``origin_offsets_days[fold]`` days before each series' own last day; series with
    fewer than ``min_train_days`` days before it sit the fold out.

    Args:
        model_input: Output of ``prepare_model_input``.
        backtest_plan: Output of ``plan_backtest`` (origins and the backtest horizon).
        enabled: ``params:modelling.<model>.enabled``; a disabled model returns an empty backtest.
        kind: Forecaster kind (a key of ``capacity_forecaster.models.FORECASTERS``).
        hyperparameters: Keyword arguments of the forecaster class (the dict is the value).
        backtest_folds: Backtest only this many recent folds, preferring folds that do not overlap
            (``models.backtest.recent_folds``; ``None`` = all of the plan).
        metric_jobs: Metrics fitted at once, one process each (``params:modelling.<model>.metric_jobs``);
            more than 1 only pays for models that use one core.
        country: ``params:calendar.country``.
        month_end_business_days: ``params:calendar.month_end_business_days``.
        quarter_end_business_days: ``params:calendar.quarter_end_business_days``.

    Returns:
        The backtest forecasts (``unique_id, metric, fold, origin, ds, model, p10..p90``) and timing stats.
    """
    horizon = backtest_plan["horizon"]
    model = _make_forecaster(
        kind,
        hyperparameters,
        horizon=max(horizon, 1),
        country=country,
        month_end_business_days=month_end_business_days,
        quarter_end_business_days=quarter_end_business_days,
    )
    alias = model.alias
    stats = {"model": alias, "folds": 0, "series": 0, "fit_seconds": 0.0, "series_per_second": float("nan")}
    if not enabled:
        logger.info("Model %s is disabled", alias)
        return pd.DataFrame(columns=_BACKTEST_COLUMNS), stats
    if backtest_plan.get("servers") is not None:
        model_input = model_input[model_input["server_id"].isin(backtest_plan["servers"])]
    offsets = backtest_plan["origin_offsets_days"]
    folds = list(enumerate(offsets))
    if backtest_folds is not None:
        folds = [(f, offsets[f]) for f in recent_folds(offsets, backtest_folds, backtest_plan["horizon"])]
    series_end = model_input.groupby("unique_id")["ds"].transform("max")
    parts, fitted_series, started = [], 0, time.perf_counter()
    for fold, offset in track(folds, f"Backtest {alias}", unit="folds"):
        history = model_input[model_input["ds"] <= series_end - pd.Timedelta(days=offset)]
        history = _long_enough(history, backtest_plan["min_train_days"])
        if history.empty:
            continue
        fitted = _fit_per_metric(model, history, metric_jobs)
        forecast = pd.concat(
            [forecaster.predict(horizon).assign(metric=metric) for metric, forecaster in fitted.items()],
            ignore_index=True,
        )
        origins = history.groupby("unique_id")["ds"].max()
        fitted_series += forecast["unique_id"].nunique()  # a budgeted model forecasts fewer than it was given
        parts.append(forecast.assign(fold=fold, origin=forecast["unique_id"].map(origins), model=alias))
    seconds = time.perf_counter() - started
    stats.update(
        folds=len(parts), series=fitted_series, fit_seconds=round(seconds, 3),
        series_per_second=round(fitted_series / seconds, 3) if seconds > 0 else float("nan"),
    )  # fmt: skip
    logger.info(
        "Backtested %s: %d folds, %d series fits in %.1f s", alias, len(parts), fitted_series, seconds
    )
    if not parts:
        return pd.DataFrame(columns=_BACKTEST_COLUMNS), stats
    return pd.concat(parts, ignore_index=True)[_BACKTEST_COLUMNS], stats


def fit_forecaster(
    model_input: pd.DataFrame,
    *,
    enabled: bool,
    kind: str,
    hyperparameters: dict[str, Any],
    horizon: int,
    metric_jobs: int,
    min_history_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> tuple[dict[str, BaseForecaster], dict[str, Any]]:
    """Fits the forecaster on all history, one fitted clone per metric (``metric_jobs`` at a time).

    Series with fewer than ``min_history_days`` observed days are left to the fallback model.

    Returns:
        ``{metric: fitted forecaster}`` (empty when the model is disabled) and a summary: ``model, series``,
        ``seasonal_terms_off`` (``{term: series}`` switched off because the history cannot identify them).
    """
    model = _make_forecaster(
        kind,
        hyperparameters,
        horizon=horizon,
        country=country,
        month_end_business_days=month_end_business_days,
        quarter_end_business_days=quarter_end_business_days,
    )
    summary: dict[str, Any] = {"model": model.alias, "series": 0, "seasonal_terms_off": {}}
    long_enough = model_input["history_days"] >= min_history_days
    frame = model_input if long_enough.all() else model_input[long_enough]
    if not enabled or frame.empty:
        return {}, summary
    fitted = _fit_per_metric(model, frame, metric_jobs)
    terms = [f.seasonal_terms_off_ for f in fitted.values() if hasattr(f, "seasonal_terms_off_")]
    off = pd.concat(terms).sum().astype(int).to_dict() if terms else {}
    summary.update(series=int(frame["unique_id"].nunique()), seasonal_terms_off=off)
    fitted_on = [f.fitted_on_ for f in fitted.values() if hasattr(f, "fitted_on_")]
    if fitted_on:  # what a budgeted model was fitted on, summed over metrics (series, rows, ...)
        summary["fitted_on"] = pd.DataFrame(fitted_on).sum().astype(int).to_dict()
        logger.info("%s fitted on %s", model.alias, summary["fitted_on"])
    if any(off.values()):
        logger.info("%s switched off seasonal terms (series per term): %s", model.alias, off)
    return fitted, summary


def predict_forecaster(forecaster: dict[str, BaseForecaster], horizon: int) -> pd.DataFrame:
    """Forecasts ``horizon`` days after the last history day with every fitted per-metric model.

    Returns:
        ``server_id, metric, date, model, p10, p50, p90`` (keys as categoricals; empty when the model is
        disabled).
    """
    parts = [_forecast_rows(model.predict(horizon), model.alias) for model in forecaster.values()]
    if not parts:
        return pd.DataFrame(columns=_FORECAST_COLUMNS)
    return _concat_forecasts(parts)


def _forecast_rows(forecast: pd.DataFrame, model: str) -> pd.DataFrame:
    """A forecaster's ``unique_id, ds, p10, p50, p90`` in the forecasts schema, keys as categoricals whose
    categories are sorted as text: each ``unique_id`` is split into server and metric once, not per row."""
    codes, ids = pd.factorize(forecast["unique_id"])
    names = pd.Series(pd.Index(ids).astype(str)).str.rsplit(_SEPARATOR, n=1, expand=True)
    keys = {
        "server_id": _categorical(*pd.factorize(names[0]))[codes] if len(ids) else pd.Categorical([]),
        "metric": _categorical(*pd.factorize(names[1]))[codes] if len(ids) else pd.Categorical([]),
        "date": forecast["ds"].to_numpy(),
        "model": pd.Categorical.from_codes(np.zeros(len(forecast), dtype=np.int8), categories=[model]),
    }
    return pd.DataFrame({**keys, **{q: forecast[q].to_numpy() for q in QUANTILES}})


def _concat_forecasts(frames: list[pd.DataFrame], extra: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Forecast frames stacked with ``server_id``, ``metric`` and ``model`` as categoricals of one dtype each
    (``keys.common_categories``): groupbys, joins and sorts of the stack then work on integer codes."""
    return pd.concat(common_categories(frames, ["server_id", "metric", "model"], extra), ignore_index=True)


def _cores_per_shard(enabled: bool, metric_jobs: int, hyperparameters: dict[str, Any] | None) -> int:
    """Cores one shard's work keeps busy: ``metric_jobs`` metrics at once, each with the model's own
    ``n_jobs`` / ``n_threads`` (-1: every core). A disabled model's shards are empty: all cores, so that
    they run in-process without starting workers."""
    settings = hyperparameters or {}
    threads = [settings.get("n_jobs") or 1, settings.get("n_threads") or 1]
    if not enabled or min(threads) < 0:
        return cpu_count()
    return max(1, metric_jobs) * max(threads)


def _shard_budget(hyperparameters: dict[str, Any] | None, shards: int) -> dict[str, Any]:
    """A model's hyperparameters for one of ``shards`` shards: ``max_series`` (per metric, fleet-wide)
    split evenly, so a budgeted model costs the same however the fleet is sharded."""
    settings = dict(hyperparameters or {})
    if settings.get("max_series") is not None:
        settings["max_series"] = math.ceil(settings["max_series"] / shards)
    return settings


def _fleet_gate(enabled: bool, max_fleet_servers: int | None, shard_plan: dict[str, Any]) -> str | None:
    """Why an enabled model is skipped on this fleet (more servers than ``max_fleet_servers``), or None."""
    fleet = sum(shard_plan["servers"].values())
    if enabled and max_fleet_servers is not None and fleet > max_fleet_servers:
        return f"fleet of {fleet} servers > max_fleet_servers {max_fleet_servers}"
    return None


def _run_shards(  # noqa: PLR0913, PLR0917 (the shards, how to run them, then the per-shard function's args)
    func: Callable[..., Any],
    partitions: Mapping[str, Any],
    shard_plan: dict[str, Any],
    shard: int | None,
    shard_workers: int | None,
    cores_per_shard: int,
    **kwargs: Any,
) -> dict[str, Any]:
    """``func`` on every partition this run works on (``partitions_to_run``), keyed by shard name."""
    chosen = partitions_to_run(partitions, shard_plan["shards"], shard)
    workers = worker_count(len(chosen), cores_per_shard, shard_workers)
    if len(chosen) > 1:
        logger.info("%s on %d shards, %d at a time", func.__name__, len(chosen), workers)
    return map_shards(func, chosen, workers, **kwargs)


def backtest_shards(  # noqa: PLR0913 (one argument per node input)
    model_input_shards: Mapping[str, Any],
    shard_plan: dict[str, Any],
    backtest_plan: dict[str, Any],
    *,
    shard: int | None,
    shard_workers: int | None,
    enabled: bool,
    max_fleet_servers: int | None = None,
    kind: str,
    hyperparameters: dict[str, Any],
    backtest_folds: int | None,
    metric_jobs: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """``backtest_forecaster`` on each shard: every shard, or only ``shard``.

    A model is skipped on a fleet of more than ``max_fleet_servers`` servers (its stats say why).

    Args:
        model_input_shards: Output of ``split_model_input`` (frames, or load callables of partitions).
        shard_plan: Output of ``split_model_input`` (the shard count K).
        backtest_plan: Output of ``plan_backtest`` (fleet-wide).
        shard: ``params:modelling.shard``: None runs every shard, in parallel worker processes when the cores
            allow; ``i`` runs shard ``i`` only (one SageMaker job per shard).
        shard_workers: ``params:modelling.shard_workers``: most worker processes (None: the cores).
        max_fleet_servers: ``params:modelling.<model>.max_fleet_servers``: the largest fleet the model
            earns its cost on (None: any).
        enabled, kind, hyperparameters, backtest_folds, metric_jobs, country, month_end_business_days,
        quarter_end_business_days: as in ``backtest_forecaster``.

    Returns:
        The backtest forecasts and the timing stats, each ``{shard name: ...}``.
    """
    skipped = _fleet_gate(enabled, max_fleet_servers, shard_plan)
    if skipped:
        logger.info("Model %s skipped: %s", kind, skipped)
        enabled = False
    parts = _run_shards(
        backtest_forecaster, model_input_shards, shard_plan, shard, shard_workers,
        _cores_per_shard(enabled, metric_jobs, hyperparameters),
        backtest_plan=backtest_plan, enabled=enabled, kind=kind,
        hyperparameters=_shard_budget(hyperparameters, shard_plan["shards"]), backtest_folds=backtest_folds,
        metric_jobs=metric_jobs, country=country,
        month_end_business_days=month_end_business_days, quarter_end_business_days=quarter_end_business_days,
    )  # fmt: skip
    stats = {name: {**out[1], **({"skipped": skipped} if skipped else {})} for name, out in parts.items()}
    return {name: out[0] for name, out in parts.items()}, stats


def fit_shards(  # noqa: PLR0913 (one argument per node input)
    model_input_shards: Mapping[str, Any],
    shard_plan: dict[str, Any],
    *,
    shard: int | None,
    shard_workers: int | None,
    enabled: bool,
    max_fleet_servers: int | None = None,
    kind: str,
    hyperparameters: dict[str, Any],
    horizon: int,
    metric_jobs: int,
    min_history_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> tuple[dict[str, dict[str, BaseForecaster]], dict[str, dict[str, Any]]]:
    """``fit_forecaster`` on each shard (``shard``, ``shard_workers`` and ``max_fleet_servers`` as in
    ``backtest_shards``).

    Returns:
        The fitted ``{metric: forecaster}`` and the fit summary, each ``{shard name: ...}``.
    """
    enabled = enabled and not _fleet_gate(enabled, max_fleet_servers, shard_plan)
    parts = _run_shards(
        fit_forecaster, model_input_shards, shard_plan, shard, shard_workers,
        _cores_per_shard(enabled, metric_jobs, hyperparameters),
        enabled=enabled, kind=kind, hyperparameters=_shard_budget(hyperparameters, shard_plan["shards"]),
        horizon=horizon, metric_jobs=metric_jobs,
        min_history_days=min_history_days, country=country, month_end_business_days=month_end_business_days,
        quarter_end_business_days=quarter_end_business_days,
    )  # fmt: skip
    return {name: out[0] for name, out in parts.items()}, {name: out[1] for name, out in parts.items()}


def predict_shards(  # noqa: PLR0913, PLR0917 (one argument per node input)
    forecaster_shards: Mapping[str, Any],
    shard_plan: dict[str, Any],
    horizon: int,
    shard: int | None,
    shard_workers: int | None,
    enabled: bool,
    hyperparameters: dict[str, Any],
) -> dict[str, pd.DataFrame]:
    """``predict_forecaster`` on each shard's fitted models (``shard``, ``shard_workers`` as in
    ``backtest_shards``; ``enabled`` and ``hyperparameters`` say how many cores a shard's predict uses).

    Returns:
        The forecasts, ``{shard name: frame}``.
    """
    return _run_shards(
        predict_forecaster, forecaster_shards, shard_plan, shard, shard_workers,
        _cores_per_shard(enabled, 1, hyperparameters), horizon=horizon,
    )  # fmt: skip


def _fleet_frame(partitions: Mapping[str, Any], shard_plan: dict[str, Any]) -> pd.DataFrame:
    """One model's frames of every shard of the run (``partitions_of_run``), concatenated."""
    frames = [load_partition(p) for p in partitions_of_run(partitions, shard_plan["shards"]).values()]
    filled = [frame for frame in frames if len(frame)]
    if len(filled) <= 1:
        return filled[0] if filled else frames[0]
    return pd.concat(filled, ignore_index=True)


def _fleet_stats(partitions: Mapping[str, Any], shard_plan: dict[str, Any]) -> dict[str, Any]:
    """One model's stats or summary of every shard of the run, combined: counts, seconds and per-key dicts
    are summed, ``folds`` is the most any shard had and ``series_per_second`` is recomputed."""
    parts = [load_partition(p) for p in partitions_of_run(partitions, shard_plan["shards"]).values()]
    return parts[0] if len(parts) == 1 else _combine_stats(parts)


def _combine_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Shards' stats combined key by key (see ``_fleet_stats``); other values: the first shard's."""
    combined: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        values = [part[key] for part in parts if key in part]
        if all(isinstance(v, dict) for v in values):
            combined[key] = _combine_stats(values)
        elif key == "folds":
            combined[key] = max(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            combined[key] = sum(values)
        else:
            combined[key] = values[0]
    if {"series", "fit_seconds", "series_per_second"} <= set(combined):
        seconds = combined["fit_seconds"] = round(combined["fit_seconds"], 3)
        combined["series_per_second"] = (
            round(combined["series"] / seconds, 3) if seconds > 0 else float("nan")
        )
    return combined


def calibrate_intervals(  # noqa: PLR0913, PLR0917 (one argument per node input)
    model_input: pd.DataFrame,
    backtest_plan: dict[str, Any],
    calibrate: bool,
    target_coverage: float,
    max_interval_scale: float,
    interval_prior_folds: float,
    ensemble_members: list[str],
    shard_plan: dict[str, Any],
    *backtests: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scales each model's p10-p90 interval per metric to cover ``target_coverage`` of actuals.

    The scale is a conformal factor: the ``target_coverage`` quantile of how far each actual lies outside
    (or inside) the interval, relative to its half-width. Overlapping folds share days, so each actual day
    of a series counts once in total (its folds split the weight), and the factor is shrunk towards 1 by
    the number of independent folds behind it and capped (``models.backtest.guarded_scale``): one window
    never rescales an interval 3x-26x. The backtest itself is cross-fitted — fold ``k`` is rescaled with
    the factor of the folds that do not overlap it (all others when every fold does) — so its coverage
    stays an honest estimate; the factor of all folds is what ``assemble_forecasts`` applies.

    Args:
        model_input: Output of ``prepare_model_input`` (the actuals).
        backtest_plan: Output of ``plan_backtest`` (origin offsets, horizon, independent folds).
        calibrate: ``params:modelling.calibrate_intervals``; False keeps every interval as the model made it.
        target_coverage: ``params:modelling.target_coverage`` (0.8 for p10-p90).
        max_interval_scale: ``params:modelling.max_interval_scale``: the factor stays within [1/x, x].
        interval_prior_folds: ``params:modelling.interval_prior_folds``: folds' worth of belief in scale 1.
        ensemble_members: ``params:modelling.ensemble_members``: models whose median is scored
            (and selectable) as the model ``ensemble`` on the folds they share; empty for none.
        shard_plan: Output of ``split_model_input`` (the shard count K).
        *backtests: Backtest forecasts of every model, ``{shard name: frame or load callable}`` (the K
            shards of the run are concatenated; partitions of another K are ignored).

    Returns:
        The (cross-fitted) calibrated backtest forecasts with ``y`` and ``is_observed`` joined, and
        ``model, metric, scale, raw_scale`` for the final forecasts.
    """
    frames = [b for b in (_fleet_frame(p, shard_plan) for p in backtests) if len(b)]
    columns = ["unique_id", "metric", "fold", "origin", "ds", "model", *QUANTILES, "y", "is_observed",
               "server_id", "archetype"]  # fmt: skip
    scale_columns = ["model", "metric", "horizon_week", "scale", "raw_scale"]
    if not frames:
        logger.warning("No backtest forecasts (no model enabled or no fold): intervals are not calibrated")
        return pd.DataFrame(columns=columns), pd.DataFrame(columns=scale_columns)
    backtest = pd.concat(frames, ignore_index=True)
    rows = model_input["unique_id"].isin(backtest["unique_id"].unique()) & (
        model_input["ds"] > backtest["origin"].min()
    )
    columns_joined = ["unique_id", "ds", "y", "is_observed", "server_id", "archetype"]
    actuals = _as_text(model_input.loc[rows, columns_joined])
    keys = ["unique_id", "metric", "fold", "origin", "ds"]
    offsets = dict(enumerate(backtest_plan["origin_offsets_days"]))
    horizon = backtest_plan["horizon"]

    def guard(ratio: np.ndarray, weight: np.ndarray, folds: list[int]) -> tuple[float, float]:
        raw = weighted_quantile(ratio, weight, target_coverage)
        evidence = independent_folds([offsets[f] for f in folds], horizon)
        return raw, guarded_scale(raw, evidence, interval_prior_folds, max_interval_scale)

    def calibrate_all(backtest: pd.DataFrame) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        scales, parts = [], []
        for (model, metric), group in backtest.groupby(["model", "metric"], sort=True):
            observed = group["is_observed"].to_numpy(bool)
            if not calibrate or not observed.any():
                scales.append(pd.DataFrame([{"model": model, "metric": metric, "horizon_week": 0,
                                             "scale": 1.0, "raw_scale": float("nan")}]))  # fmt: skip
                parts.append(group)
                continue
            fold_values = group["fold"].to_numpy()
            folds = sorted(int(f) for f in np.unique(fold_values))

            def other_folds(fold: int, folds: list[int] = folds) -> list[int]:
                others = [f for f in folds if f != fold and abs(offsets[f] - offsets[fold]) >= horizon]
                return others or [f for f in folds if f != fold]

            days_ahead = (pd.to_datetime(group["ds"]) - pd.to_datetime(group["origin"])).dt.days.to_numpy()
            table, row_scale = weekly_scales(
                interval_ratio(group, group["y"].to_numpy()),
                1.0 / _rows_per_key(group, ["unique_id", "ds"]),
                observed, horizon_weeks(days_ahead), fold_values, other_folds, guard,
            )  # fmt: skip
            scales.append(table.assign(model=model, metric=metric))
            parts.append(scale_interval(group, row_scale))
        return scales, parts

    scales, parts = calibrate_all(backtest.merge(actuals, on=["unique_id", "ds"]))
    ensemble = ensemble_quantiles(pd.concat(parts, ignore_index=True), ensemble_members, keys)
    if len(ensemble):
        more_scales, more_parts = calibrate_all(ensemble.merge(actuals, on=["unique_id", "ds"]))
        scales, parts = scales + more_scales, parts + more_parts
    scale_table = pd.concat(scales, ignore_index=True)[scale_columns]
    logger.info("Interval scales per model, metric and horizon week:\n%s",
                scale_table.round(3).to_string(index=False))  # fmt: skip
    return pd.concat(parts, ignore_index=True)[columns], scale_table


def _in_sample_scale(model_input: pd.DataFrame, origins: pd.DataFrame, season_length: int) -> pd.DataFrame:
    """Mean absolute seasonal-naive error of each series up to each origin (the MASE denominator)."""
    rows = model_input["unique_id"].isin(origins["unique_id"].unique())
    frame = _as_text(model_input.loc[rows, ["unique_id", "ds", "y", "is_observed"]])
    frame = frame.sort_values(["unique_id", "ds"], kind="stable")
    y = frame["y"].where(frame["is_observed"])
    error = (y - y.groupby(frame["unique_id"]).shift(season_length)).abs()
    frame = frame.assign(err_sum=error.fillna(0.0), err_n=error.notna().astype(float))
    frame[["err_sum", "err_n"]] = frame.groupby("unique_id")[["err_sum", "err_n"]].cumsum()
    at_origin = origins.merge(
        frame, left_on=["unique_id", "origin"], right_on=["unique_id", "ds"], how="left"
    )
    return at_origin.assign(scale=at_origin["err_sum"] / at_origin["err_n"])[["unique_id", "origin", "scale"]]


def _score_terms(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-row terms whose sums over a group of rows give that group's scores (``_scores_from_sums``)."""
    y, p50 = frame["y"].to_numpy(float), frame["p50"].to_numpy(float)
    error = y - p50
    nonzero = y != 0
    denominator = np.abs(y) + np.abs(p50)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = {
            "n": np.ones(len(y)),
            "abs_error": np.abs(error),
            "squared_error": error**2,
            "abs_pct_error": np.where(nonzero, np.abs(error / np.where(nonzero, y, 1.0)), 0.0),
            "nonzero": nonzero.astype(float),
            "smape_term": np.where(denominator == 0, 0.0, 2 * np.abs(error) / denominator),
            "abs_actual": np.abs(y),
            "covered": ((y >= frame["p10"].to_numpy()) & (y <= frame["p90"].to_numpy())).astype(float),
        }
    for name, q in QUANTILE_LEVELS.items():
        diff = y - frame[name].to_numpy(float)
        terms[f"pinball_{name}"] = np.maximum(q * diff, (q - 1) * diff)
    return pd.DataFrame(terms, index=frame.index)


def _scores_from_sums(sums: pd.DataFrame, scale: np.ndarray) -> pd.DataFrame:
    """Scores of each row of summed ``_score_terms`` (NaN for groups without rows); ``scale`` per row."""
    n = sums["n"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        mae = sums["abs_error"].to_numpy() / n
        scores = {
            "mae": mae,
            "rmse": np.sqrt(sums["squared_error"].to_numpy() / n),
            "mape": np.where(sums["nonzero"] > 0, sums["abs_pct_error"] / sums["nonzero"] * 100, np.nan),
            "smape": sums["smape_term"].to_numpy() / n * 100,
            "mase": np.where(scale > 0, mae / scale, np.nan),
            "wape": np.where(sums["abs_actual"] > 0, sums["abs_error"] / sums["abs_actual"], np.nan),
            **{f"pinball_{name}": sums[f"pinball_{name}"].to_numpy() / n for name in QUANTILES},
            "coverage": sums["covered"].to_numpy() / n,
        }
    return pd.DataFrame(scores, index=sums.index)[list(_SCORES)]


def score_forecasts(frame: pd.DataFrame, scale: pd.Series | np.ndarray | None = None) -> dict[str, float]:
    """Accuracy of one forecast against its actuals.

    Args:
        frame: Rows with ``y`` (actual), ``p10``, ``p50``, ``p90``.
        scale: MASE denominator (in-sample seasonal-naive MAE); NaN MASE when absent.

    Returns:
        ``mae, rmse, mape, smape, mase, wape, pinball_p10/p50/p90, coverage``; MAPE (%) skips zero actuals,
        sMAPE is in % (0-200), coverage is the share of actuals within [p10, p90].
    """
    mean_scale = float(np.mean(scale)) if scale is not None and len(scale) else np.nan
    sums = _score_terms(frame).sum().to_frame().T
    return {k: float(v) for k, v in _scores_from_sums(sums, np.array([mean_scale])).iloc[0].items()}


def evaluate_backtests(
    calibrated_backtest: pd.DataFrame,
    model_input: pd.DataFrame,
    *,
    season_length: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Scores every server, metric, model and fold on all horizon days and on end-of-quarter days only.

    Args:
        calibrated_backtest: Output of ``calibrate_intervals``.
        model_input: Output of ``prepare_model_input`` (for the MASE denominators).
        season_length: Seasonal-naive lag of the MASE denominator (``params:modelling.season_length``).
        country: ``params:calendar.country``.
        month_end_business_days: ``params:calendar.month_end_business_days``.
        quarter_end_business_days: ``params:calendar.quarter_end_business_days`` (the end-of-quarter days).

    Returns:
        One row per ``server_id, metric, archetype, model, fold`` with ``origin``, the scores of
        ``score_forecasts``, the same prefixed ``eoq_`` for end-of-quarter days, and ``days, eoq_days``.
    """
    observed = calibrated_backtest[calibrated_backtest["is_observed"].astype(bool)]
    if observed.empty:
        return pd.DataFrame(columns=["server_id", "metric", "archetype", "model", "fold", "origin", *_SCORES])
    dates = pd.DatetimeIndex(observed["ds"].unique())
    calendar = calendar_features(dates, country, month_end_business_days, quarter_end_business_days)
    eoq = observed["ds"].map(calendar.set_index("date")["is_end_of_quarter"]).astype(bool).to_numpy()
    scales = _in_sample_scale(model_input, observed[["unique_id", "origin"]].drop_duplicates(), season_length)
    scale = observed.merge(scales, on=["unique_id", "origin"], how="left")["scale"].to_numpy()
    keys = ["server_id", "metric", "archetype", "model", "fold", "origin"]
    terms = _score_terms(observed)
    by = [observed[k] for k in keys]
    sums = terms.groupby(by, sort=True).sum()
    peak_sums = terms[eoq].groupby([k[eoq] for k in by]).sum().reindex(sums.index, fill_value=0)
    group_scale = pd.Series(scale, index=observed.index).groupby(by, sort=True).mean()
    metrics = pd.concat(
        [
            _scores_from_sums(sums, group_scale.to_numpy()),
            _scores_from_sums(peak_sums, group_scale.to_numpy()).add_prefix("eoq_"),
        ],
        axis=1,
    ).assign(days=sums["n"].astype(int), eoq_days=peak_sums["n"].astype(int))
    metrics = metrics.reset_index()
    summary = metrics.groupby("model")[["mase", "smape", "coverage"]].mean().sort_values("mase")
    logger.info("Backtest scores (mean over servers, metrics and folds):\n%s", summary.round(3).to_string())
    return metrics


def _common_folds(model_metrics: pd.DataFrame) -> pd.DataFrame:
    """Keeps the folds every model was backtested on, so models are compared on the same days."""
    folds = model_metrics.groupby("model")["fold"].agg(set)
    common = set.intersection(*folds.tolist())
    if not common:
        raise ValueError(f"the models share no backtest fold: {folds.to_dict()}")
    return model_metrics[model_metrics["fold"].isin(common)]


def _series_means(common: pd.DataFrame, selection_metric: str, min_coverage: float) -> pd.DataFrame:
    """Each series' mean score per model, without the models whose calibrated p10-p90 coverage on that metric
    (mean over the folds) stays below ``min_coverage``: their intervals cannot be trusted (kept when no model
    of the metric reaches it)."""
    keys = ["server_id", "metric", "archetype", "model"]
    if "coverage" in common:
        coverage = common.groupby(["metric", "model"])["coverage"].transform("mean")
        trusted = coverage >= min_coverage
        common = common[trusted | ~trusted.groupby(common["metric"]).transform("any")]
    return common.groupby(keys, as_index=False)[selection_metric].mean().dropna(subset=[selection_metric])


def _fleet_wide(means: pd.DataFrame) -> pd.DataFrame:
    """The rows of the models backtested on every backtested series of their metric. A model on a series
    budget (``max_series``) forecasts only the series it was given, so it cannot be the group choice for
    series without a backtest of their own."""
    per_model = means.groupby(["metric", "model"])["server_id"].transform("nunique")
    return means[per_model == means.groupby("metric")["server_id"].transform("nunique")]


def select_models(  # noqa: PLR0913, PLR0917 (one argument per node input)
    model_metrics: pd.DataFrame,
    model_input: pd.DataFrame,
    backtest_plan: dict[str, Any],
    selection_metric: str,
    pooling: float,
    ensemble_margin: float,
    min_interval_coverage: float,
    min_history_days: int,
) -> pd.DataFrame:
    """Picks, per server and metric, the model with the lowest expected backtest ``selection_metric``.

    A series' own mean score over a few folds is a noisy estimate: picking the per-series winner mostly
    picks noise. The expected score is therefore shrunk towards the model's mean over the servers of the
    same archetype and metric — the more so the fewer independent folds there are — and the ensemble is
    kept unless another model beats it by ``ensemble_margin`` (less when the independent backtest days are
    many: ``models.backtest.evidence_margin``, ``choose_models``). Only
    folds every model was backtested on count. A series without its own backtest gets its group's choice;
    a series with fewer than ``min_history_days`` observed days gets the ``fallback`` model.

    Args:
        model_metrics: Output of ``evaluate_backtests``.
        model_input: Output of ``prepare_model_input`` (every series, its archetype and history_days).
        backtest_plan: Output of ``plan_backtest`` (origin offsets and horizon: the independent folds
            among the common ones weigh the series' own scores and set the ensemble margin).
        selection_metric: Score column to minimise (``params:modelling.selection_metric``, e.g. ``mase``).
        pooling: ``params:modelling.selection_pooling`` in [0, 1]: 0 trusts each series' own scores as far
            as the folds allow, 1 makes one choice per archetype and metric.
        ensemble_margin: ``params:modelling.ensemble_margin``: relative edge needed over the ensemble.
        min_interval_coverage: ``params:modelling.min_interval_coverage``: a model whose calibrated backtest
            p10-p90 coverage on a metric is lower is not selected for it.
        min_history_days: ``params:modelling.min_history_days``.

    Returns:
        ``server_id, metric, model, <selection_metric>, expected_<selection_metric>, basis``: one row per
        series; ``basis`` is ``backtest`` (own folds and group), ``group`` (its group's choice, no own
        folds) or ``short_history`` (fallback).
    """
    if selection_metric not in model_metrics.columns and len(model_metrics):
        raise ValueError(f"selection_metric {selection_metric!r} is not a model_metrics column")
    if not 0 <= pooling <= 1:
        raise ValueError(f"selection pooling must be within [0, 1], got {pooling}")
    expected = f"expected_{selection_metric}"
    series = _series_table(model_input).set_index("unique_id")
    short = series["history_days"] < min_history_days
    chosen = pd.DataFrame(columns=["server_id", "metric", "model", selection_metric, expected])
    if len(model_metrics):
        common = _common_folds(model_metrics)
        means = _series_means(common, selection_metric, min_interval_coverage)
        offsets = backtest_plan["origin_offsets_days"]
        evidence = independent_folds([offsets[f] for f in common["fold"].unique()], backtest_plan["horizon"])
        margin = evidence_margin(ensemble_margin, evidence, backtest_plan["horizon"])
        chosen = choose_models(means, selection_metric, pooling, evidence, margin).assign(basis="backtest")
        by_archetype = _fleet_wide(means).groupby(["archetype", "metric", "model"], as_index=False)
        groups = by_archetype[selection_metric].mean()
        group_choice = choose_models(
            groups.assign(server_id=groups["archetype"]), selection_metric, 1.0, 0, margin
        )
        metric_choice = choose_models(
            groups.assign(server_id="fleet", archetype="fleet"), selection_metric, 1.0, 0, margin
        )
        rest = series[~short].merge(chosen[["server_id", "metric"]], how="left", indicator=True)
        rest = rest[rest["_merge"] == "left_only"].drop(columns="_merge")
        by_group = rest.merge(
            group_choice[["archetype", "metric", "model"]], on=["archetype", "metric"], how="left"
        )
        by_metric = by_group["metric"].map(metric_choice.set_index("metric")["model"])
        by_group["model"] = by_group["model"].fillna(by_metric).fillna("seasonal_naive")
        chosen = pd.concat([chosen, by_group.assign(basis="group")], ignore_index=True)
    fallback = series[short].assign(model="fallback", basis="short_history")
    no_backtest = series[~short].merge(chosen[["server_id", "metric"]], how="left", indicator=True)
    no_backtest = no_backtest[no_backtest["_merge"] == "left_only"].drop(columns="_merge")
    selection = pd.concat(
        [chosen, fallback, no_backtest.assign(model="ensemble", basis="no_backtest")], ignore_index=True
    )
    selection = selection.sort_values(["server_id", "metric"], ignore_index=True)
    logger.info(
        "Selected models: %s (basis: %s)",
        selection["model"].value_counts().to_dict(), selection["basis"].value_counts().to_dict(),
    )  # fmt: skip
    return selection[["server_id", "metric", "model", selection_metric, expected, "basis"]]


def _cross_validated_selection(  # noqa: PLR0913, PLR0917 (the selection rule's settings)
    model_metrics: pd.DataFrame,
    selection_metric: str,
    pooling: float,
    backtest_plan: dict[str, Any],
    ensemble_margin: float,
    min_interval_coverage: float,
) -> pd.DataFrame:
    """Scores of the selection rule itself: each fold scored with the models chosen on the others."""
    common = _common_folds(model_metrics)
    folds = sorted(common["fold"].unique())
    if len(folds) < 2:
        return pd.DataFrame()
    offsets = backtest_plan["origin_offsets_days"]
    picked = []
    for fold in folds:
        others = common[common["fold"] != fold]
        evidence = independent_folds([offsets[f] for f in others["fold"].unique()], backtest_plan["horizon"])
        margin = evidence_margin(ensemble_margin, evidence, backtest_plan["horizon"])
        choice = choose_models(
            _series_means(others, selection_metric, min_interval_coverage),
            selection_metric,
            pooling,
            evidence,
            margin,
        )[["server_id", "metric", "model"]]
        picked.append(common[common["fold"] == fold].merge(choice, on=["server_id", "metric", "model"]))
    return pd.concat(picked, ignore_index=True).assign(model="selected")


def _summarise(metrics: pd.DataFrame, by: list[str]) -> list[dict[str, Any]]:
    columns = [c for c in metrics.columns if c in _SCORES or c.removeprefix("eoq_") in _SCORES]
    table = metrics.groupby(by, as_index=False)[columns].mean().sort_values([*by[:-1], "mase"])
    return [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        for r in table.to_dict("records")
    ]


def rank_models(  # noqa: PLR0913, PLR0917 (one argument per node input)
    model_metrics: pd.DataFrame,
    model_selection: pd.DataFrame,
    backtest_plan: dict[str, Any],
    selection_metric: str,
    pooling: float,
    ensemble_margin: float,
    min_interval_coverage: float,
    shard_plan: dict[str, Any],
    *model_stats: Mapping[str, Any],
) -> dict[str, Any]:
    """Builds the leaderboard: models by backtest MASE, with coverage and fit time, and what was adapted.

    The ``selected`` row scores the per-series selection honestly: each fold is scored with the models
    chosen on the other folds (on the folds all models share).

    Args:
        model_metrics: Output of ``evaluate_backtests``.
        model_selection: Output of ``select_models``.
        backtest_plan: Output of ``plan_backtest``.
        selection_metric: ``params:modelling.selection_metric``.
        pooling: ``params:modelling.selection_pooling`` (see ``select_models``).
        ensemble_margin: ``params:modelling.ensemble_margin``.
        min_interval_coverage: ``params:modelling.min_interval_coverage``.
        shard_plan: Output of ``split_model_input``, recorded as ``shards`` (K and servers per shard).
        *model_stats: Each model's backtest stats (``fit_seconds``, ``series_per_second``) and fit summary
            (``seasonal_terms_off``), ``{shard name: stats}``; the shards' stats are added up.

    Returns:
        ``models, by_archetype, by_metric`` (records sorted by MASE; ``models`` also carries ``folds``,
        ``fit_seconds`` and ``series_per_second``), ``common_folds``, ``backtest`` (requested vs used origins
        and horizon, origin dates, reason), ``seasonal_terms_off`` (per model: series per term switched off),
        ``fitted_on`` (per model: series and rows its final fit used, e.g. Prophet's ``max_series``),
        ``skipped`` (per model: why it did not run on this fleet, ``max_fleet_servers``),
        ``selection`` (series per selected model and per basis) and ``shards`` (K and servers per shard).
    """
    model_stats = tuple(_fleet_stats(p, shard_plan) for p in model_stats)
    timing = {s["model"]: s for s in model_stats if "fit_seconds" in s}
    terms_off = {s["model"]: s["seasonal_terms_off"] for s in model_stats if "seasonal_terms_off" in s}
    fitted_on = {s["model"]: s["fitted_on"] for s in model_stats if "fitted_on" in s}
    skipped = {s["model"]: s["skipped"] for s in model_stats if "skipped" in s}
    plan_keys = ("requested_origins", "requested_horizon", "origins", "horizon", "origin_offsets_days",
                 "origin_dates", "analysis_date", "independent_folds", "reference_history_days",
                 "min_train_days", "spacing_days", "reason", "fleet_servers")  # fmt: skip
    leaderboard: dict[str, Any] = {
        "models": [],
        "by_archetype": [],
        "by_metric": [],
        "common_folds": [],
        "backtest": {
            **{k: backtest_plan.get(k) for k in plan_keys},
            "servers_backtested": len(backtest_plan.get("servers") or [])
            or backtest_plan.get("fleet_servers"),
        },
        "seasonal_terms_off": terms_off,
        "fitted_on": fitted_on,
        "skipped": skipped,
        "selection": {
            "models": model_selection["model"].value_counts().to_dict(),
            "basis": model_selection["basis"].value_counts().to_dict(),
        },
        "shards": {"shards": shard_plan["shards"], "servers": dict(shard_plan["servers"])},
    }
    if model_metrics.empty:
        logger.warning("No backtest scores: the leaderboard only says why (%s)", backtest_plan["reason"])
        return leaderboard
    common = _common_folds(model_metrics)
    cross_validated = _cross_validated_selection(
        model_metrics, selection_metric, pooling, backtest_plan, ensemble_margin, min_interval_coverage
    )
    scored = pd.concat([common, cross_validated], ignore_index=True)
    overall = _summarise(scored, ["model"])
    for record in overall:
        stats = timing.get(record["model"], {})
        record.update({k: stats.get(k) for k in ("folds", "fit_seconds", "series_per_second")})
    leaderboard.update(
        models=overall,
        by_archetype=_summarise(scored, ["archetype", "model"]),
        by_metric=_summarise(scored, ["metric", "model"]),
        common_folds=sorted(int(f) for f in common["fold"].unique()),
    )
    table = pd.DataFrame(overall)[["model", "mase", "smape", "coverage", "fit_seconds"]]
    logger.info("Model leaderboard:\n%s", table.to_string(index=False))
    return leaderboard


def _fallback_forecasts(model_input: pd.DataFrame, series: pd.Index, horizon: int) -> pd.DataFrame:
    """``RecentMeanForecaster`` forecasts of the ``unique_id``s in ``series`` (forecasts schema)."""
    frame = model_input[model_input["unique_id"].isin(series)]
    if frame.empty:
        return pd.DataFrame(columns=_FORECAST_COLUMNS)
    forecast = FORECASTERS["fallback"]().fit(frame[["unique_id", "ds", "y"]]).predict(horizon)
    return _forecast_rows(forecast, "fallback")


_FALLBACK_ORDER = ("ensemble", "seasonal_naive", "fallback")
"""Models tried in turn for a series whose selected model has no forecast for it."""


def assemble_forecasts(  # noqa: PLR0913, PLR0917 (one argument per node input)
    model_input: pd.DataFrame,
    model_selection: pd.DataFrame,
    interval_scales: pd.DataFrame,
    ensemble_members: list[str],
    horizon: int,
    shard_plan: dict[str, Any],
    *forecasts: Mapping[str, Any],
) -> pd.DataFrame:
    """Stacks every model's final forecast, applies the backtest interval scales and flags the selected model.

    Series selected for the ``fallback`` model (short histories), or whose selected model has no forecast
    for them, get the first of ensemble, seasonal naive and fallback that has one.

    Args:
        model_input: Output of ``prepare_model_input`` (fallback fits and ``history_days``).
        model_selection: Output of ``select_models``.
        interval_scales: ``model, metric, scale`` from ``calibrate_intervals``.
        ensemble_members: ``params:modelling.ensemble_members`` (adds the ``ensemble`` model's forecast).
        horizon: ``params:horizon``.
        shard_plan: Output of ``split_model_input`` (the shard count K).
        *forecasts: Final forecasts of every model (``server_id, metric, date, model, p10, p50, p90``),
            ``{shard name: frame or load callable}``.

    Returns:
        ``server_id, metric, date, model, p10, p50, p90, is_selected, history_days`` with exactly one
        selected model per server and metric, starting the day after the series' last clean day.
    """
    series = _series_table(model_input).set_index("unique_id")
    frames = [_fleet_frame(p, shard_plan) for p in forecasts]
    frame = _concat_forecasts(
        [f for f in frames if len(f)] or [pd.DataFrame(columns=_FORECAST_COLUMNS)],
        {"server_id": series["server_id"], "metric": series["metric"], "model": ["ensemble", "fallback"]},
    )
    del frames, forecasts
    key_dtypes = {key: frame[key].dtype for key in ("server_id", "metric", "model")}
    by_series = series.set_index(["server_id", "metric"])
    last_day = model_input.groupby("unique_id", sort=True, observed=True)["ds"].max()
    last_day = pd.Series(last_day.to_numpy(), index=by_series.index)

    def calibrated(rows: pd.DataFrame) -> pd.DataFrame:
        ahead = pd.to_datetime(rows["date"]).to_numpy() - _at_series(rows, last_day)
        days = np.where(np.isnat(ahead), 1, ahead.astype("timedelta64[D]").astype(np.int64))
        return apply_weekly_scales(rows, interval_scales, days)

    frame = calibrated(frame)
    ensemble = ensemble_quantiles(frame, ensemble_members, ["server_id", "metric", "date"])
    frame = pd.concat([frame, calibrated(ensemble[frame.columns].astype(key_dtypes))], ignore_index=True)
    covered = key_combinations(frame, ["server_id", "metric"])[0].assign(_any=True)
    uncovered = series.reset_index().merge(covered, how="left", on=["server_id", "metric"])
    needs_fallback = pd.Index(uncovered.loc[uncovered["_any"].isna(), "unique_id"])
    wanted = model_selection.loc[model_selection["model"] == "fallback", ["server_id", "metric"]]
    wanted_ids = pd.Index(wanted["server_id"] + _SEPARATOR + wanted["metric"])
    fallback = _fallback_forecasts(model_input, needs_fallback.union(wanted_ids), horizon)
    if len(fallback):
        frame = pd.concat([frame, fallback.astype(key_dtypes)], ignore_index=True)
    available, combination = key_combinations(frame, ["server_id", "metric", "model"])
    choice = model_selection[["server_id", "metric", "model"]].astype(str)
    candidates = pd.concat(
        [choice.assign(rank=0)] + [choice.assign(model=m, rank=i + 1) for i, m in enumerate(_FALLBACK_ORDER)]
    ).merge(available, on=["server_id", "metric", "model"])
    chosen = candidates.sort_values("rank", kind="stable").drop_duplicates(["server_id", "metric"])
    replaced = chosen[chosen["rank"] > 0]
    if len(replaced):
        missing = choice.merge(replaced[["server_id", "metric"]])["model"].value_counts().to_dict()
        logger.warning("%d series lack their selected model's forecast (%s); they get %s instead",
                       len(replaced), missing, replaced["model"].value_counts().to_dict())  # fmt: skip
    is_chosen = pd.MultiIndex.from_frame(available).isin(pd.MultiIndex.from_frame(chosen[available.columns]))
    per_series = available[is_chosen].groupby(["server_id", "metric"]).size()
    series_forecast = len(available[["server_id", "metric"]].drop_duplicates())
    if (per_series != 1).any() or len(per_series) != series_forecast:
        raise ValueError("every server and metric needs exactly one selected model")
    frame["is_selected"] = is_chosen[combination]
    frame["history_days"] = np.nan_to_num(_at_series(frame, by_series["history_days"])).astype("int64")
    frame = frame.sort_values(["server_id", "metric", "model", "date"], ignore_index=True)
    return frame[[*_FORECAST_COLUMNS, "is_selected", "history_days"]]


def collect_backtest_forecasts(
    calibrated_backtest: pd.DataFrame, model_selection: pd.DataFrame
) -> pd.DataFrame:
    """The calibrated backtest forecasts of each series' selected model, on every fold it was backtested on.

    Args:
        calibrated_backtest: Output of ``calibrate_intervals``.
        model_selection: Output of ``select_models``.

    Returns:
        ``server_id, metric, origin, date, h, model, p10, p50, p90, actual`` (``actual`` is the clean value,
        NaN where it was missing); series whose selected model was not backtested have no rows.
    """
    columns = ["server_id", "metric", "origin", "date", "h", "model", *QUANTILES, "actual"]
    chosen = model_selection[["server_id", "metric", "model"]]
    rows = calibrated_backtest.merge(chosen, on=["server_id", "metric", "model"])
    out = pd.DataFrame(
        {
            "server_id": rows["server_id"].astype(str),
            "metric": rows["metric"].astype(str),
            "origin": pd.to_datetime(rows["origin"]),
            "date": pd.to_datetime(rows["ds"]),
            "h": (pd.to_datetime(rows["ds"]) - pd.to_datetime(rows["origin"])).dt.days.astype("int64"),
            "model": rows["model"].astype(str),
            **{q: rows[q].astype("float64") for q in QUANTILES},
            "actual": rows["y"].where(rows["is_observed"].astype(bool)).astype("float64"),
        }
    )
    return out.sort_values(["server_id", "metric", "origin", "date"], ignore_index=True)[columns]
