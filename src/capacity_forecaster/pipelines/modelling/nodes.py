"""Nodes of the modelling pipeline: backtest, fit and predict each forecaster, then score, select and publish.

Every model sees long frames ``unique_id, ds, y``; a ``unique_id`` is ``"<server_id>|<metric>"`` and global
models are fitted once per metric across all servers.
"""

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.models import FORECASTERS, BaseForecaster
from capacity_forecaster.models.base import QUANTILE_LEVELS, finalise_quantiles
from capacity_forecaster.progress import track
from capacity_forecaster.schema import METRICS, QUANTILES

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

    Args:
        clean_server_metrics: ``server_id, metric, date, value`` (complete daily calendar; NaN in long gaps).
        server_inventory: ``server_id, archetype`` (+ other columns, unused).

    Returns:
        ``unique_id, server_id, metric, archetype, ds, y, is_observed``: ``y`` is ``value`` with NaN gaps
        linearly interpolated (ends carried), ``is_observed`` is False where ``value`` was NaN (never scored).
    """
    missing = {"server_id", "metric", "date", "value"} - set(clean_server_metrics.columns)
    if missing:
        raise ValueError(f"clean_server_metrics is missing columns {sorted(missing)}")
    unknown = set(clean_server_metrics["metric"].astype(str)) - set(METRICS)
    if unknown:
        raise ValueError(f"clean_server_metrics has unknown metrics {sorted(unknown)}; expected {METRICS}")
    frame = pd.DataFrame(
        {
            "server_id": clean_server_metrics["server_id"].astype(str).to_numpy(),
            "metric": clean_server_metrics["metric"].astype(str).to_numpy(),
            "ds": pd.to_datetime(clean_server_metrics["date"]).dt.normalize().to_numpy(),
            "value": clean_server_metrics["value"].astype("float64").to_numpy(),
        }
    ).sort_values(["server_id", "metric", "ds"], ignore_index=True)
    frame["unique_id"] = frame["server_id"] + _SEPARATOR + frame["metric"]
    archetypes = server_inventory.assign(server_id=server_inventory["server_id"].astype(str)).set_index(
        "server_id"
    )["archetype"]
    frame["archetype"] = frame["server_id"].map(archetypes).fillna("unknown").astype(str)
    frame["is_observed"] = frame["value"].notna()
    frame["y"] = frame.groupby("unique_id", sort=False)["value"].transform(
        lambda s: s.interpolate(limit_direction="both")
    )
    empty = frame.loc[frame["y"].isna(), "unique_id"].unique()
    if len(empty):
        logger.warning("Dropping %d series without any observed value: %s", len(empty), list(empty[:5]))
        frame = frame[~frame["unique_id"].isin(empty)]
    logger.info("Model input: %d series, %d rows", frame["unique_id"].nunique(), len(frame))
    return frame[["unique_id", "server_id", "metric", "archetype", "ds", "y", "is_observed"]].reset_index(
        drop=True
    )


def backtest_origins(
    last_date: pd.Timestamp, n_days: int, n_origins: int, holdout_share: float, horizon: int
):
    """Evenly spaced forecast origins in the last ``holdout_share`` of history, each leaving a full horizon.

    Returns:
        A ``DatetimeIndex`` of ``n_origins`` origins, oldest first.

    Raises:
        ValueError: When the history is too short for one full horizon after the earliest origin.
    """
    holdout = max(int(round(n_days * holdout_share)), horizon)
    latest = last_date - pd.Timedelta(days=horizon)
    earliest = last_date - pd.Timedelta(days=holdout)
    if n_days - holdout < 2 * horizon // 3 or n_origins < 1:
        raise ValueError(
            f"history of {n_days} days is too short to backtest {n_origins} origins with horizon {horizon}"
        )
    offsets = np.linspace(0, (latest - earliest).days, n_origins).round().astype(int)
    return pd.DatetimeIndex(sorted({earliest + pd.Timedelta(days=int(d)) for d in offsets}))


def _make_forecaster(kind: str, hyperparameters: dict[str, Any], **shared: Any) -> BaseForecaster:
    """Builds the ``kind`` forecaster; ``shared`` settings (horizon, calendar) apply where it takes them."""
    if kind not in FORECASTERS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(FORECASTERS)}")
    model = FORECASTERS[kind](**(hyperparameters or {}))
    return model.set_params(**{k: v for k, v in shared.items() if k in model.get_params()})


def _fit_per_metric(model: BaseForecaster, frame: pd.DataFrame, metric_jobs: int) -> dict[str, Any]:
    """Fits a fresh clone per metric (global models are per metric), ``metric_jobs`` metrics at a time."""
    metrics, groups = zip(*frame.groupby("metric", sort=True), strict=True)
    columns = ["unique_id", "ds", "y"]
    fitted = Parallel(n_jobs=metric_jobs)(delayed(clone(model).fit)(group[columns]) for group in groups)
    return dict(zip(metrics, fitted, strict=True))


def backtest_forecaster(
    model_input: pd.DataFrame,
    *,
    enabled: bool,
    kind: str,
    hyperparameters: dict[str, Any],
    backtest_folds: int | None,
    horizon: int,
    metric_jobs: int,
    n_origins: int,
    holdout_share: float,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rolling-origin backtest: for each origin, fit on data up to it only and forecast ``horizon`` days.

    Args:
        model_input: Output of ``prepare_model_input``.
        enabled: ``params:modelling.<model>.enabled``; a disabled model returns an empty backtest.
        kind: Forecaster kind (a key of ``capacity_forecaster.models.FORECASTERS``).
        hyperparameters: Keyword arguments of the forecaster class (the dict is the value).
        backtest_folds: Backtest only the most recent folds (``None`` = all ``n_origins``).
        horizon: Days ahead (``params:horizon``).
        metric_jobs: Metrics fitted at once, one process each (``params:modelling.<model>.metric_jobs``);
            more than 1 only pays for models that use one core.
        n_origins: Origins (``params:modelling.backtest.n_origins``).
        holdout_share: Share of history holding the origins (``params:modelling.backtest.holdout_share``).
        country: ``params:calendar.country``.
        month_end_business_days: ``params:calendar.month_end_business_days``.
        quarter_end_business_days: ``params:calendar.quarter_end_business_days``.

    Returns:
        The backtest forecasts (``unique_id, metric, fold, origin, ds, model, p10..p90``) and timing stats.
    """
    model = _make_forecaster(
        kind,
        hyperparameters,
        horizon=horizon,
        country=country,
        month_end_business_days=month_end_business_days,
        quarter_end_business_days=quarter_end_business_days,
    )
    alias = model.alias
    stats = {"model": alias, "folds": 0, "series": 0, "fit_seconds": 0.0, "series_per_second": float("nan")}
    if not enabled:
        logger.info("Model %s is disabled", alias)
        return pd.DataFrame(columns=_BACKTEST_COLUMNS), stats
    last, first = model_input["ds"].max(), model_input["ds"].min()
    origins = backtest_origins(last, (last - first).days + 1, n_origins, holdout_share, horizon)
    folds = list(enumerate(origins))
    if backtest_folds is not None:
        folds = folds[-backtest_folds:]
    parts, fitted_series, started = [], 0, time.perf_counter()
    for fold, origin in track(folds, f"Backtest {alias}", unit="folds"):
        history = model_input[model_input["ds"] <= origin]
        fitted = _fit_per_metric(model, history, metric_jobs)
        forecast = pd.concat(
            [forecaster.predict(horizon).assign(metric=metric) for metric, forecaster in fitted.items()],
            ignore_index=True,
        )
        fitted_series += history["unique_id"].nunique()
        parts.append(forecast.assign(fold=fold, origin=origin, model=alias))
    seconds = time.perf_counter() - started
    stats.update(
        folds=len(folds), series=fitted_series, fit_seconds=round(seconds, 3),
        series_per_second=round(fitted_series / seconds, 3) if seconds > 0 else float("nan"),
    )  # fmt: skip
    logger.info(
        "Backtested %s: %d folds, %d series fits in %.1f s", alias, len(folds), fitted_series, seconds
    )
    return pd.concat(parts, ignore_index=True)[_BACKTEST_COLUMNS], stats


def fit_forecaster(
    model_input: pd.DataFrame,
    *,
    enabled: bool,
    kind: str,
    hyperparameters: dict[str, Any],
    horizon: int,
    metric_jobs: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> dict[str, BaseForecaster]:
    """Fits the forecaster on all history, one fitted clone per metric (``metric_jobs`` at a time).

    Returns:
        ``{metric: fitted forecaster}`` (empty when the model is disabled).
    """
    model = _make_forecaster(
        kind,
        hyperparameters,
        horizon=horizon,
        country=country,
        month_end_business_days=month_end_business_days,
        quarter_end_business_days=quarter_end_business_days,
    )
    if not enabled:
        return {}
    return _fit_per_metric(model, model_input, metric_jobs)


def predict_forecaster(forecaster: dict[str, BaseForecaster], horizon: int) -> pd.DataFrame:
    """Forecasts ``horizon`` days after the last history day with every fitted per-metric model.

    Returns:
        ``server_id, metric, date, model, p10, p50, p90`` (empty when the model is disabled).
    """
    parts = []
    for metric, model in forecaster.items():
        forecast = model.predict(horizon)
        server = forecast["unique_id"].str.rsplit(_SEPARATOR, n=1).str[0]
        parts.append(
            forecast.assign(server_id=server, metric=metric, model=model.alias).rename(columns={"ds": "date"})
        )
    if not parts:
        return pd.DataFrame(columns=_FORECAST_COLUMNS)
    return pd.concat(parts, ignore_index=True)[_FORECAST_COLUMNS]


def _ensemble(frame: pd.DataFrame, members: list[str], keys: list[str]) -> pd.DataFrame:
    """Equal-weight mean of the members' p10/p50/p90 wherever every member forecast the same key."""
    rows = frame[frame["model"].isin(members)]
    if not members or rows.empty:
        return frame.iloc[0:0]
    grouped = rows.groupby(keys, as_index=False, sort=False)
    mean = grouped[list(QUANTILES)].mean().merge(grouped.size(), on=keys)
    mean = mean[mean["size"] == len(set(members))].drop(columns="size")
    return finalise_quantiles(mean.assign(model="ensemble"))


def _interval_ratio(frame: pd.DataFrame, actual: np.ndarray) -> np.ndarray:
    """How much the p10-p50 / p50-p90 half-widths must be scaled for each actual to fall inside."""
    below = actual < frame["p50"].to_numpy()
    width = np.where(below, frame["p50"] - frame["p10"], frame["p90"] - frame["p50"])
    gap = np.abs(actual - frame["p50"].to_numpy())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap == 0, 0.0, gap / np.maximum(width, 1e-9))


def _scale_interval(frame: pd.DataFrame, scale: np.ndarray) -> pd.DataFrame:
    out = frame.copy()
    out["p10"] = frame["p50"] - (frame["p50"] - frame["p10"]) * scale
    out["p90"] = frame["p50"] + (frame["p90"] - frame["p50"]) * scale
    return finalise_quantiles(out)


def calibrate_intervals(
    model_input: pd.DataFrame,
    calibrate: bool,
    target_coverage: float,
    ensemble_members: list[str],
    *backtests: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scales each model's p10-p90 interval per metric to cover ``target_coverage`` of actuals.

    The scale is a conformal factor: the ``target_coverage`` quantile of how far each actual lies outside
    (or inside) the interval, relative to its half-width. The backtest itself is cross-fitted — fold ``k``
    is rescaled with the factor of the other folds only — so its coverage stays an honest estimate; the
    factor of all folds is what ``assemble_forecasts`` applies to the final forecasts.

    Args:
        model_input: Output of ``prepare_model_input`` (the actuals).
        calibrate: ``params:modelling.calibrate_intervals``; False keeps every interval as the model made it.
        target_coverage: ``params:modelling.target_coverage`` (0.8 for p10-p90).
        ensemble_members: ``params:modelling.ensemble_members``: models whose equal-weight mean is scored
            (and selectable) as the model ``ensemble`` on the folds they share; empty for none.
        *backtests: Backtest forecasts of every model.

    Returns:
        The (cross-fitted) calibrated backtest forecasts with ``y`` and ``is_observed`` joined, and
        ``model, metric, scale`` for the final forecasts.
    """
    frames = [b for b in backtests if len(b)]
    if not frames:
        raise ValueError("no backtest forecasts: enable at least one model")
    backtest = pd.concat(frames, ignore_index=True)
    keys = ["unique_id", "metric", "fold", "origin", "ds"]
    backtest = pd.concat([backtest, _ensemble(backtest, ensemble_members, keys)], ignore_index=True).merge(
        model_input[["unique_id", "ds", "y", "is_observed", "server_id", "archetype"]], on=["unique_id", "ds"]
    )
    scales, parts = [], []
    for (model, metric), group in backtest.groupby(["model", "metric"], sort=True):
        observed = group["is_observed"].to_numpy(bool)
        ratio = _interval_ratio(group, group["y"].to_numpy())
        if not calibrate:
            scales.append({"model": model, "metric": metric, "scale": 1.0})
            parts.append(group)
            continue
        scales.append(
            {"model": model, "metric": metric, "scale": float(np.quantile(ratio[observed], target_coverage))}
        )
        fold_scale = np.ones(len(group))
        fold_values = group["fold"].to_numpy()
        for fold in np.unique(fold_values):
            others = observed & (fold_values != fold)
            if others.any():
                fold_scale[fold_values == fold] = np.quantile(ratio[others], target_coverage)
        parts.append(_scale_interval(group, fold_scale))
    scale_table = pd.DataFrame(scales)
    logger.info("Interval scales per model and metric:\n%s", scale_table.to_string(index=False))
    return pd.concat(parts, ignore_index=True), scale_table


def _in_sample_scale(model_input: pd.DataFrame, origins: pd.DataFrame, season_length: int) -> pd.DataFrame:
    """Mean absolute seasonal-naive error of each series up to each origin (the MASE denominator)."""
    frame = model_input[["unique_id", "ds", "y", "is_observed"]].sort_values(["unique_id", "ds"])
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


def select_models(model_metrics: pd.DataFrame, selection_metric: str, pooling: float) -> pd.DataFrame:
    """Picks, per server and metric, the model with the lowest expected backtest ``selection_metric``.

    A series' own mean score over a few 90-day folds is a noisy estimate: picking the per-series winner
    mostly picks noise. The expected score is therefore partially pooled — ``pooling`` of it is the
    model's mean over the servers of the same archetype and metric, the rest the series' own mean — so a
    model wins a series on its own evidence only when that evidence is strong. Only folds that every model
    was backtested on count; ties go to the model listed first alphabetically.

    Args:
        model_metrics: Output of ``evaluate_backtests``.
        selection_metric: Score column to minimise (``params:modelling.selection_metric``, e.g. ``mase``).
        pooling: ``params:modelling.selection_pooling`` in [0, 1]: 0 trusts each series' own scores only,
            1 makes one choice per archetype and metric.

    Returns:
        ``server_id, metric, model, <selection_metric>, expected_<selection_metric>``: one row per server
        and metric, with the series' own mean score and the pooled one it was chosen by.
    """
    if selection_metric not in model_metrics.columns:
        raise ValueError(f"selection_metric {selection_metric!r} is not a model_metrics column")
    if not 0 <= pooling <= 1:
        raise ValueError(f"selection pooling must be within [0, 1], got {pooling}")
    common = _common_folds(model_metrics)
    keys = ["server_id", "metric", "archetype", "model"]
    means = common.groupby(keys, as_index=False)[selection_metric].mean().dropna(subset=[selection_metric])
    pooled = means.groupby(["archetype", "metric", "model"])[selection_metric].transform("mean")
    expected = f"expected_{selection_metric}"
    means[expected] = (1 - pooling) * means[selection_metric] + pooling * pooled
    means = means.sort_values(["server_id", "metric", expected, "model"], kind="stable")
    selection = means.drop_duplicates(["server_id", "metric"]).reset_index(drop=True)
    logger.info("Selected models: %s", selection["model"].value_counts().to_dict())
    return selection[["server_id", "metric", "model", selection_metric, expected]]


def _cross_validated_selection(
    model_metrics: pd.DataFrame, selection_metric: str, pooling: float
) -> pd.DataFrame:
    """Scores of the selection rule itself: each fold scored with the models chosen on the others."""
    common = _common_folds(model_metrics)
    folds = sorted(common["fold"].unique())
    if len(folds) < 2:
        return pd.DataFrame()
    picked = []
    for fold in folds:
        choice = select_models(common[common["fold"] != fold], selection_metric, pooling)[
            ["server_id", "metric", "model"]
        ]
        picked.append(common[common["fold"] == fold].merge(choice, on=["server_id", "metric", "model"]))
    return pd.concat(picked, ignore_index=True).assign(model="selected")


def _summarise(metrics: pd.DataFrame, by: list[str]) -> list[dict[str, Any]]:
    columns = [c for c in metrics.columns if c in _SCORES or c.removeprefix("eoq_") in _SCORES]
    table = metrics.groupby(by, as_index=False)[columns].mean().sort_values([*by[:-1], "mase"])
    return [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        for r in table.to_dict("records")
    ]


def rank_models(
    model_metrics: pd.DataFrame, selection_metric: str, pooling: float, *backtest_stats: dict[str, Any]
) -> dict[str, Any]:
    """Builds the leaderboard: models by backtest MASE, with coverage and fit time.

    The ``selected`` row scores the per-series selection honestly: each fold is scored with the models
    chosen on the other folds (on the folds all models share).

    Args:
        model_metrics: Output of ``evaluate_backtests``.
        selection_metric: ``params:modelling.selection_metric``.
        pooling: ``params:modelling.selection_pooling`` (see ``select_models``).
        *backtest_stats: Timing of each model's backtest (``fit_seconds``, ``series_per_second``).

    Returns:
        ``{"models": [...], "by_archetype": [...], "by_metric": [...], "common_folds": [...]}``: records
        sorted by MASE; ``models`` also carries ``folds``, ``fit_seconds`` and ``series_per_second``.
    """
    common = _common_folds(model_metrics)
    scored = pd.concat(
        [common, _cross_validated_selection(model_metrics, selection_metric, pooling)], ignore_index=True
    )
    overall = _summarise(scored, ["model"])
    timing = {s["model"]: s for s in backtest_stats}
    for record in overall:
        stats = timing.get(record["model"], {})
        record.update({k: stats.get(k) for k in ("folds", "fit_seconds", "series_per_second")})
    leaderboard = {
        "models": overall,
        "by_archetype": _summarise(scored, ["archetype", "model"]),
        "by_metric": _summarise(scored, ["metric", "model"]),
        "common_folds": sorted(int(f) for f in common["fold"].unique()),
    }
    table = pd.DataFrame(overall)[["model", "mase", "smape", "coverage", "fit_seconds"]]
    logger.info("Model leaderboard:\n%s", table.to_string(index=False))
    return leaderboard


def assemble_forecasts(
    model_selection: pd.DataFrame,
    interval_scales: pd.DataFrame,
    ensemble_members: list[str],
    *forecasts: pd.DataFrame,
) -> pd.DataFrame:
    """Stacks every model's final forecast, applies the backtest interval scales and flags the selected model.

    Args:
        model_selection: Output of ``select_models``.
        interval_scales: ``model, metric, scale`` from ``calibrate_intervals``.
        ensemble_members: ``params:modelling.ensemble_members`` (adds the ``ensemble`` model's forecast).
        *forecasts: Final forecasts of every model (``server_id, metric, date, model, p10, p50, p90``).

    Returns:
        ``server_id, metric, date, model, p10, p50, p90, is_selected`` with exactly one selected model per
        server and metric (the seasonal naive baseline where no model was scored).
    """
    frame = pd.concat([f for f in forecasts if len(f)], ignore_index=True)
    ensemble = _ensemble(frame, ensemble_members, ["server_id", "metric", "date"])
    frame = pd.concat([frame, ensemble[frame.columns]], ignore_index=True)
    scale = frame.merge(interval_scales, on=["model", "metric"], how="left")["scale"].fillna(1.0).to_numpy()
    frame = _scale_interval(frame, scale)
    chosen = model_selection[["server_id", "metric", "model"]].assign(is_selected=True)
    frame = frame.merge(chosen, on=["server_id", "metric", "model"], how="left")
    frame["is_selected"] = frame["is_selected"].fillna(False).astype(bool)
    unselected = ~frame.groupby(["server_id", "metric"])["is_selected"].transform("any")
    fallback = unselected & (frame["model"] == "seasonal_naive")
    frame.loc[fallback, "is_selected"] = True
    counts = frame[frame["is_selected"]].groupby(["server_id", "metric"])["model"].nunique()
    if (counts != 1).any() or len(counts) != frame.groupby(["server_id", "metric"]).ngroups:
        raise ValueError("every server and metric needs exactly one selected model")
    frame = frame.sort_values(["server_id", "metric", "model", "date"], ignore_index=True)
    return frame[[*_FORECAST_COLUMNS, "is_selected"]]
