"""Breach probabilities, days to breach and risk tiers.

A forecast gives three quantiles per day (p10, p50, p90). Each day's value is read as a split normal: median
p50, standard deviation (p50 - p10) / z90 below it and (p90 - p50) / z90 above it (z90 = 1.2816). Through its
distribution function each day maps to a standard normal latent variable, and day ``t`` is above a threshold
``c`` exactly when the latent variable exceeds ``z_t`` = (c - p50) / sigma (sigma of the side ``c`` is on).

Days are dependent (a forecast that is too low today is likely too low tomorrow): the latent variables follow
a stationary Gaussian AR(1) with lag-1 correlation ``rho`` (a Gaussian copula). ``breach_probabilities``
returns the probability of at least ``min_days`` days above the threshold, computed by treating the daily
exceedance indicators as a two-state Markov chain whose transition probabilities come from the bivariate
normal of consecutive days. This is exact for independent days (``rho = 0``) and for fully dependent days
(``rho = 1``: all days share one latent value), needs no random numbers, and costs O(days x min_days) per
series, so 100,000 servers x 4 metrics run in chunks in seconds. Between those extremes the exceedance chain
is not exactly Markov; tests check it against a Monte Carlo of the AR(1) copula.

A forecast's spread describes ordinary days; single-day excursions (a batch job, a backup) are rare in the
backtest and widen no interval. ``history_breach_probability`` gives the other view: episodes above the
threshold start on a day at the rate seen in the recent history, and the register's probability is the larger
of the two (``combine_breach``).
"""

import numpy as np
import pandas as pd
from scipy.special import ndtr

from capacity_forecaster.schema import RISK_LEVELS

Z90 = 1.2815515655446004
"""Standard normal 90 % quantile: p90 - p50 = Z90 sigma for a normal day."""

_Z_LIMIT = 8.5  # |z| beyond this is certainly (not) above: Phi(8.5) = 1 - 1e-17
_NEGLIGIBLE_Z = 6.0  # a day with z > 6 is above with probability < 1e-9: 90 such days breach with < 1e-7
_GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(12)
_SEVERITY = {level: rank for rank, level in enumerate(RISK_LEVELS)}


def check_thresholds(high: float, very_high: float, underutilized: float) -> None:
    """Raises a ValueError unless 0 <= underutilized < high < very_high <= 100."""
    if not 0 <= underutilized < high < very_high <= 100:  # noqa: PLR2004 - percentages
        raise ValueError(
            "risk_analysis thresholds out of order: need 0 <= underutilized_threshold < high_threshold < "
            f"very_high_threshold <= 100, got underutilized_threshold={underutilized}, "
            f"high_threshold={high}, very_high_threshold={very_high}"
        )


def check_cutoffs(high_cutoff: float, very_high_cutoff: float) -> None:
    """Raises a ValueError unless both probability cut-offs lie in (0, 1]."""
    for name, value in (
        ("high_probability_cutoff", high_cutoff),
        ("very_high_probability_cutoff", very_high_cutoff),
    ):
        if not 0 < value <= 1:
            raise ValueError(f"params:risk_analysis.{name} must be in (0, 1], got {value}")


def latent_thresholds(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, threshold: float) -> np.ndarray:
    """The standard normal value each day must exceed to be above ``threshold`` (split-normal days).

    Missing days (NaN quantiles) can never be above: they get +8.5. A day with no spread on the threshold's
    side is certainly above (-8.5) or not (+8.5).
    """
    upper = np.maximum(p90 - p50, 0.0) / Z90
    lower = np.maximum(p50 - p10, 0.0) / Z90
    distance = threshold - p50
    sigma = np.where(distance >= 0, upper, lower)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, distance / sigma, np.where(distance >= 0, np.inf, -np.inf))
    z = np.where(np.isnan(p50), np.inf, z)
    return np.clip(z, -_Z_LIMIT, _Z_LIMIT)


def bivariate_normal_cdf(h: np.ndarray, k: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """P(X <= h, Y <= k) for standard normals with correlation ``rho`` (arrays broadcast together).

    Uses Phi2 = Phi(h) Phi(k) + 1/(2 pi) int_0^asin(rho) exp(-(h^2 - 2 h k sin t + k^2) / (2 cos^2 t)) dt,
    integrated with 12-point Gauss-Legendre (within ~1e-7 for |rho| <= 0.99; tested against scipy).
    """
    h, k, rho = np.broadcast_arrays(np.asarray(h, float), np.asarray(k, float), np.asarray(rho, float))
    nodes, weights = _GAUSS_LEGENDRE
    half = np.arcsin(np.clip(rho, -1.0, 1.0)) / 2
    theta = half[..., None] * (nodes + 1.0)  # map [-1, 1] to [0, asin(rho)]
    sin, cos2 = np.sin(theta), np.cos(theta) ** 2
    hh, kk = h[..., None], k[..., None]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        integrand = np.exp(-(hh * hh - 2 * hh * kk * sin + kk * kk) / (2 * cos2))
    integrand = np.nan_to_num(integrand, nan=0.0)
    integral = half * (integrand @ weights)
    return np.clip(ndtr(h) * ndtr(k) + integral / (2 * np.pi), 0.0, 1.0)


def breach_probabilities(
    z: np.ndarray, rho: np.ndarray, min_days: int, chunk_size: int = 20_000
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of at least ``min_days`` days above the threshold, by the end of each day.

    Args:
        z: Latent thresholds, one row per series and one column per day (``latent_thresholds``).
        rho: Lag-1 latent correlation of each series (0 = independent days, 1 = one shared value).
        min_days: Days above the threshold that make a breach (1 = any day).
        chunk_size: Series computed at once (bounds memory to ~chunk_size x 12 x 8 bytes per array).

    Returns:
        ``probability`` (per series, over all days) and ``cumulative`` (per series and day: the probability
        that the ``min_days``-th day above has happened by that day; non-decreasing along each row).
    """
    if min_days < 1:
        raise ValueError(f"breach_min_days must be >= 1, got {min_days}")
    z = np.asarray(z, dtype=float)
    n_series, n_days = z.shape
    rho = np.broadcast_to(np.clip(np.asarray(rho, dtype=float), -0.99, 1.0), (n_series,))
    cumulative = np.zeros((n_series, n_days))
    # Series whose every day is below with probability > 1 - 1e-9 get 0 (the union bound is < days x 1e-9);
    # skipping them keeps big fleets cheap, since most series sit far below the thresholds.
    possible = np.flatnonzero((z <= _NEGLIGIBLE_Z).any(axis=1)) if n_days else np.array([], dtype=int)
    for start in range(0, len(possible), chunk_size):
        rows = possible[start : start + chunk_size]
        cumulative[rows] = _exceedance_chain(z[rows], rho[rows], min_days)
    probability = cumulative[:, -1] if n_days else np.zeros(n_series)
    return probability, cumulative


def _exceedance_chain(z: np.ndarray, rho: np.ndarray, min_days: int) -> np.ndarray:
    """Forward recursion over days of (days above so far, capped at min_days) x (today above or not)."""
    n_series, n_days = z.shape
    above = 1.0 - ndtr(z)  # P(day t above)
    state = np.zeros((n_series, min_days + 1, 2))
    state[:, 0, 0] = 1.0 - above[:, 0]
    state[:, min(1, min_days), 1] = above[:, 0]
    cumulative = np.empty((n_series, n_days))
    cumulative[:, 0] = state[:, min_days].sum(axis=1)
    tiny = 1e-300
    plausible = z <= _NEGLIGIBLE_Z
    for t in range(1, n_days):
        # P(above yesterday and today); ~0 unless one of the two days can plausibly be above
        both = np.zeros(n_series)
        active = plausible[:, t - 1] | plausible[:, t]
        both[active] = bivariate_normal_cdf(-z[active, t - 1], -z[active, t], rho[active])
        both = np.clip(
            both, np.maximum(above[:, t - 1] + above[:, t] - 1, 0), np.minimum(above[:, t - 1], above[:, t])
        )
        stay_above = np.where(above[:, t - 1] > tiny, both / np.maximum(above[:, t - 1], tiny), above[:, t])
        rise = np.where(
            above[:, t - 1] < 1 - 1e-15,
            (above[:, t] - both) / np.maximum(1 - above[:, t - 1], tiny),
            above[:, t],
        )
        stay_above, rise = np.clip(stay_above, 0, 1)[:, None], np.clip(rise, 0, 1)[:, None]
        below_yesterday, above_yesterday = state[:, :, 0], state[:, :, 1]
        new = np.zeros_like(state)
        new[:, :, 0] = below_yesterday * (1 - rise) + above_yesterday * (1 - stay_above)
        arriving = below_yesterday * rise + above_yesterday * stay_above  # today above: count + 1
        new[:, 1:, 1] += arriving[:, :-1]
        new[:, min_days, 1] += arriving[:, min_days]  # the cap: a breach stays a breach
        state = new
        cumulative[:, t] = state[:, min_days].sum(axis=1)
    return np.maximum.accumulate(cumulative, axis=1)


def median_breach_day(cumulative: np.ndarray) -> np.ndarray:
    """Day number (1 = first column) by which half of the breach probability is reached, 0 if none.

    It is the median day of the breach given that one happens within the window.
    """
    total = cumulative[:, -1:] if cumulative.shape[1] else np.zeros((len(cumulative), 1))
    reached = cumulative >= 0.5 * total
    return np.where(total[:, 0] > 0, reached.argmax(axis=1) + 1, 0)


def history_breach_probability(
    episodes: np.ndarray, observed_days: np.ndarray, days: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of an episode above a threshold within ``days`` days at the rate the recent history shows.

    With ``k`` episodes (runs of days above) in ``n`` observed recent days an episode starts on any day with
    probability ``r = k / n``, independently of the other days: ``P = 1 - (1 - r) ** days``. The median
    breach day given a breach is the first day ``d`` with ``1 - (1 - r) ** d >= P / 2``.

    Returns:
        ``probability`` and ``median_day`` (1 = the first forecast day; 0 when the probability is 0).
    """
    episodes, observed = np.asarray(episodes, dtype=float), np.asarray(observed_days, dtype=float)
    days = np.broadcast_to(np.asarray(days, dtype=float), episodes.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.clip(np.where(observed > 0, episodes / observed, 0.0), 0.0, 1.0)
        probability = np.where(days > 0, 1.0 - (1.0 - rate) ** days, 0.0)
        median = np.ceil(np.log1p(-probability / 2) / np.log1p(-rate))
    median = np.where(rate >= 1, 1, np.clip(np.nan_to_num(median, nan=1.0, posinf=1.0), 1, None))
    return probability, np.where(probability > 0, median, 0).astype(np.int64)


def combine_breach(
    model: tuple[np.ndarray, np.ndarray], history: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The larger of the forecast's and the history's breach probability, with the median day of that one."""
    use_history = history[0] > model[0]
    return np.where(use_history, history[0], model[0]), np.where(use_history, history[1], model[1])


def first_day_above(grid: np.ndarray, threshold: float) -> np.ndarray:
    """Day number (1 = first column) of the first value above ``threshold`` in each row, 0 if none."""
    above = grid > threshold
    return np.where(above.any(axis=1), above.argmax(axis=1) + 1, 0)


def assign_tiers(  # noqa: PLR0917 - the two flags of each threshold, then the rule's settings
    prob_above_high: np.ndarray,
    prob_above_very_high: np.ndarray,
    recent_high: np.ndarray,
    recent_very_high: np.ndarray,
    mean: np.ndarray,
    high_cutoff: float,
    very_high_cutoff: float,
    underutilized: float,
) -> np.ndarray:
    """very_high > high > underutilized > normal, from breach probabilities and the recent-days rule.

    A series is very_high when its probability of breaching the very-high threshold reaches
    ``very_high_cutoff`` or its recent days already breach it (``recent_very_high``), else high likewise with
    the high threshold, else underutilized when ``mean`` (basis mean over the horizon) is below
    ``underutilized``, else normal.
    """
    with np.errstate(invalid="ignore"):
        return np.select(
            [
                (prob_above_very_high >= very_high_cutoff) | recent_very_high,
                (prob_above_high >= high_cutoff) | recent_high,
                mean < underutilized,
            ],
            ["very_high", "high", "underutilized"],
            "normal",
        )


def server_tiers(server_id: pd.Series, risk_level: pd.Series) -> pd.Series:
    """Each row's server tier: its most severe metric tier (underutilized only when all metrics are).

    Rows without a tier (NA, e.g. stale servers) are ignored; a server with none stays NA.
    """
    severity = risk_level.map(_SEVERITY)
    worst = severity.groupby(server_id.to_numpy()).transform("min")
    return worst.map(dict(enumerate(RISK_LEVELS))).astype("str").where(worst.notna())


def recent_days_above(values: np.ndarray, codes: np.ndarray, n_series: int, threshold: float) -> np.ndarray:
    """Count of values above ``threshold`` per series code (rows already cut to the recent window)."""
    return np.bincount(codes[values > threshold], minlength=n_series)
