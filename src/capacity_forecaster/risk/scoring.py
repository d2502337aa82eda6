"""Per-series risk from the forecasts and the recent history: peaks, days to breach, breach probabilities,
the recent-days rule, staleness and the tier.

Days count from the fleet's analysis date (``capacity_forecaster.freshness.analysis_date``): day 1 is the day
after it. Each series' forecast days inside ``(analysis date, analysis date + horizon]`` count; a series that
ended a few days early (ragged ends) forecasts some days that are already past, and those are left out.
"""

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.freshness import analysis_date, find_stale_servers, last_observed_days
from capacity_forecaster.schema import QUANTILES, RISK_LEVELS

from .breach import (
    assign_tiers,
    breach_probabilities,
    combine_breach,
    first_day_above,
    history_breach_probability,
    latent_thresholds,
    median_breach_day,
    recent_days_above,
    server_tiers,
)
from .dependence import rho_for
from .tables import dates_of, day_numbers, require_columns, series_codes

logger = logging.getLogger(__name__)

FORECAST_COLUMNS = ("server_id", "metric", "date", "model", *QUANTILES, "is_selected")


def select_forecasts(forecasts: pd.DataFrame, forecast_model: str) -> pd.DataFrame:
    """The ``is_selected`` rows (``"selected"``) or the rows of one model, with clear errors when none."""
    require_columns(forecasts, FORECAST_COLUMNS, "forecasts")
    if forecasts.empty:
        raise ValueError(
            "forecasts is empty: run the modelling pipeline (or point the catalog at its output) first"
        )
    if forecast_model == "selected":
        rows = forecasts[forecasts["is_selected"].fillna(False).astype(bool)]
        what = "is_selected rows"
    else:
        rows = forecasts[forecasts["model"].astype("str") == forecast_model]
        what = f"rows of model {forecast_model!r}"
    if rows.empty:
        models = sorted(forecasts["model"].astype("str").unique())
        raise ValueError(
            f"forecasts has no {what} (models present: {models}); check params:risk_analysis.forecast_model"
        )
    return rows


def breach_columns(
    grids: dict[str, np.ndarray], rho: np.ndarray, threshold: float, min_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of >= ``min_days`` days above ``threshold`` per row and the median breach day (0: none)."""
    z = latent_thresholds(grids["p10"], grids["p50"], grids["p90"], threshold)
    probability, cumulative = breach_probabilities(z, rho, min_days)
    return probability, median_breach_day(cumulative)


def _last_days_frame(silent: pd.DataFrame, today: int) -> pd.DataFrame:
    """A history with only each server's last observed day (NaN for none) and the analysis date.

    ``find_stale_servers`` reads nothing else, so it gives the same answer on this frame as on the whole
    history, without a second pass over millions of rows.
    """
    last, analysis_day = silent["last_day"], dates_of(np.array([today]))[0]
    frame = pd.DataFrame(
        {
            "server_id": silent["server_id"].to_numpy(),
            "date": last.fillna(analysis_day).to_numpy(),
            "value": np.where(last.notna(), 0.0, np.nan),
        }
    )
    # an unobserved value on the analysis date keeps the fleet's last day without changing anyone's last value
    today_row = frame.head(1).assign(date=analysis_day, value=np.nan)
    return pd.concat([frame, today_row], ignore_index=True)


def _observed(clean: pd.DataFrame) -> pd.DataFrame:
    keep = clean["value"].notna()
    if "is_imputed" in clean.columns:
        keep &= ~clean["is_imputed"].fillna(False).astype(bool)
    return clean.loc[keep]


def _window_rows(
    clean: pd.DataFrame, keys: pd.DataFrame, last_day: int, window_days: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Observed rows of ``keys``' series in the ``window_days`` days up to day number ``last_day``, and the
    row of ``keys`` (``server_id``, ``metric``) each belongs to."""
    first, last = dates_of(np.array([last_day - window_days + 1, last_day]))
    dates = pd.to_datetime(clean["date"])
    recent = _observed(clean.loc[(dates >= first) & (dates < last + pd.Timedelta(days=1))])
    index = pd.MultiIndex.from_frame(keys[["server_id", "metric"]].astype("str"))
    position = index.get_indexer(
        pd.MultiIndex.from_arrays([recent["server_id"].astype("str"), recent["metric"].astype("str")])
    )
    inside = position >= 0
    return recent.loc[inside], position[inside]


def count_recent_days(
    clean: pd.DataFrame, keys: pd.DataFrame, last_day: int, window_days: int, thresholds: dict[str, float]
) -> dict[str, np.ndarray]:
    """Observed days above each threshold in the ``window_days`` days up to day number ``last_day``.

    Returns:
        Per threshold label, the count for each row of ``keys`` (``server_id``, ``metric``).
    """
    recent, position = _window_rows(clean, keys, last_day, window_days)
    values = recent["value"].to_numpy(float)
    return {
        label: recent_days_above(values, position, len(keys), threshold)
        for label, threshold in thresholds.items()
    }


def count_recent_episodes(  # noqa: PLR0913, PLR0917 - the window, then the rule's settings
    clean: pd.DataFrame,
    keys: pd.DataFrame,
    last_day: int,
    window_days: int,
    thresholds: dict[str, float],
    min_days: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Episodes above each threshold in the ``window_days`` days up to day number ``last_day``.

    An episode is a run of consecutive observed days above the threshold holding at least ``min_days`` days
    (a breach on its own); a run that began before the window counts with its days inside it.

    Returns:
        Per threshold label, the episodes of each row of ``keys`` (``server_id``, ``metric``), and the
        observed days of each row in the window.
    """
    recent, position = _window_rows(clean, keys, last_day, window_days)
    day, values = day_numbers(recent["date"]), recent["value"].to_numpy(float)
    order = np.lexsort((day, position))
    position, day, values = position[order], day[order], values[order]
    observed = np.bincount(position, minlength=len(keys))
    follows = np.r_[False, (position[1:] == position[:-1]) & (day[1:] == day[:-1] + 1)]
    episodes = {}
    for label, threshold in thresholds.items():
        above = values > threshold
        starts = above & ~(follows & np.r_[False, above[:-1]])
        run = np.cumsum(starts)  # run number of each day above (days below are ignored)
        length = np.bincount(run[above], minlength=run[-1] + 1 if len(run) else 1)
        long_enough = starts & (length[run] >= min_days)
        episodes[label] = np.bincount(position[long_enough], minlength=len(keys))
    return episodes, observed


def _history_days(
    rows: pd.DataFrame, codes: np.ndarray, keys: pd.DataFrame, clean: pd.DataFrame
) -> np.ndarray:
    """Observed days behind each series: the forecasts' ``history_days`` when given, else counted in clean."""
    if "history_days" in rows.columns:
        days = pd.Series(rows["history_days"].to_numpy()).groupby(codes).first()
        return days.reindex(range(len(keys))).to_numpy(dtype=float)
    counts = _observed(clean).groupby(["server_id", "metric"], observed=True).size()
    counts.index = counts.index.set_levels([level.astype("str") for level in counts.index.levels])
    index = pd.MultiIndex.from_frame(keys[["server_id", "metric"]])
    return counts.reindex(index).to_numpy(dtype=float)


def _series_ids(rows: pd.DataFrame, clean: pd.DataFrame, stale_ids: set[str]) -> tuple[pd.Series, pd.Series]:
    """Server and metric of every forecast row, then of each stale server's series that has no forecast.

    Stale servers stay in the register even when modelling gave them no forecast.
    """
    server_ids, metrics = rows["server_id"], rows["metric"]
    if stale_ids:
        history = clean.loc[clean["server_id"].isin(stale_ids), ["server_id", "metric"]].astype("str")
        known = pd.MultiIndex.from_arrays([server_ids.astype("str"), metrics.astype("str")]).unique()
        extra = history.drop_duplicates()
        extra = extra[~pd.MultiIndex.from_frame(extra).isin(known)]
        server_ids = pd.concat([server_ids.astype("str"), extra["server_id"]], ignore_index=True)
        metrics = pd.concat([metrics.astype("str"), extra["metric"]], ignore_index=True)
    return server_ids, metrics


def score_series(  # noqa: PLR0913, PLR0914, PLR0915, PLR0917 - one argument per parameter leaf
    forecasts: pd.DataFrame,
    clean_server_metrics: pd.DataFrame,
    dependence: dict[str, Any],
    forecast_model: str,
    basis: str,
    thresholds: dict[str, float],
    cutoffs: dict[str, float],
    horizon: int,
    near_term_days: int,
    breach_min_days: int,
    recent_window_days: int,
    recent_min_days: int,
    stale_after_days: int,
    calendar: dict[str, Any],
    exceedance_window_days: int,
) -> pd.DataFrame:
    """Scores every series; see ``pipelines.risk_analysis.nodes.score_forecast_risk`` for the columns.

    ``thresholds`` has ``high``, ``very_high``, ``underutilized`` (%), ``cutoffs`` has ``high`` and
    ``very_high`` (probabilities); ``calendar`` holds ``country``, ``month_end_business_days`` and
    ``quarter_end_business_days``. The breach probabilities are the larger of the forecast's and the rate of
    episodes above the threshold in the last ``exceedance_window_days`` days (``breach.combine_breach``).
    """
    high, very_high = thresholds["high"], thresholds["very_high"]
    rows = select_forecasts(forecasts, forecast_model)
    require_columns(clean_server_metrics, ("server_id", "metric", "date", "value"), "clean_server_metrics")
    if clean_server_metrics.empty:
        raise ValueError("clean_server_metrics is empty: run the etl pipeline first")
    today = int(day_numbers(pd.Series([analysis_date(clean_server_metrics)]))[0])
    silent = last_observed_days(clean_server_metrics)
    stale = find_stale_servers(_last_days_frame(silent, today), stale_after_days)
    stale_ids = set(stale["server_id"].astype("str"))
    server_ids, metrics = _series_ids(rows, clean_server_metrics, stale_ids)
    all_codes, keys = series_codes(server_ids, metrics)
    codes = all_codes[: len(rows)]

    day = day_numbers(rows["date"])
    offset = day - today - 1  # 0 = the day after the analysis date = day 1
    inside = (offset >= 0) & (offset < horizon)
    past = int((offset < 0).sum())
    if past:
        logger.info(
            "%d forecast rows fall on or before the analysis date %s (series that ended early): left out",
            past,
            dates_of(np.array([today]))[0].date(),
        )
    cells = np.bincount(codes[inside] * horizon + offset[inside], minlength=len(keys) * horizon)
    if len(cells) and cells.max() > 1:
        cell = int(cells.argmax())
        raise ValueError(
            f"forecasts has {int((cells > 1).sum())} (server_id, metric, date) with more than one row for "
            f"forecast_model={forecast_model!r}, e.g. {keys.iloc[cell // horizon].tolist()} on day "
            f"{cell % horizon + 1}: exactly one model per server and metric must be selected"
        )
    grids = {}
    for column in QUANTILES:
        grid = np.full((len(keys), horizon), np.nan)
        grid[codes[inside], offset[inside]] = rows[column].to_numpy(dtype=float)[inside]
        grids[column] = grid
    forecast_days = np.bincount(codes[inside], minlength=len(keys))
    short = (forecast_days < horizon) & (forecast_days > 0)
    if short.any():
        logger.warning(
            "%d of %d series have fewer than %d forecast days after the analysis date; their tiers use the "
            "days present",
            short.sum(),
            len(keys),
            horizon,
        )
    model = pd.Series(rows["model"].astype("str").to_numpy()).groupby(codes).first().reindex(range(len(keys)))

    def days_and_dates(grid: np.ndarray, threshold: float) -> tuple[pd.Series, pd.Series]:
        days = first_day_above(grid, threshold)
        return pd.Series(days, dtype="Int64").where(days > 0), dates_of(today + days).where(days > 0)

    out = keys.assign(
        analysis_date=dates_of(np.full(len(keys), today)),
        model=model.to_numpy(dtype=object),
        forecast_days=forecast_days,
        history_days=_history_days(rows, codes, keys, clean_server_metrics),
    )
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows of series without forecast days
        for quantile in ("p50", "p90"):
            out[f"peak_{quantile}_near"] = np.nanmax(grids[quantile][:, :near_term_days], axis=1)
            out[f"peak_{quantile}_horizon"] = np.nanmax(grids[quantile], axis=1)
            out[f"mean_{quantile}"] = np.nanmean(grids[quantile], axis=1)
            for label, threshold in (("80", high), ("90", very_high)):
                out[f"days_to_{label}_{quantile}"] = days_and_dates(grids[quantile], threshold)[0]
        peak, mean = np.nanmax(grids[basis], axis=1), np.nanmean(grids[basis], axis=1)
    out["basis"] = basis
    out["projected_utilization"] = peak
    out["projected_mean"] = mean
    out["days_to_80"], out["first_date_above_80"] = days_and_dates(grids[basis], high)
    out["days_to_90"], out["first_date_above_90"] = days_and_dates(grids[basis], very_high)

    rho = rho_for(dependence, out["metric"])
    out["breach_correlation"] = rho
    episodes, observed = count_recent_episodes(
        clean_server_metrics, keys, today, exceedance_window_days, {"80": high, "90": very_high},
        breach_min_days,
    )  # fmt: skip
    for label, threshold in (("80", high), ("90", very_high)):
        model = breach_columns(grids, rho, threshold, breach_min_days)
        history = history_breach_probability(episodes[label], observed, forecast_days)
        probability, median_day = combine_breach(model, history)
        out[f"prob_above_{label}_forecast"] = model[0].round(4)
        out[f"prob_above_{label}_history"] = history[0].round(4)
        out[f"prob_above_{label}"] = probability.round(4)
        out[f"expected_breach_date_{label}"] = dates_of(today + median_day).where(median_day > 0)
    recent = count_recent_days(
        clean_server_metrics, keys, today, recent_window_days, {"80": high, "90": very_high}
    )
    for label, counts in recent.items():
        out[f"recent_days_above_{label}"] = counts.astype("int64")

    _flag_calendar(out, calendar)
    out["risk_level"] = pd.Series(
        assign_tiers(
            out["prob_above_80"].to_numpy(),
            out["prob_above_90"].to_numpy(),
            out["recent_days_above_80"].to_numpy() >= recent_min_days,
            out["recent_days_above_90"].to_numpy() >= recent_min_days,
            # a history too short for a model (the fallback forecast) says too little to consolidate on
            np.where(out["model"].to_numpy() == "fallback", np.nan, mean),
            cutoffs["high"],
            cutoffs["very_high"],
            thresholds["underutilized"],
        ),
        dtype="object",
    )
    silent = silent.assign(server_id=silent["server_id"].astype("str")).set_index("server_id")
    out["stale"] = out["server_id"].isin(stale_ids)
    out["last_day"] = out["server_id"].map(silent["last_day"]).astype("datetime64[ns]")
    out["days_silent"] = out["server_id"].map(silent["days_silent"]).astype("Int64")
    blank = out["stale"].to_numpy()
    out.loc[blank, [c for c in out.columns if c.startswith("prob_above_")]] = np.nan
    for column in (
        "expected_breach_date_80",
        "expected_breach_date_90",
        "first_date_above_80",
        "first_date_above_90",
    ):
        out.loc[blank, column] = pd.NaT
    for column in ("days_to_80", "days_to_90"):
        out.loc[blank, column] = pd.NA
    out.loc[blank, "risk_level"] = None
    if blank.any():
        logger.warning(
            "%d server(s) stopped reporting more than %d days before %s: stale, not tiered",
            len(stale_ids),
            stale_after_days,
            dates_of(np.array([today]))[0].date(),
        )
    out["server_risk_level"] = server_tiers(out["server_id"], out["risk_level"])
    counts = (
        out.drop_duplicates("server_id")["server_risk_level"]
        .value_counts()
        .reindex(RISK_LEVELS, fill_value=0)
    )
    logger.info(
        "Scored %d series of %d servers (%s, breach probability cut-offs %s): server tiers %s, %d stale",
        len(out),
        out["server_id"].nunique(),
        forecast_model,
        cutoffs,
        counts.to_dict(),
        len(stale_ids),
    )
    return out


def _flag_calendar(out: pd.DataFrame, calendar: dict[str, Any]) -> None:
    """Adds whether the first day above the high threshold falls in a quarter-end, month-end or holiday."""
    breach = out["first_date_above_80"]
    out["breach_in_quarter_end"] = False
    out["breach_in_month_end"] = False
    out["breach_on_holiday"] = False
    if breach.notna().any():
        days = calendar_features(pd.DatetimeIndex(breach.dropna().unique()), **calendar).set_index("date")
        for flag, column in (
            ("breach_in_quarter_end", "is_end_of_quarter"),
            ("breach_in_month_end", "is_month_end"),
            ("breach_on_holiday", "is_holiday"),
        ):
            out[flag] = breach.map(days[column]).fillna(False).astype(bool)
