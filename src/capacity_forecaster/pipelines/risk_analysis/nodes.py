"""risk_analysis nodes: risk tiers and days to breach from the forecasts, utilisation profiles and K-Means
clusters from the clean history, a consolidation plan with savings, the risk register, its summary and its
evaluation against the generator's ground truth.

Every threshold is a percentage of capacity. Days are counted from the analysis date (the last clean day, i.e.
the day before a series' first forecast day), so the first forecast day is day 1.
"""

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from threadpoolctl import threadpool_limits

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.schema import METRICS, QUANTILES, RISK_LEVELS

logger = logging.getLogger(__name__)

_SEVERITY = {level: rank for rank, level in enumerate(RISK_LEVELS)}
_ACTIONS = {
    "very_high": "upgrade now",
    "high": "plan upgrade",
    "normal": "monitor",
    "underutilized": "consolidate",
}
_AT_RISK = ("very_high", "high")
_FORECAST_COLUMNS = ("server_id", "metric", "date", "model", *QUANTILES, "is_selected")
_CLEAN_COLUMNS = ("server_id", "metric", "date", "value")
_INVENTORY_COLUMNS = ("server_id", "vcpus", "memory_gb", "hourly_cost_usd")
_TRUTH_COLUMNS = ("server_id", "metric", "risk_level", "days_to_80", "days_to_90")
_SIZING_METRICS = {"cpu": "cpu_p95", "memory": "memory_p95"}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")


def _check_thresholds(high: float, very_high: float, underutilized: float) -> None:
    if not 0 <= underutilized < high < very_high <= 100:  # noqa: PLR2004 - percentages
        raise ValueError(
            "risk_analysis thresholds out of order: need 0 <= underutilized_threshold < high_threshold < "
            f"very_high_threshold <= 100, got underutilized_threshold={underutilized}, "
            f"high_threshold={high}, very_high_threshold={very_high}"
        )


def _series_codes(server_id: pd.Series, metric: pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
    """Numbers the (server_id, metric) series of a long frame.

    Returns:
        The series code of every row, and the keys of each code (sorted by server, then METRICS order).
    """
    server_codes, servers = pd.factorize(server_id, sort=True)
    metric_codes, metrics = pd.factorize(metric)
    known = {metric: rank for rank, metric in enumerate(METRICS)}
    order = sorted(range(len(metrics)), key=lambda i: (known.get(metrics[i], len(METRICS)), str(metrics[i])))
    rank = np.empty(len(metrics), dtype=np.int64)
    rank[order] = np.arange(len(metrics))
    combined = server_codes.astype(np.int64) * len(metrics) + rank[metric_codes]
    present = np.flatnonzero(np.bincount(combined, minlength=len(servers) * len(metrics)))
    dense = np.zeros(len(servers) * len(metrics), dtype=np.int64)
    dense[present] = np.arange(len(present))
    keys = pd.DataFrame(
        {
            "server_id": np.asarray(servers, dtype=object)[present // len(metrics)],
            "metric": np.asarray(metrics, dtype=object)[np.asarray(order)[present % len(metrics)]],
        }
    ).astype({"server_id": "str", "metric": "str"})
    return dense[combined], keys


def _day_numbers(dates: pd.Series) -> np.ndarray:
    """Days since 1970-01-01 of a datetime column (time of day dropped)."""
    values = pd.to_datetime(dates).to_numpy()
    unit, count = np.datetime_data(values.dtype)
    return values.view(np.int64) // (np.timedelta64(1, "D") // np.timedelta64(count, unit))


def _first_day_above(grid: np.ndarray, threshold: float) -> np.ndarray:
    """Day number (1 = first column) of the first value above ``threshold`` in each row, 0 if none."""
    above = grid > threshold
    return np.where(above.any(axis=1), above.argmax(axis=1) + 1, 0)


def _tiers(
    peak: np.ndarray, mean: np.ndarray, high: float, very_high: float, underutilized: float
) -> np.ndarray:
    """The tier rule shared with the generator's truth: very_high > high > underutilized (mean) > normal."""
    return np.select(
        [peak > very_high, peak > high, mean < underutilized],
        ["very_high", "high", "underutilized"],
        "normal",
    )


def _server_tiers(server_id: pd.Series, risk_level: pd.Series) -> pd.Series:
    """Each row's server tier: its most severe metric tier (underutilized only when all metrics are)."""
    severity = risk_level.map(_SEVERITY)
    worst = severity.groupby(server_id.to_numpy()).transform("min")
    return worst.map(dict(enumerate(RISK_LEVELS))).astype("str")


def _select_forecasts(forecasts: pd.DataFrame, forecast_model: str) -> pd.DataFrame:
    _require(forecasts, _FORECAST_COLUMNS, "forecasts")
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


def score_forecast_risk(  # noqa: PLR0914, PLR0915, PLR0917 - one argument per parameter leaf
    forecasts: pd.DataFrame,
    forecast_model: str,
    basis: str,
    high_threshold: float,
    very_high_threshold: float,
    underutilized_threshold: float,
    horizon: int,
    near_term_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Scores every server and metric on its forecast: peaks, days to breach, breach calendar and risk tier.

    Args:
        forecasts: The ``forecasts`` table (one row per server, metric, day and model).
        forecast_model: ``"selected"`` for the ``is_selected`` rows, or a model name (e.g. a canvas forecast).
        basis: Quantile column the tiers and ``days_to_80``/``days_to_90`` use (``p50`` or ``p90``).
        high_threshold: Tier ``high`` when the basis exceeds this % within the horizon (80).
        very_high_threshold: Tier ``very_high`` when the basis exceeds this % within the horizon (90).
        underutilized_threshold: Tier ``underutilized`` when the basis averages below this % (40).
        horizon: Days ahead that count (``params:horizon``).
        near_term_days: The short window of the ``*_near`` peaks (30).
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window length (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).

    Returns:
        One row per server and metric with ``analysis_date``, ``model``, ``forecast_days``, ``peak_p50_near``,
        ``peak_p90_near``, ``peak_p50_horizon``, ``peak_p90_horizon``, ``mean_p50``, ``mean_p90``,
        ``days_to_80_p50``, ``days_to_90_p50``, ``days_to_80_p90``, ``days_to_90_p90``, ``basis``,
        ``projected_utilization`` and ``projected_mean`` (basis peak and mean over the horizon),
        ``days_to_80``/``days_to_90`` and ``first_date_above_80``/``first_date_above_90`` (basis; "80" and
        "90" stand for the high and very-high thresholds), ``breach_in_quarter_end``, ``breach_on_holiday``
        and
        ``breach_in_month_end`` (calendar of the first day above the high threshold), ``risk_level`` and
        ``server_risk_level``.
    """
    _check_thresholds(high_threshold, very_high_threshold, underutilized_threshold)
    if basis not in QUANTILES:
        raise ValueError(f"params:risk_analysis.basis must be one of {QUANTILES}, got {basis!r}")
    if horizon < 1 or not 1 <= near_term_days <= horizon:
        raise ValueError(
            f"need 1 <= near_term_days <= horizon, got near_term_days={near_term_days}, horizon={horizon}"
        )
    rows = _select_forecasts(forecasts, forecast_model)
    codes, keys = _series_codes(rows["server_id"], rows["metric"])
    day = _day_numbers(rows["date"])
    first_day = pd.Series(day).groupby(codes).min().to_numpy()
    offset = day - first_day[codes]  # 0 = first forecast day = day 1
    inside = offset < horizon
    cells = np.bincount(codes[inside] * horizon + offset[inside])
    if cells.max() > 1:
        cell = int(cells.argmax())
        raise ValueError(
            f"forecasts has {int((cells > 1).sum())} (server_id, metric, date) with more than one row for "
            f"forecast_model={forecast_model!r}, e.g. {keys.iloc[cell // horizon].tolist()} on day "
            f"{cell % horizon + 1}: "
            "exactly one model per server and metric must be selected"
        )
    grids = {}
    for column in {"p50", "p90", basis}:
        grid = np.full((len(keys), horizon), np.nan)
        grid[codes[inside], offset[inside]] = rows[column].to_numpy(dtype=float)[inside]
        grids[column] = grid
    forecast_days = np.bincount(codes[inside], minlength=len(keys))
    short = forecast_days < horizon
    if short.any():
        logger.warning(
            "%d of %d series have fewer than %d forecast days; their tiers use the days present",
            short.sum(),
            len(keys),
            horizon,
        )
    analysis_day = first_day - 1
    model = rows["model"].astype("str").groupby(codes).first().to_numpy()

    def days_and_dates(grid: np.ndarray, threshold: float) -> tuple[pd.Series, pd.Series]:
        days = _first_day_above(grid, threshold)
        when = (analysis_day + days).astype("datetime64[D]").astype("datetime64[ns]")
        return pd.Series(days, dtype="Int64").where(days > 0), pd.Series(when).where(days > 0)

    out = keys.assign(
        analysis_date=pd.Series(analysis_day.astype("datetime64[D]").astype("datetime64[ns]")),
        model=model,
        forecast_days=forecast_days,
    )
    with np.errstate(all="ignore"):
        for quantile in ("p50", "p90"):
            out[f"peak_{quantile}_near"] = np.nanmax(grids[quantile][:, :near_term_days], axis=1)
            out[f"peak_{quantile}_horizon"] = np.nanmax(grids[quantile], axis=1)
            out[f"mean_{quantile}"] = np.nanmean(grids[quantile], axis=1)
            for label, threshold in (("80", high_threshold), ("90", very_high_threshold)):
                out[f"days_to_{label}_{quantile}"] = days_and_dates(grids[quantile], threshold)[0]
        peak, mean = np.nanmax(grids[basis], axis=1), np.nanmean(grids[basis], axis=1)
    out["basis"] = basis
    out["projected_utilization"] = peak
    out["projected_mean"] = mean
    out["days_to_80"], out["first_date_above_80"] = days_and_dates(grids[basis], high_threshold)
    out["days_to_90"], out["first_date_above_90"] = days_and_dates(grids[basis], very_high_threshold)
    breach = out["first_date_above_80"]
    out["breach_in_quarter_end"] = False
    out["breach_in_month_end"] = False
    out["breach_on_holiday"] = False
    if breach.notna().any():
        calendar = calendar_features(
            pd.DatetimeIndex(breach.dropna().unique()),
            country,
            month_end_business_days,
            quarter_end_business_days,
        ).set_index("date")
        for flag, column in (
            ("breach_in_quarter_end", "is_end_of_quarter"),
            ("breach_in_month_end", "is_month_end"),
            ("breach_on_holiday", "is_holiday"),
        ):
            out[flag] = breach.map(calendar[column]).fillna(False).astype(bool)
    out["risk_level"] = _tiers(peak, mean, high_threshold, very_high_threshold, underutilized_threshold)
    out["server_risk_level"] = _server_tiers(out["server_id"], out["risk_level"])
    counts = (
        out.drop_duplicates("server_id")["server_risk_level"]
        .value_counts()
        .reindex(RISK_LEVELS, fill_value=0)
    )
    logger.info(
        "Scored %d series of %d servers on %s (%s): server tiers %s",
        len(out),
        out["server_id"].nunique(),
        basis,
        forecast_model,
        counts.to_dict(),
    )
    return out


def _grouped_means(
    codes: np.ndarray, values: np.ndarray, groups: np.ndarray, n_codes: int, n_groups: int
) -> np.ndarray:
    """Mean of ``values`` per code and group (``groups`` in ``0..n_groups-1``), NaN where there is none."""
    index = codes * n_groups + groups
    total = np.bincount(index, weights=values, minlength=n_codes * n_groups)
    count = np.bincount(index, minlength=n_codes * n_groups)
    with np.errstate(all="ignore"):
        return np.where(count > 0, total / count, np.nan).reshape(n_codes, n_groups)


def profile_utilisation(  # noqa: PLR0914, PLR0915, PLR0917 - one argument per parameter leaf
    clean_server_metrics: pd.DataFrame,
    profile_days: int,
    current_window_days: int,
    trend_window_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Summarises the recent history of every server and metric: current level, trend and utilisation shape.

    Args:
        clean_server_metrics: The clean long table (``server_id``, ``metric``, ``date``, ``value``).
        profile_days: Days of history behind the level, spread and shape figures. Windows end on each series'
            last day; only rows within the longest window of the fleet's last day are read, so a series that
            stopped reporting before that gets no profile.
        current_window_days: The current P95 level is the mean of this many last days.
        trend_window_days: The monthly growth trend is the least-squares slope over this many last days.
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window length (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).

    Returns:
        One row per server and metric: ``server_id``, ``metric``, ``last_date``, ``current_level``,
        ``monthly_trend`` (points per 30 days), ``level`` (mean over the profile window) and ``spread``
        (standard deviation around the weekday means: noise, not the weekly pattern),
        ``weekday_<mon..sun>`` (mean of each weekday / mean of the seven),
        ``month_end_uplift`` and ``quarter_end_uplift`` (points above ordinary business days in the
        month-end-only and end-of-quarter windows).
    """
    _require(clean_server_metrics, _CLEAN_COLUMNS, "clean_server_metrics")
    if min(profile_days, current_window_days, trend_window_days) < 1:
        raise ValueError("profile_days, current_window_days and trend_window_days must be >= 1")
    if clean_server_metrics.empty:
        raise ValueError("clean_server_metrics is empty: run the etl pipeline first")
    # Only the last days before the analysis date matter; cutting first keeps years of history cheap.
    all_days = _day_numbers(clean_server_metrics["date"])
    values = clean_server_metrics["value"].to_numpy(dtype=float)
    rows = (
        all_days > all_days.max() - max(profile_days, current_window_days, trend_window_days)
    ) & ~np.isnan(values)
    codes, keys = _series_codes(clean_server_metrics["server_id"][rows], clean_server_metrics["metric"][rows])
    n = len(keys)
    day = all_days[rows]
    value = values[rows]
    last_day = np.full(n, day.min())
    np.maximum.at(last_day, codes, day)
    age = last_day[codes] - day  # 0 = last day

    first_day = day.min()
    calendar = calendar_features(
        pd.date_range(pd.Timestamp(first_day, unit="D"), periods=day.max() - first_day + 1, freq="D"),
        country,
        month_end_business_days,
        quarter_end_business_days,
    )
    where = day - first_day
    quarter_end = calendar["is_end_of_quarter"].to_numpy()[where]
    month_end = calendar["is_month_end"].to_numpy()[where] & ~quarter_end
    recent = age < profile_days
    weekday = calendar["day_of_week"].to_numpy()[where]
    # Period-end windows are business days, so they are compared with ordinary business days:
    # 0 = outside the profile or a weekend, 1 = ordinary business day, 2 = month-end only, 3 = end of quarter
    period = np.where(recent & (weekday < 5), 1 + month_end + 2 * quarter_end, 0)
    periods = _grouped_means(codes, value, period, n, 4)
    ordinary = periods[:, 1]
    in_profile = _grouped_means(codes, value, recent.astype(np.int64), n, 2)[:, 1]
    squares = _grouped_means(codes, value**2, recent.astype(np.int64), n, 2)[:, 1]
    by_weekday = np.where(recent, weekday + 1, 0)
    weekly = _grouped_means(codes, value, by_weekday, n, 8)[:, 1:]
    # spread = standard deviation around each weekday's mean (noise, not the weekly pattern)
    weekday_share = np.bincount(codes * 8 + by_weekday, minlength=n * 8).reshape(n, 8)[:, 1:]
    with np.errstate(all="ignore"):
        weekday_share = weekday_share / weekday_share.sum(axis=1, keepdims=True)
        explained = np.nansum(weekday_share * weekly**2, axis=1)
    current = _grouped_means(codes, value, (age < current_window_days).astype(np.int64), n, 2)[:, 1]
    out = keys.assign(
        last_date=pd.Series(last_day.astype("datetime64[D]").astype("datetime64[ns]")),
        current_level=current,
    )
    trend_mask = age < trend_window_days
    x, y, tc = -age[trend_mask].astype(float), value[trend_mask], codes[trend_mask]
    sums = {
        name: np.bincount(tc, weights=w, minlength=n)
        for name, w in (("n", None), ("x", x), ("y", y), ("xx", x * x), ("xy", x * y))
    }
    with np.errstate(all="ignore"):
        denominator = sums["n"] * sums["xx"] - sums["x"] ** 2
        slope = (sums["n"] * sums["xy"] - sums["x"] * sums["y"]) / denominator
        out["monthly_trend"] = np.where(denominator > 0, slope * 30.0, np.nan)
        out["level"] = in_profile
        out["spread"] = np.sqrt(np.maximum(squares - explained, 0.0))
        weekly_mean = np.nanmean(weekly, axis=1, keepdims=True)
        shape = np.where(weekly_mean > 1.0, weekly / weekly_mean, 1.0)  # flat for series that are ~0 %
    for d, name in enumerate(_WEEKDAYS):
        out[f"weekday_{name}"] = np.where(np.isnan(shape[:, d]), 1.0, shape[:, d])
    out["month_end_uplift"] = periods[:, 2] - ordinary
    out["quarter_end_uplift"] = periods[:, 3] - ordinary
    logger.info(
        "Profiled %d series of %d servers over up to %d days", n, out["server_id"].nunique(), profile_days
    )
    return out


def _server_features(utilisation_profiles: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One row per server: level, spread and period-end uplift per metric, and the mean weekly shape."""
    per_metric = utilisation_profiles.pivot_table(
        index="server_id",
        columns="metric",
        values=["level", "spread", "month_end_uplift", "quarter_end_uplift"],
        aggfunc="first",
    )
    metrics = [m for m in METRICS if m in per_metric.columns.get_level_values(1)]
    metrics += sorted(set(per_metric.columns.get_level_values(1)) - set(metrics))
    features = pd.DataFrame(index=per_metric.index)
    groups: dict[str, list[str]] = {"level": [], "spread": [], "weekly": [], "period_end": []}
    for kind, group in (
        ("level", "level"),
        ("spread", "spread"),
        ("month_end_uplift", "period_end"),
        ("quarter_end_uplift", "period_end"),
    ):
        for metric in metrics:
            name = f"{kind}_{metric}"
            features[name] = per_metric[(kind, metric)]
            groups[group].append(name)
    weekly = utilisation_profiles.groupby("server_id")[[f"weekday_{d}" for d in _WEEKDAYS]].mean()
    features = features.join(weekly)
    groups["weekly"] = list(weekly.columns)
    return features, groups


def _describe_cluster(centroid: pd.Series) -> str:
    """Words for a cluster centroid in original units, e.g. "low utilisation (cpu 9 %, ...), flat week"."""
    levels = {c.removeprefix("level_"): centroid[c] for c in centroid.index if c.startswith("level_")}
    mean_level = float(np.nanmean(list(levels.values())))
    word = (
        "idle"
        if mean_level < 15
        else "low"
        if mean_level < 35  # noqa: PLR2004 - % bands for words
        else "moderate"
        if mean_level < 60
        else "high"
    )  # noqa: PLR2004
    spread = float(np.nanmean([centroid[c] for c in centroid.index if c.startswith("spread_")]))
    steadiness = "steady" if spread < 5 else "variable" if spread < 10 else "volatile"  # noqa: PLR2004
    top = max(levels, key=lambda m: levels[m])
    shown = ", ".join(f"{m.removesuffix('_p95')} {levels[m]:.0f} %" for m in levels)
    parts = [f"{steadiness} {word} utilisation ({shown})"]
    if word != "idle" and levels[top] - mean_level > 10:  # noqa: PLR2004
        parts.append(f"{top.removesuffix('_p95')}-heavy")
    weekend = (
        centroid[["weekday_sat", "weekday_sun"]].mean()
        / centroid[[f"weekday_{d}" for d in _WEEKDAYS[:5]]].mean()
    )
    week = (
        "weekday-heavy (weekend dip)"
        if weekend < 0.8
        else "slight weekend dip"
        if weekend < 0.95
        else "flat week"
    )
    parts.append("weekend peaks" if weekend > 1.04 else week)

    for kind, label in (("quarter_end_uplift", "quarter-end"), ("month_end_uplift", "month-end")):
        uplift = {c.removeprefix(f"{kind}_"): centroid[c] for c in centroid.index if c.startswith(f"{kind}_")}
        metric = max(uplift, key=lambda m: np.nan_to_num(uplift[m], nan=-np.inf))
        if np.nan_to_num(uplift[metric]) >= 3:  # noqa: PLR2004 - points
            parts.append(f"{label} peaks (+{uplift[metric]:.0f} pts {metric.removesuffix('_p95')})")
    return ", ".join(parts)


def cluster_servers(  # noqa: PLR0914, PLR0917 - one argument per parameter leaf
    utilisation_profiles: pd.DataFrame,
    server_inventory: pd.DataFrame,
    k_min: int,
    k_max: int,
    sample_size: int,
    random_seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Groups servers by utilisation profile with K-Means (k by silhouette) and describes each cluster.

    Features per server: level and spread of every metric, the weekly shape and the month-end and
    end-of-quarter uplifts. Each feature is standardised and each of the four groups (level, spread,
    weekly, period end) is
    scaled to the same total weight. Cluster numbers go from the lowest mean level (0) up.

    Args:
        utilisation_profiles: Output of ``profile_utilisation``.
        server_inventory: Inventory; its ``archetype`` column, when present, gives the adjusted Rand index.
        k_min: Smallest number of clusters tried (>= 2).
        k_max: Largest number of clusters tried (capped at the number of servers - 1).
        sample_size: Servers sampled (at random) to choose k: K-Means and its silhouette score are computed on
            the sample for each k, then K-Means with the best k runs on every server.
        random_seed: Seed of K-Means and of the sample.

    Returns:
        ``server_clusters`` (``server_id``, ``cluster``, ``description``, ``archetype`` when known, and the
        unscaled features) and a cluster report (k, silhouette per k, adjusted Rand index, descriptions).
    """
    if not 2 <= k_min <= k_max:  # noqa: PLR2004
        raise ValueError(f"need 2 <= cluster_k_min <= cluster_k_max, got {k_min} and {k_max}")
    features, groups = _server_features(utilisation_profiles)
    standardised = (features - features.mean()) / features.std(ddof=0).replace(0.0, 1.0)
    for columns in groups.values():
        standardised[columns] = standardised[columns] / np.sqrt(len(columns))
    matrix = standardised.fillna(0.0).to_numpy()
    n_servers = len(features)
    sample = np.sort(np.random.default_rng(random_seed).permutation(n_servers)[:sample_size])
    candidates = list(range(k_min, min(k_max, len(sample) - 1) + 1))
    scores: dict[int, float] = {}
    # One thread: K-Means' OpenMP threads spin when the cores are busy; on a loaded 2-core machine 10,000
    # servers took 94 s with the default threads and 3.3 s with one.
    with threadpool_limits(limits=1):
        for k in candidates:
            labels = KMeans(n_clusters=k, n_init=4, random_state=random_seed).fit_predict(matrix[sample])
            if len(np.unique(labels)) >= 2:  # noqa: PLR2004 - otherwise identical profiles
                scores[k] = float(silhouette_score(matrix[sample], labels))
        best_k = max(scores, key=lambda k: scores[k]) if scores else 1
        if scores:
            labels = KMeans(n_clusters=best_k, n_init=4, random_state=random_seed).fit_predict(matrix)
    if not scores:
        logger.warning(
            "Too few distinct server profiles among %d servers: every server goes in one cluster", n_servers
        )
        labels = np.zeros(n_servers, dtype=int)
    order = features.filter(like="level_").mean(axis=1).groupby(labels).mean().sort_values().index
    labels = pd.Series(labels).map({old: new for new, old in enumerate(order)}).to_numpy()
    centroids = features.groupby(labels).mean()
    descriptions = {int(c): _describe_cluster(centroids.loc[c]) for c in centroids.index}

    clusters = pd.DataFrame({"server_id": features.index.astype("str"), "cluster": labels.astype("int64")})
    clusters["description"] = clusters["cluster"].map(descriptions).astype("str")
    report: dict[str, Any] = {
        "k": int(best_k),
        "silhouette": scores.get(best_k),
        "silhouette_by_k": {str(k): round(v, 4) for k, v in scores.items()},
        "selection_sample": int(len(sample)),
        "features": list(features.columns),
    }
    archetypes = None
    if "archetype" in server_inventory.columns:
        archetypes = clusters["server_id"].map(
            server_inventory.drop_duplicates("server_id").set_index("server_id")["archetype"]
        )
    if archetypes is not None and archetypes.notna().all():
        clusters["archetype"] = archetypes.astype("str")
        report["adjusted_rand_index"] = float(adjusted_rand_score(clusters["archetype"], clusters["cluster"]))
    else:
        report["adjusted_rand_index"] = None
        report["adjusted_rand_index_note"] = "server_inventory has no archetype for every clustered server"
    sizes = clusters["cluster"].value_counts()
    report["clusters"] = [
        {
            "cluster": c,
            "n_servers": int(sizes.get(c, 0)),
            "description": descriptions[c],
            **(
                {"archetypes": clusters.loc[clusters["cluster"] == c, "archetype"].value_counts().to_dict()}
                if "archetype" in clusters.columns
                else {}
            ),
        }
        for c in sorted(descriptions)
    ]
    clusters = clusters.merge(
        features.reset_index(names="server_id").astype({"server_id": "str"}), on="server_id"
    )
    logger.info(
        "K-Means on %d servers: k=%d (silhouette %s), ARI vs archetype %s",
        n_servers,
        best_k,
        report["silhouette"],
        report["adjusted_rand_index"],
    )
    return clusters, report


def _check_inventory(server_ids: pd.Series, server_inventory: pd.DataFrame) -> pd.DataFrame:
    """Inventory indexed by server_id; every analysed server must be in it exactly once."""
    _require(server_inventory, _INVENTORY_COLUMNS, "server_inventory")
    duplicated = server_inventory["server_id"].astype("str").duplicated()
    if duplicated.any():
        raise ValueError(
            f"server_inventory lists {sorted(server_inventory['server_id'][duplicated].unique())[:5]} "
            "more than once"
        )
    inventory = server_inventory.assign(server_id=server_inventory["server_id"].astype("str")).set_index(
        "server_id"
    )
    missing = sorted(set(server_ids.astype("str")) - set(inventory.index))
    if missing:
        raise ValueError(
            f"{len(missing)} server(s) in forecasts are not in server_inventory (e.g. {missing[:5]}): add "
            "them to "
            "the inventory (vcpus, memory_gb, hourly_cost_usd) or drop them from the forecasts"
        )
    return inventory


def plan_consolidation(  # noqa: PLR0914 - the packing loop needs its bookkeeping
    forecast_risk: pd.DataFrame,
    server_inventory: pd.DataFrame,
    target_ceiling: float,
    hours_per_month: float,
    group_column: str | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Packs the underutilized servers onto as few of themselves as possible (2-D first-fit decreasing).

    Each candidate needs ``vcpus x peak p90 cpu %`` vCPUs and ``memory_gb x peak p90 memory %`` GB over the
    horizon. Candidates are taken largest first (vCPUs, then memory, then demand); each moves onto the first
    kept host where both needs fit under ``target_ceiling`` % of the host's capacity (its own load included),
    otherwise it is kept and becomes a host. Moves stay inside ``group_column`` (e.g. the datacenter) when the
    inventory has it. A moved server is switched off and saves ``hourly_cost_usd x hours_per_month``.

    Args:
        forecast_risk: Output of ``score_forecast_risk``.
        server_inventory: ``server_id``, ``vcpus``, ``memory_gb``, ``hourly_cost_usd`` (+ extras).
        target_ceiling: Highest projected p90 utilisation (%) allowed on a host after the moves.
        hours_per_month: Hours billed per month (730).
        group_column: Inventory column that moves may not cross (``null`` to ignore).

    Returns:
        ``consolidation_plan`` (one row per moved server: ``server_id``, ``target_server_id``, ``group``,
        ``cpu_demand_vcpus``, ``memory_demand_gb``, ``target_cpu_utilization``, ``target_memory_utilization``
        (projected p90 peak % on the host after every move), ``monthly_savings_usd``) and a savings summary.
    """
    if not 0 < target_ceiling <= 100:  # noqa: PLR2004
        raise ValueError(f"consolidation_ceiling must be in (0, 100], got {target_ceiling}")
    inventory = _check_inventory(forecast_risk["server_id"], server_inventory)
    servers = forecast_risk["server_id"].astype("str").unique()
    fleet_cost = float(inventory.loc[servers, "hourly_cost_usd"].sum() * hours_per_month)
    candidates = forecast_risk[forecast_risk["server_risk_level"] == "underutilized"]
    peaks = candidates.pivot_table(
        index="server_id", columns="metric", values="peak_p90_horizon", aggfunc="max"
    )
    sizing = inventory.loc[peaks.index.astype("str"), ["vcpus", "memory_gb", "hourly_cost_usd"]].astype(float)
    for kind, metric in _SIZING_METRICS.items():
        sizing[f"{kind}_peak"] = peaks[metric].to_numpy() if metric in peaks.columns else np.nan
    sizing["cpu_demand"] = sizing["vcpus"] * sizing["cpu_peak"] / 100
    sizing["memory_demand"] = sizing["memory_gb"] * sizing["memory_peak"] / 100
    usable = sizing[["cpu_demand", "memory_demand", "vcpus", "memory_gb"]].notna().all(axis=1)
    usable &= (sizing["vcpus"] > 0) & (sizing["memory_gb"] > 0)
    if (~usable).any():
        logger.warning(
            "%d underutilized server(s) lack cpu/memory forecasts or sizes and are left out of the plan",
            (~usable).sum(),
        )
    sizing = sizing[usable]
    use_groups = bool(group_column) and group_column in inventory.columns
    if group_column and not use_groups:
        logger.warning("server_inventory has no %r column: moves may cross it", group_column)
    sizing["group"] = inventory.loc[sizing.index, group_column].astype("str") if use_groups else "all"
    sizing = sizing.sort_values(
        ["vcpus", "memory_gb", "cpu_demand", "memory_demand"], ascending=False, kind="stable"
    )

    moves, hosts = [], []
    for group, members in sizing.groupby("group", sort=True):
        host_ids: list[str] = []
        free_cpu, free_memory = np.empty(len(members)), np.empty(len(members))
        for server_id, row in members.iterrows():
            fits = (free_cpu[: len(host_ids)] >= row["cpu_demand"]) & (
                free_memory[: len(host_ids)] >= row["memory_demand"]
            )
            if fits.any():
                host = int(fits.argmax())
                free_cpu[host] -= row["cpu_demand"]
                free_memory[host] -= row["memory_demand"]
                moves.append(
                    (
                        server_id,
                        host_ids[host],
                        group,
                        row["cpu_demand"],
                        row["memory_demand"],
                        row["hourly_cost_usd"] * hours_per_month,
                    )
                )
            else:
                free_cpu[len(host_ids)] = row["vcpus"] * target_ceiling / 100 - row["cpu_demand"]
                free_memory[len(host_ids)] = row["memory_gb"] * target_ceiling / 100 - row["memory_demand"]
                host_ids.append(server_id)
        hosts.extend(host_ids)
    plan = pd.DataFrame(
        moves,
        columns=[
            "server_id",
            "target_server_id",
            "group",
            "cpu_demand_vcpus",
            "memory_demand_gb",
            "monthly_savings_usd",
        ],
    )
    plan = plan.astype(
        {
            "server_id": "str",
            "target_server_id": "str",
            "group": "str",
            "cpu_demand_vcpus": "float64",
            "memory_demand_gb": "float64",
            "monthly_savings_usd": "float64",
        }
    )
    target = dict(zip(plan["server_id"], plan["target_server_id"], strict=True))
    host_load = (
        sizing[["cpu_demand", "memory_demand"]].groupby([target.get(s, s) for s in sizing.index]).sum()
    )
    plan["target_cpu_utilization"] = (
        plan["target_server_id"].map(host_load["cpu_demand"] / sizing["vcpus"]).astype(float) * 100
    )
    plan["target_memory_utilization"] = (
        plan["target_server_id"].map(host_load["memory_demand"] / sizing["memory_gb"]).astype(float) * 100
    )
    savings = float(plan["monthly_savings_usd"].sum())
    summary = {
        "candidates": int(len(candidates["server_id"].unique())),
        "candidates_sized": int(len(sizing)),
        "servers_moved": int(len(plan)),
        "hosts_kept": int(len(hosts)),
        "hosts_receiving": int(plan["target_server_id"].nunique()),
        "target_ceiling_pct": float(target_ceiling),
        "group_column": group_column if use_groups else None,
        "monthly_savings_usd": round(savings, 2),
        "fleet_monthly_cost_usd": round(fleet_cost, 2),
        "savings_share": round(savings / fleet_cost, 4) if fleet_cost > 0 else None,
    }
    logger.info(
        "Consolidation: %d candidates -> %d moves onto %d hosts, %.0f USD/month (%s of fleet cost)",
        summary["candidates"],
        summary["servers_moved"],
        summary["hosts_receiving"],
        savings,
        summary["savings_share"],
    )
    return plan, summary


def _reason(row: Any, host_guests: dict[str, int]) -> str:
    """Why a register row has its tier and action, in words with the numbers behind it."""
    basis = row.basis
    peak = f"{basis} forecast peaks at {row.projected_utilization:.1f} %"
    if row.risk_level in _AT_RISK:
        label, days, when = (
            ("90", row.days_to_90, row.first_date_above_90)
            if row.risk_level == "very_high"
            else ("80", row.days_to_80, row.first_date_above_80)
        )
        text = f"{peak}; first above {label} % on {when:%Y-%m-%d} (day {days})"
        calendar = [
            flag
            for flag, on in (
                ("an end-of-quarter window", row.breach_in_quarter_end),
                ("a month-end window", row.breach_in_month_end),
                ("a public holiday", row.breach_on_holiday),
            )
            if on
        ]
        if calendar:
            text += f"; the first breach falls in {' and on '.join(calendar)}"
        return text
    if row.risk_level == "normal":
        return f"{peak} and averages {row.projected_mean:.1f} %: inside the thresholds"
    text = f"{basis} forecast averages {row.projected_mean:.1f} % (peak {row.projected_utilization:.1f} %)"
    if row.server_risk_level != "underutilized":
        other = f"the server is {row.server_risk_level} on another metric"
        return f"{text}, but {other}: not a consolidation candidate"
    if isinstance(row.target_server_id, str):
        return f"{text}; move onto {row.target_server_id}, saving {row.savings_potential:,.0f} USD/month"
    guests = host_guests.get(row.server_id, 0)
    if guests:
        return f"{text}; keep it as the host for {guests} consolidated server(s)"
    return f"{text}; no other candidate fits next to it: consider a smaller instance"


def build_risk_register(
    forecast_risk: pd.DataFrame, utilisation_profiles: pd.DataFrame, consolidation_plan: pd.DataFrame
) -> pd.DataFrame:
    """Joins forecast risk, current level and trend, and the consolidation plan into the risk register.

    Args:
        forecast_risk: Output of ``score_forecast_risk``.
        utilisation_profiles: Output of ``profile_utilisation`` (``current_level``, ``monthly_trend``).
        consolidation_plan: Output of ``plan_consolidation``.

    Returns:
        One row per server and metric: the ``forecast_risk`` columns plus ``current_level``,
        ``monthly_trend``,
        ``headroom_pct`` (100 - projected peak), ``savings_potential`` (the server's monthly saving in USD if
        the plan moves it, repeated on each of its metric rows; sum ``consolidation_plan`` for totals),
        ``target_server_id``, ``action`` (from the row's tier; ``monitor`` for an underutilized metric of a
        server that is not underutilized), ``server_action`` (from the server's tier) and ``reason``.
    """
    history = utilisation_profiles[["server_id", "metric", "current_level", "monthly_trend"]]
    register = forecast_risk.merge(history, on=["server_id", "metric"], how="left", validate="one_to_one")
    if register["current_level"].isna().any():
        logger.warning(
            "%d series have no recent clean history: current_level is empty",
            register["current_level"].isna().sum(),
        )
    moves = consolidation_plan.set_index("server_id")
    register["headroom_pct"] = (100.0 - register["projected_utilization"]).clip(lower=0.0)
    register["savings_potential"] = (
        register["server_id"].map(moves["monthly_savings_usd"]).fillna(0.0).astype(float)
    )
    register["target_server_id"] = register["server_id"].map(moves["target_server_id"]).astype("str")
    action = register["risk_level"].map(_ACTIONS)
    lone = (register["risk_level"] == "underutilized") & (register["server_risk_level"] != "underutilized")
    register["action"] = action.where(~lone, "monitor").astype("str")
    register["server_action"] = register["server_risk_level"].map(_ACTIONS).astype("str")
    host_guests = consolidation_plan["target_server_id"].value_counts().to_dict()
    register["reason"] = pd.Series(
        [_reason(row, host_guests) for row in register.itertuples(index=False)],
        index=register.index,
        dtype="str",
    )
    return register


def _json_date(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")


def _json_int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def summarise_risk(
    risk_register: pd.DataFrame,
    cluster_report: dict[str, Any],
    consolidation_summary: dict[str, Any],
    top_servers: int,
) -> dict[str, Any]:
    """Builds the JSON risk summary: tier counts, top at-risk servers with breach dates, savings, clusters.

    Args:
        risk_register: Output of ``build_risk_register``.
        cluster_report: Second output of ``cluster_servers``.
        consolidation_summary: Second output of ``plan_consolidation``.
        top_servers: How many at-risk servers to list (most severe, then soonest breach).
    """
    servers = risk_register.drop_duplicates("server_id")
    ranked = risk_register.assign(
        _severity=risk_register["risk_level"].map(_SEVERITY),
        _d90=risk_register["days_to_90"].astype("Float64").fillna(np.inf),
        _d80=risk_register["days_to_80"].astype("Float64").fillna(np.inf),
    ).sort_values(["_severity", "_d90", "_d80", "projected_utilization"], ascending=[True, True, True, False])
    worst = ranked[ranked["risk_level"].isin(_AT_RISK)].drop_duplicates("server_id").head(top_servers)
    top = [
        {
            "server_id": row.server_id,
            "metric": row.metric,
            "risk_level": row.risk_level,
            "action": row.action,
            "projected_utilization": round(float(row.projected_utilization), 2),
            "days_to_80": _json_int(row.days_to_80),
            "days_to_90": _json_int(row.days_to_90),
            "first_date_above_80": _json_date(row.first_date_above_80),
            "first_date_above_90": _json_date(row.first_date_above_90),
            "breach_in_quarter_end": bool(row.breach_in_quarter_end),
            "breach_on_holiday": bool(row.breach_on_holiday),
        }
        for row in worst.itertuples(index=False)
    ]
    levels = list(RISK_LEVELS)
    return {
        "analysis_date": _json_date(risk_register["analysis_date"].max()),
        "basis": str(risk_register["basis"].iloc[0]),
        "models": sorted(risk_register["model"].astype("str").unique()),
        "servers": int(len(servers)),
        "series": int(len(risk_register)),
        "server_tiers": {
            k: int(v)
            for k, v in servers["server_risk_level"].value_counts().reindex(levels, fill_value=0).items()
        },
        "series_tiers": {
            k: int(v)
            for k, v in risk_register["risk_level"].value_counts().reindex(levels, fill_value=0).items()
        },
        "top_at_risk_servers": top,
        "savings": consolidation_summary,
        "clusters": {k: v for k, v in cluster_report.items() if k != "features"},
    }


def _flag_scores(predicted: pd.Series, actual: pd.Series) -> dict[str, Any]:
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
        "very_high": _flag_scores(predicted == "very_high", actual == "very_high"),
        "high": _flag_scores(predicted == "high", actual == "high"),
        "at_risk": _flag_scores(predicted.isin(_AT_RISK), actual.isin(_AT_RISK)),
        "underutilized": _flag_scores(predicted == "underutilized", actual == "underutilized"),
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


def evaluate_risk_flags(risk_register: pd.DataFrame, server_truth: pd.DataFrame) -> dict[str, Any]:
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
            "No server_truth (only generated fleets have one): risk_evaluation says so and scores nothing"
        )
        return {
            "truth_available": False,
            "note": "server_truth is missing or empty, as for any real (not generated) fleet: there is no "
            "ground truth to score the risk flags against",
        }
    _require(server_truth, _TRUTH_COLUMNS, "server_truth")
    truth = server_truth.assign(
        server_id=server_truth["server_id"].astype("str"), metric=server_truth["metric"].astype("str")
    )
    register = risk_register[
        ["server_id", "metric", "risk_level", "server_risk_level", "days_to_80", "days_to_90"]
    ]
    joined = truth[list(_TRUTH_COLUMNS)].merge(
        register, on=["server_id", "metric"], how="inner", suffixes=("_true", "")
    )
    if joined.empty:
        raise ValueError(
            "server_truth and risk_register share no (server_id, metric): is the truth from another fleet?"
        )
    joined["server_risk_level_true"] = _server_tiers(joined["server_id"], joined["risk_level_true"])
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
