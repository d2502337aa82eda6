"""Breach probabilities against hand-checked closed forms and a Monte Carlo of the AR(1) Gaussian copula."""

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import binom, multivariate_normal

from capacity_forecaster.risk.breach import (
    Z90,
    assign_tiers,
    bivariate_normal_cdf,
    breach_probabilities,
    combine_breach,
    history_breach_probability,
    latent_thresholds,
    median_breach_day,
)


@pytest.mark.parametrize(
    ("h", "k", "rho"),
    [(0.3, -1.2, 0.5), (1.5, 1.5, 0.95), (2.0, 1.0, 0.99), (-0.5, 0.7, -0.6), (3.0, -2.0, 0.9)],
)
def test_bivariate_normal_cdf_matches_scipy(h, k, rho):
    expected = multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([h, k])
    assert bivariate_normal_cdf(np.array([h]), np.array([k]), np.array([rho]))[0] == pytest.approx(
        expected, abs=2e-7
    )


def test_split_normal_day_reads_p10_p50_p90():
    # p50 = 70, p90 = 80: exactly 10 % above 80; p10 = 50: 90 % above 50 (lower side)
    z = latent_thresholds(np.array([50.0, 50.0]), np.array([70.0, 70.0]), np.array([80.0, 80.0]), 80.0)
    assert 1 - ndtr(z[0]) == pytest.approx(0.10)
    assert 1 - ndtr(latent_thresholds(np.array([50.0]), np.array([70.0]), np.array([80.0]), 50.0)[0]) == (
        pytest.approx(0.90)
    )
    # no spread: certainly not above a threshold at or over the median, certainly above one below it
    flat = latent_thresholds(np.array([60.0, 60.0]), np.array([60.0, 60.0]), np.array([60.0, 60.0]), 0.0)
    assert 1 - ndtr(flat[0]) == pytest.approx(1.0)
    assert 1 - ndtr(latent_thresholds(np.array([60.0]), np.array([60.0]), np.array([60.0]), 60.0)[0]) < 1e-15
    assert (
        1 - ndtr(latent_thresholds(np.array([np.nan]), np.array([np.nan]), np.array([np.nan]), 1.0)[0])
        < 1e-15
    )


# 30 days, each 1 - Phi(1.5) = 6.68 % above the threshold:
#   independent days: P(>= 1) = 1 - (1 - q)^30 = 0.8744, P(>= 3) = binomial tail = 0.3244
#   fully dependent days (one shared latent value): P(>= n) = q for every n
Q = 1 - ndtr(1.5)


@pytest.mark.parametrize(
    ("rho", "min_days", "expected"),
    [
        (0.0, 1, 1 - (1 - Q) ** 30),
        (0.0, 3, binom.sf(2, 30, Q)),
        (1.0, 1, Q),
        (1.0, 3, Q),
    ],
)
def test_closed_forms_for_independent_and_fully_dependent_days(rho, min_days, expected):
    probability, cumulative = breach_probabilities(np.full((1, 30), 1.5), np.array([rho]), min_days)
    assert probability[0] == pytest.approx(expected, abs=1e-9)
    assert np.all(np.diff(cumulative[0]) >= 0) and cumulative[0, -1] == probability[0]


def test_hand_checked_two_day_case():
    # Two days at 50 % each with rho 0.5: P(both) = 1/4 + asin(0.5) / (2 pi) = 1/3, so P(any) = 1 - 1/3
    probability, cumulative = breach_probabilities(np.zeros((1, 2)), np.array([0.5]), 1)
    assert probability[0] == pytest.approx(2 / 3, abs=1e-9)
    assert cumulative[0, 0] == pytest.approx(0.5)
    assert breach_probabilities(np.zeros((1, 2)), np.array([0.5]), 2)[0][0] == pytest.approx(1 / 3, abs=1e-9)


def _monte_carlo(z: np.ndarray, rho: float, min_days: int, paths: int = 200_000) -> float:
    rng = np.random.default_rng(7)
    latent = np.empty((paths, z.shape[0]))
    latent[:, 0] = rng.standard_normal(paths)
    for t in range(1, z.shape[0]):
        latent[:, t] = rho * latent[:, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(paths)
    return float(((latent > z).sum(axis=1) >= min_days).mean())


@pytest.mark.parametrize(("rho", "tolerance"), [(0.3, 0.02), (0.6, 0.05), (0.8, 0.1)])
@pytest.mark.parametrize("min_days", [1, 3])
def test_markov_chain_is_close_to_and_never_below_the_copula(rho, tolerance, min_days):
    # a forecast rising towards the threshold and falling back; Monte Carlo with a fixed seed is the reference
    z = np.r_[np.linspace(2.5, 0.8, 15), np.linspace(0.8, 2.0, 15)]
    reference = _monte_carlo(z, rho, min_days)
    probability = breach_probabilities(z[None, :], np.array([rho]), min_days)[0][0]
    assert reference - 0.005 <= probability <= reference + tolerance


def test_chunks_and_impossible_series_give_the_same_answer():
    rng = np.random.default_rng(1)
    z = rng.uniform(-1, 4, (50, 20))
    z[::7] = 8.5  # never above: skipped
    rho = rng.uniform(0, 0.9, 50)
    whole = breach_probabilities(z, rho, 2)[0]
    chunked = breach_probabilities(z, rho, 2, chunk_size=6)[0]
    np.testing.assert_allclose(whole, chunked)
    assert (whole[::7] == 0).all()


def test_median_breach_day_is_the_half_way_day_given_a_breach():
    cumulative = np.array([[0.0, 0.1, 0.2, 0.4], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    assert median_breach_day(cumulative).tolist() == [3, 0, 1]


def test_tiers_from_probability_cutoffs_and_recent_days():
    probability_80 = np.array([0.6, 0.6, 0.3, 0.0, 0.0, 0.1])
    probability_90 = np.array([0.5, 0.2, 0.1, 0.0, 0.0, 0.0])
    recent_80 = np.array([False, False, False, True, False, False])
    recent_90 = np.array([False, False, False, False, False, False])
    mean = np.array([70.0, 70.0, 70.0, 30.0, 30.0, 50.0])
    tiers = assign_tiers(probability_80, probability_90, recent_80, recent_90, mean, 0.5, 0.5, 40.0)
    assert tiers.tolist() == ["very_high", "high", "normal", "high", "underutilized", "normal"]
    stricter = assign_tiers(probability_80, probability_90, recent_80, recent_90, mean, 0.7, 0.7, 40.0)
    assert stricter.tolist() == ["normal", "normal", "normal", "high", "underutilized", "normal"]


def test_z90_is_the_normal_90_percent_quantile():
    assert ndtr(Z90) == pytest.approx(0.9)


def test_history_breach_probability_by_hand():
    # 1 episode in 28 observed days over 14 days: 1 - (27/28)^14 = 0.3990; median day: first d with
    # 1 - (27/28)^d >= 0.1995, d = ceil(ln(0.8005) / ln(27/28)) = ceil(6.13) = 7. No episode, no observed
    # day or no forecast day: 0. An episode every day: certain, on day 1.
    probability, day = history_breach_probability(
        np.array([1, 0, 1, 1, 28]), np.array([28, 28, 0, 28, 28]), np.array([14, 14, 14, 0, 30])
    )
    assert probability == pytest.approx([1 - (27 / 28) ** 14, 0.0, 0.0, 0.0, 1.0])
    assert day.tolist() == [7, 0, 0, 0, 1]
    combined, when = combine_breach((np.array([0.2, 0.5]), np.array([3, 9])), (probability[:2], day[:2]))
    assert combined == pytest.approx([1 - (27 / 28) ** 14, 0.5]) and when.tolist() == [7, 9]
