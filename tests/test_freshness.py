import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.freshness import analysis_date, find_stale_servers, last_observed_days


def _fleet(
    last_observed: dict[str, int], days: int = 30, imputed_tail: dict[str, int] | None = None
) -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=days)
    frames = []
    for server, n_observed in last_observed.items():
        value = np.where(np.arange(days) < n_observed, 50.0, np.nan)
        imputed = np.zeros(days, bool)
        if imputed_tail and server in imputed_tail:
            imputed[n_observed - imputed_tail[server] : n_observed] = True
        frames.append(
            pd.DataFrame(
                {
                    "server_id": server,
                    "metric": "cpu_p95",
                    "date": dates,
                    "value": value,
                    "is_imputed": imputed,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_days_silent_count_from_the_fleets_last_day():
    fleet = _fleet({"a": 30, "b": 15, "c": 28})
    days = last_observed_days(fleet).set_index("server_id")
    assert analysis_date(fleet) == pd.Timestamp("2024-01-30")
    assert days["days_silent"].to_dict() == {"a": 0, "b": 15, "c": 2}


def test_only_servers_silent_longer_than_the_limit_are_stale():
    stale = find_stale_servers(_fleet({"a": 30, "b": 15, "c": 22}), stale_after_days=7)
    assert stale["server_id"].tolist() == ["b", "c"]
    assert stale["last_day"].tolist() == [pd.Timestamp("2024-01-15"), pd.Timestamp("2024-01-22")]


def test_imputed_days_are_not_reports():
    stale = find_stale_servers(_fleet({"a": 30, "b": 30}, imputed_tail={"b": 10}), stale_after_days=7)
    assert stale["server_id"].tolist() == ["b"]
    assert stale["days_silent"].tolist() == [10]


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="stale_after_days"):
        find_stale_servers(_fleet({"a": 30}), stale_after_days=-1)
