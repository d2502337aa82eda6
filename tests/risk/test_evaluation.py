"""The risk backtest on a constructed fleet with known breaches, and the error dependence estimate."""

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.risk.dependence import estimate_dependence, rho_for
from capacity_forecaster.risk.evaluation import backtest_risk_flags

FIRST, SECOND = pd.Timestamp("2025-11-30"), pd.Timestamp("2025-12-15")
FOLD_DAYS = 10
THRESHOLDS = {"high": 80.0, "very_high": 90.0}
CUTOFFS = {"high": 0.5, "very_high": 0.5}
FALLBACK = {"fallback": 0.8, "min_pairs": 50, "by_metric": {}}


def _fold(server: str, origin: pd.Timestamp, p50: float, actual: np.ndarray) -> pd.DataFrame:
    spread = 3.0 if p50 > 80 else 5.0  # hot forecasts: p90 88, so breaching 90 stays unlikely
    return pd.DataFrame(
        {
            "server_id": server,
            "metric": "cpu_p95",
            "origin": origin,
            "date": pd.date_range(origin + pd.Timedelta(days=1), periods=FOLD_DAYS, freq="D"),
            "h": np.arange(1, FOLD_DAYS + 1),
            "model": "trees",
            "p10": p50 - 5.0,
            "p50": p50,
            "p90": p50 + spread,
            "actual": actual,
        }
    )


def _with(day: int, value: float, base: float = 50.0) -> np.ndarray:
    values = np.full(FOLD_DAYS, base)
    values[day - 1] = value
    return values


def constructed_fleet() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four servers, two origins 15 days apart, cpu only. By hand (high threshold, 8 cases):

    a: hot forecast at both origins; breaches on day 3 after the first (hit, lead 3), not after the second
       (false alarm). b: calm forecast, breaches on day 6 after the first (miss), calm after the second.
    c: calm forecast, but 3 of its 14 days before the second origin were above 80 % (recent-days flag);
       breaches on day 2 after it (hit, lead 2). d: calm throughout.
    Rule = forecast or recent: flagged {a1, a2, c2}, breached {a1, b1, c2}: precision 2/3, recall 2/3,
    lead times 3 and 2. Forecast alone: {a1, a2}: precision 1/2, recall 1/3. Recent alone: {c2}: 1/1, 1/3.
    The history's probability at c2 (3 single-day episodes in the 28 days before it, over 10 fold days):
    1 - (25/28)^10 = 0.678 >= 0.5, so the probability flag (forecast or history) is {a1, a2, c2}: 2/3, 2/3.
    """
    folds = [
        _fold("a", FIRST, 85.0, _with(3, 86.0)),
        _fold("a", SECOND, 85.0, np.full(FOLD_DAYS, 70.0)),
        _fold("b", FIRST, 50.0, _with(6, 85.0)),
        _fold("b", SECOND, 50.0, np.full(FOLD_DAYS, 50.0)),
        _fold("c", FIRST, 45.0, np.full(FOLD_DAYS, 45.0)),
        _fold("c", SECOND, 45.0, _with(2, 82.0, base=45.0)),
        _fold("d", FIRST, 20.0, np.full(FOLD_DAYS, 20.0)),
        _fold("d", SECOND, 20.0, np.full(FOLD_DAYS, 20.0)),
    ]
    dates = pd.date_range("2025-10-01", "2025-12-31", freq="D")
    clean = []
    for server in "abcd":
        values = pd.Series(40.0, index=dates)
        if server == "c":
            values[pd.to_datetime(["2025-12-10", "2025-12-12", "2025-12-14"])] = 85.0
        clean.append(
            pd.DataFrame({"server_id": server, "metric": "cpu_p95", "date": dates, "value": values.values})
        )
    return pd.concat(folds, ignore_index=True), pd.concat(clean, ignore_index=True).assign(is_imputed=False)


def _backtest(**overrides):
    backtest, clean = constructed_fleet()
    arguments = {
        "thresholds": THRESHOLDS,
        "cutoffs": CUTOFFS,
        "breach_min_days": 1,
        "recent_window_days": 14,
        "recent_min_days": 2,
        "exceedance_window_days": 28,
        **overrides,
    }
    return backtest_risk_flags(backtest, clean, FALLBACK, **arguments)


def test_risk_backtest_precision_recall_and_lead_time_by_hand():
    result = _backtest()
    assert result["available"] and result["origins"] == ["2025-11-30", "2025-12-15"]
    assert (result["cases"], result["fold_horizon_days"]) == (8, FOLD_DAYS)
    high = result["thresholds"]["80"]
    assert high["true_breaches"] == 3
    rule = high["forecast_or_recent"]["series"]
    assert (rule["precision"], rule["recall"]) == (0.6667, 0.6667)
    assert (rule["true_positives"], rule["false_positives"], rule["false_negatives"]) == (2, 1, 1)
    assert rule["lead_time"] == {"n": 2, "median_days": 2.5, "mean_days": 2.5, "min_days": 2}
    forecast = high["forecast"]["series"]
    assert (forecast["precision"], forecast["recall"]) == (0.6667, 0.6667)  # c2 through its history
    alone = _backtest(exceedance_window_days=0)["thresholds"]["80"]["forecast"]["series"]
    assert (alone["precision"], alone["recall"]) == (0.5, 0.3333)
    recent = high["recent"]["series"]
    assert (recent["precision"], recent["recall"]) == (1.0, 0.3333)
    assert high["forecast_or_recent"]["servers"]["precision"] == 0.6667  # one metric: servers = series
    very_high = result["thresholds"]["90"]
    assert very_high["true_breaches"] == 0 and very_high["forecast_or_recent"]["series"]["predicted"] == 0


def test_cutoff_scan_shows_what_each_cutoff_would_have_given():
    scan = {row["cutoff"]: row for row in _backtest()["thresholds"]["80"]["cutoff_scan"]}
    # a is certain to breach 80 by its forecast: every cut-off flags a1, a2; nothing else has a chance
    assert scan[0.9]["forecast"] == {"precision": 0.5, "recall": 0.3333, "f1": 0.4, "flagged": 2}
    assert scan[0.9]["forecast_or_recent"]["flagged"] == 3


def test_breach_on_n_days_needs_n_actual_days():
    result = _backtest(breach_min_days=2)
    assert result["thresholds"]["80"]["true_breaches"] == 0  # every actual breach is a single day


def test_no_backtest_says_so():
    _, clean = constructed_fleet()
    result = backtest_risk_flags(pd.DataFrame(), clean, FALLBACK, THRESHOLDS, CUTOFFS, 1, 14, 2, 28)
    assert result["available"] is False and "no risk backtest" in result["note"]


def test_backtest_in_another_schema_is_left_out_and_said_so():
    backtest, clean = constructed_fleet()
    old = backtest.rename(columns={"actual": "y", "server_id": "unique_id"})  # the older all-models file
    result = backtest_risk_flags(old, clean, FALLBACK, THRESHOLDS, CUTOFFS, 1, 14, 2, 28)
    assert result["available"] is False
    assert (
        "lacks column(s) ['server_id', 'actual']" in result["note"] and "re-run modelling" in result["note"]
    )
    assert estimate_dependence(old, 0.7, 50)["by_metric"] == {}


def _ar1_backtest(rho: float, series: int, days: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    error = np.empty((series, days))
    error[:, 0] = rng.standard_normal(series)
    for t in range(1, days):
        error[:, t] = rho * error[:, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(series)
    sigma = 10.0 / 1.2815515655446004  # p90 - p50 = 10
    frames = [
        pd.DataFrame(
            {
                "server_id": f"s{i}",
                "metric": "cpu_p95",
                "origin": FIRST,
                "date": pd.date_range(FIRST + pd.Timedelta(days=1), periods=days, freq="D"),
                "h": np.arange(1, days + 1),
                "p10": 40.0,
                "p50": 50.0,
                "p90": 60.0,
                "actual": 50.0 + sigma * error[i],
            }
        )
        for i in range(series)
    ]
    return pd.concat(frames, ignore_index=True)


def test_dependence_recovers_the_lag_1_correlation_of_the_errors():
    backtest = _ar1_backtest(0.6, 200, 30)
    dependence = estimate_dependence(
        backtest.sample(frac=1.0, random_state=0), 0.8, 50
    )  # order must not matter
    cpu = dependence["by_metric"]["cpu_p95"]
    assert cpu["source"] == "backtest" and cpu["pairs"] == 200 * 29
    assert cpu["rho"] == pytest.approx(0.6, abs=0.03)
    assert rho_for(dependence, pd.Series(["cpu_p95", "memory_p95"])).tolist() == [cpu["rho"], 0.8]


def test_dependence_falls_back_with_too_few_pairs_or_no_backtest():
    few = estimate_dependence(_ar1_backtest(0.6, 2, 10), 0.7, 50)
    assert few["by_metric"]["cpu_p95"] == {"rho": 0.7, "pairs": 18, "source": "fallback"}
    assert estimate_dependence(pd.DataFrame(), 0.7, 50) == {"fallback": 0.7, "min_pairs": 50, "by_metric": {}}
