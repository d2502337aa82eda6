"""risk_analysis nodes: thin wrappers over the library package ``capacity_forecaster.risk``.

Breach probabilities, tiers and days to breach (``risk.breach``, ``risk.scoring``), the error dependence
(``risk.dependence``), utilisation profiles and clusters (``risk.profiles``, ``risk.clusters``), consolidation
(``risk.packing``), the register and summary (``risk.register``) and the evaluation of the flags against the
generator's truth and on the risk backtest (``risk.evaluation``). Every threshold is a percentage of capacity;
days count from the fleet's analysis date (its last clean day), so the day after it is day 1.
"""

import logging
from typing import Any

import pandas as pd

from capacity_forecaster.risk import clusters, dependence, evaluation, packing, profiles, register, scoring
from capacity_forecaster.risk.breach import check_cutoffs, check_thresholds
from capacity_forecaster.schema import QUANTILES

logger = logging.getLogger(__name__)


def estimate_error_dependence(
    backtest_forecasts: pd.DataFrame, fallback_correlation: float, min_pairs: int
) -> dict[str, Any]:
    """Estimates the day-to-day dependence of forecast errors per metric from the backtest forecasts.

    Args:
        backtest_forecasts: Forecasts from past origins with actuals (empty when modelling wrote none).
        fallback_correlation: Lag-1 latent correlation used where the backtest cannot tell.
        min_pairs: Fewest consecutive-day error pairs a metric needs for its own estimate.

    Returns:
        ``error_dependence``: the fallback and, per metric, ``rho``, ``pairs`` and ``source``.
    """
    return dependence.estimate_dependence(backtest_forecasts, fallback_correlation, min_pairs)


def score_forecast_risk(  # noqa: PLR0913, PLR0917 - one argument per parameter leaf
    forecasts: pd.DataFrame,
    clean_server_metrics: pd.DataFrame,
    error_dependence: dict[str, Any],
    forecast_model: str,
    basis: str,
    high_threshold: float,
    very_high_threshold: float,
    underutilized_threshold: float,
    high_probability_cutoff: float,
    very_high_probability_cutoff: float,
    breach_min_days: int,
    recent_window_days: int,
    recent_min_days: int,
    exceedance_window_days: int,
    stale_after_days: int,
    horizon: int,
    near_term_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Scores every server and metric: breach probabilities, recent days above, days to breach and tier.

    A series is very_high when the probability of at least ``breach_min_days`` days above
    ``very_high_threshold`` within the horizon reaches ``very_high_probability_cutoff``, or when at least
    ``recent_min_days`` of its last ``recent_window_days`` observed days already were above it; high likewise
    with ``high_threshold``; else underutilized when the ``basis`` quantile averages below
    ``underutilized_threshold``; else normal. Servers silent for more than ``stale_after_days`` are stale and
    not tiered. A server's tier is its most severe metric.

    Args:
        forecasts: The ``forecasts`` table (one row per server, metric, day and model).
        clean_server_metrics: The clean history (analysis date, recent days, staleness, history days).
        error_dependence: Output of ``estimate_error_dependence``.
        forecast_model: ``"selected"`` for the ``is_selected`` rows, or a model name (e.g. a canvas forecast).
        basis: Quantile behind ``projected_utilization``, ``days_to_80``/``days_to_90`` and the mean.
        high_threshold: The high threshold (80 %).
        very_high_threshold: The very-high threshold (90 %).
        underutilized_threshold: Tier ``underutilized`` when the basis averages below this % (40).
        high_probability_cutoff: Breach probability of the high threshold that makes a series high.
        very_high_probability_cutoff: Breach probability of the very-high threshold that makes it very_high.
        breach_min_days: Days above a threshold that make a breach (1 = any day).
        recent_window_days: Recent-days rule: the last this many days up to the analysis date.
        recent_min_days: Recent-days rule: this many observed days above a threshold flag the series.
        exceedance_window_days: Episodes above a threshold in this many last days give the history's breach
            probability; the larger of it and the forecast's is the series' (0: the forecast's alone).
        stale_after_days: ``params:stale_after_days`` (``capacity_forecaster.freshness``).
        horizon: Days ahead that count (``params:horizon``).
        near_term_days: The short window of the ``*_near`` peaks (30); clipped to the horizon with a warning.
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window length (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).

    Returns:
        One row per server and metric with ``analysis_date``, ``model``, ``forecast_days``, ``history_days``,
        ``peak_p50_near``, ``peak_p90_near``, ``peak_p50_horizon``, ``peak_p90_horizon``, ``mean_p50``,
        ``mean_p90``, ``days_to_{80,90}_{p50,p90}``, ``basis``, ``projected_utilization`` and
        ``projected_mean`` (basis peak and mean), ``days_to_80``/``days_to_90`` and
        ``first_date_above_80``/``first_date_above_90`` (first basis crossing; "80" and "90" stand for the
        high and very-high thresholds), ``breach_correlation`` (the lag-1 correlation used),
        ``prob_above_80``/``prob_above_90``, ``expected_breach_date_80``/``_90`` (median breach day given a
        breach), ``recent_days_above_80``/``_90``, ``breach_in_quarter_end``, ``breach_in_month_end``,
        ``breach_on_holiday``, ``risk_level``, ``stale``, ``last_day``, ``days_silent`` and
        ``server_risk_level``.
    """
    check_thresholds(high_threshold, very_high_threshold, underutilized_threshold)
    check_cutoffs(high_probability_cutoff, very_high_probability_cutoff)
    if basis not in QUANTILES:
        raise ValueError(f"params:risk_analysis.basis must be one of {QUANTILES}, got {basis!r}")
    if horizon < 1 or near_term_days < 1:
        raise ValueError(f"need horizon >= 1 and near_term_days >= 1, got {horizon} and {near_term_days}")
    if recent_window_days < 1 or recent_min_days < 1:
        raise ValueError("params:risk_analysis.recent_window_days and recent_min_days must be >= 1")
    if exceedance_window_days < 0:
        raise ValueError(
            f"params:risk_analysis.exceedance_window_days must be >= 0, got {exceedance_window_days}"
        )
    if near_term_days > horizon:
        logger.warning(
            "near_term_days=%d is longer than the horizon of %d days: the near-term peaks cover the horizon",
            near_term_days,
            horizon,
        )
        near_term_days = horizon
    return scoring.score_series(
        forecasts,
        clean_server_metrics,
        error_dependence,
        forecast_model=forecast_model,
        basis=basis,
        thresholds={
            "high": high_threshold,
            "very_high": very_high_threshold,
            "underutilized": underutilized_threshold,
        },
        cutoffs={"high": high_probability_cutoff, "very_high": very_high_probability_cutoff},
        horizon=horizon,
        near_term_days=near_term_days,
        breach_min_days=breach_min_days,
        recent_window_days=recent_window_days,
        recent_min_days=recent_min_days,
        exceedance_window_days=exceedance_window_days,
        stale_after_days=stale_after_days,
        calendar={
            "country": country,
            "month_end_business_days": month_end_business_days,
            "quarter_end_business_days": quarter_end_business_days,
        },
    )


def profile_utilisation(  # noqa: PLR0917 - one argument per parameter leaf
    clean_server_metrics: pd.DataFrame,
    profile_days: int,
    current_window_days: int,
    trend_window_days: int,
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Summarises the recent history of every server and metric (``risk.profiles.build_profiles``).

    Args:
        clean_server_metrics: The clean long table (``server_id``, ``metric``, ``date``, ``value``).
        profile_days: Days of history behind the level, spread and shape figures.
        current_window_days: The current P95 level is the mean of this many last days.
        trend_window_days: The monthly growth trend is the least-squares slope over this many last days.
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window length (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).

    Returns:
        One row per server and metric: current level, monthly trend, level, spread, weekly shape and the
        month-end / end-of-quarter uplifts (NaN when the history has no such day).
    """
    return profiles.build_profiles(
        clean_server_metrics,
        profile_days,
        current_window_days,
        trend_window_days,
        country,
        month_end_business_days,
        quarter_end_business_days,
    )


def cluster_servers(  # noqa: PLR0917 - one argument per parameter leaf
    utilisation_profiles: pd.DataFrame,
    server_inventory: pd.DataFrame,
    k_min: int,
    k_max: int,
    sample_size: int,
    random_seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Groups servers by utilisation profile with K-Means (``risk.clusters.cluster_profiles``).

    Args:
        utilisation_profiles: Output of ``profile_utilisation``.
        server_inventory: Inventory; its ``archetype`` column, when present, gives the adjusted Rand index.
        k_min: Smallest number of clusters tried (>= 2).
        k_max: Largest number of clusters tried (capped at the number of servers - 1).
        sample_size: Servers sampled (at random) to choose k.
        random_seed: Seed of K-Means and of the sample.

    Returns:
        ``server_clusters`` and the cluster report.
    """
    return clusters.cluster_profiles(
        utilisation_profiles, server_inventory, k_min, k_max, sample_size, random_seed
    )


def plan_consolidation(
    forecast_risk: pd.DataFrame,
    server_inventory: pd.DataFrame,
    target_ceiling: float,
    hours_per_month: float,
    group_column: str | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Packs the underutilized servers onto as few of themselves as possible (``risk.packing.plan_moves``).

    Args:
        forecast_risk: Output of ``score_forecast_risk``.
        server_inventory: ``server_id``, ``vcpus``, ``memory_gb``, ``hourly_cost_usd`` (+ extras); servers it
            lacks are analysed as unknown and left out of the plan.
        target_ceiling: Highest projected p90 utilisation (%) allowed on a host after the moves.
        hours_per_month: Hours billed per month (730).
        group_column: Inventory column that moves may not cross (``null`` to ignore).

    Returns:
        ``consolidation_plan`` (one row per moved server) and the savings summary.
    """
    return packing.plan_moves(forecast_risk, server_inventory, target_ceiling, hours_per_month, group_column)


def build_risk_register(
    forecast_risk: pd.DataFrame,
    utilisation_profiles: pd.DataFrame,
    consolidation_plan: pd.DataFrame,
    server_inventory: pd.DataFrame,
    rightsizing_recommendations: pd.DataFrame,
) -> pd.DataFrame:
    """Joins forecast risk, current level and trend, the inventory, the consolidation plan and right-sizing.

    Args:
        forecast_risk: Output of ``score_forecast_risk``.
        utilisation_profiles: Output of ``profile_utilisation`` (``current_level``, ``monthly_trend``).
        consolidation_plan: Output of ``plan_consolidation``.
        server_inventory: The inventory (``in_inventory`` is false for servers it lacks).
        rightsizing_recommendations: Output of ``recommend_instance_types`` (one row per inventory server).

    Returns:
        One row per server and metric: the ``forecast_risk`` columns plus ``current_level``,
        ``monthly_trend``, ``in_inventory``, ``headroom_pct`` (100 - projected peak), ``savings_potential``
        (the server's monthly saving in USD if the plan moves it, NaN when its cost is unknown),
        ``target_server_id``, ``action`` (from the row's tier; ``monitor`` for an underutilized metric of a
        server that is not underutilized; ``check monitoring`` for a stale server), ``server_action`` and
        ``reason``, and per server ``recommended_instance_type``, ``monthly_cost_change_usd`` and
        ``rightsizing_reason`` (empty with the reason when nothing fits or the server is not an EC2 type).
    """
    return register.build_register(
        forecast_risk, utilisation_profiles, consolidation_plan, server_inventory, rightsizing_recommendations
    )


def summarise_risk(
    risk_register: pd.DataFrame,
    cluster_report: dict[str, Any],
    consolidation_summary: dict[str, Any],
    top_servers: int,
) -> dict[str, Any]:
    """Builds the JSON risk summary: tier counts, top at-risk servers, stale servers, savings, clusters.

    Args:
        risk_register: Output of ``build_risk_register``.
        cluster_report: Second output of ``cluster_servers``.
        consolidation_summary: Second output of ``plan_consolidation``.
        top_servers: How many at-risk servers to list (most severe, then soonest breach).
    """
    return register.summarise(risk_register, cluster_report, consolidation_summary, top_servers)


def backtest_risk_flags(  # noqa: PLR0913, PLR0917 - one argument per parameter leaf
    backtest_forecasts: pd.DataFrame,
    clean_server_metrics: pd.DataFrame,
    error_dependence: dict[str, Any],
    high_threshold: float,
    very_high_threshold: float,
    high_probability_cutoff: float,
    very_high_probability_cutoff: float,
    breach_min_days: int,
    recent_window_days: int,
    recent_min_days: int,
    exceedance_window_days: int,
) -> dict[str, Any]:
    """Computes the register's flags at every past backtest origin and scores them on what then happened.

    Args:
        backtest_forecasts: Forecasts from past origins with actuals; empty when modelling wrote none.
        clean_server_metrics: The clean history (the recent-days rule at each origin).
        error_dependence: Output of ``estimate_error_dependence``.
        high_threshold: The high threshold (80 %).
        very_high_threshold: The very-high threshold (90 %).
        high_probability_cutoff: As in ``score_forecast_risk``.
        very_high_probability_cutoff: As in ``score_forecast_risk``.
        breach_min_days: As in ``score_forecast_risk``.
        recent_window_days: As in ``score_forecast_risk``.
        recent_min_days: As in ``score_forecast_risk``.
        exceedance_window_days: As in ``score_forecast_risk``.

    Returns:
        ``risk_backtest``: precision, recall and lead time per threshold, and what each probability cut-off
        would have given (``risk.evaluation.backtest_risk_flags``).
    """
    return evaluation.backtest_risk_flags(
        backtest_forecasts,
        clean_server_metrics,
        error_dependence,
        thresholds={"high": high_threshold, "very_high": very_high_threshold},
        cutoffs={"high": high_probability_cutoff, "very_high": very_high_probability_cutoff},
        breach_min_days=breach_min_days,
        recent_window_days=recent_window_days,
        recent_min_days=recent_min_days,
        exceedance_window_days=exceedance_window_days,
    )


def evaluate_risk_flags(
    risk_register: pd.DataFrame,
    server_truth: pd.DataFrame,
    risk_backtest: dict[str, Any],
    error_dependence: dict[str, Any],
) -> dict[str, Any]:
    """Scores the register's flags against the generator's truth (when there is one) and on the backtest.

    Args:
        risk_register: Output of ``build_risk_register``.
        server_truth: The ``server_truth`` table; empty when the data is not generated (no truth exists).
        risk_backtest: Output of ``backtest_risk_flags`` (any fleet with backtest forecasts has one).
        error_dependence: Output of ``estimate_error_dependence``.

    Returns:
        ``truth_available`` with, when true, the truth scores (``risk.evaluation.evaluate_against_truth``),
        plus ``backtest`` (the risk backtest) and ``error_dependence``.
    """
    scores = evaluation.evaluate_against_truth(risk_register, server_truth)
    return {**scores, "backtest": risk_backtest, "error_dependence": error_dependence}
