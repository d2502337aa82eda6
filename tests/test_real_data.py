"""The real 10-VM Bitbrains sample (../shared/data) through etl -> modelling -> risk_analysis -> reporting.

Fed as a user would: the raw 5-minute export in the bitbrains env, defaults plus ``horizon=14``. 91 days of
history cannot hold 5 backtest origins of 90 days, has no year and no full quarter: every pipeline must adapt.
"""

import json

import pandas as pd
import pytest

from capacity_forecaster.schema import METRICS
from tests.conftest import PROJECT_PATH

SAMPLE = PROJECT_PATH.parent / "shared" / "data" / "bitbrains_rnd_sample_5min.csv.gz"
HORIZON = 14


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE.exists(), reason="the real sample lives in ../shared/data (CI always has it)")
def test_real_sample_runs_end_to_end_with_only_a_horizon(kedro_session, data_root, monkeypatch):
    monkeypatch.setenv("CF_BITBRAINS_FILE", str(SAMPLE))
    params = {"horizon": HORIZON}
    kedro_session(env="bitbrains", runtime_params=params).run(
        pipeline_names=["etl", "modelling", "risk_analysis", "reporting"]
    )
    catalog = kedro_session(env="bitbrains", runtime_params=params).load_context().catalog

    quality = catalog.load("data_quality_report")
    assert quality["accounting"]["balanced"]
    assert quality["days_replaced_above_high_threshold"] == 0  # no real peak is "cleaned" away

    clean = catalog.load("clean_server_metrics")
    forecasts = catalog.load("forecasts")
    selected = forecasts[forecasts["is_selected"]]
    days = selected.groupby(["server_id", "metric"]).size()
    assert len(days) == 10 * len(METRICS) and (days == HORIZON).all()
    assert selected[["p10", "p50", "p90"]].notna().all().all()
    assert (selected["p10"] <= selected["p50"]).all() and (selected["p50"] <= selected["p90"]).all()
    assert selected["history_days"].between(1, clean["date"].nunique()).all()

    leaderboard = catalog.load("model_leaderboard")
    backtest = leaderboard["backtest"]
    assert backtest["horizon"] == HORIZON and backtest["origins"] >= 1
    origins = pd.to_datetime(backtest["origin_dates"])
    assert (origins.to_series().diff().dropna() >= pd.Timedelta(days=7)).all()  # folds a week apart at least
    assert leaderboard["seasonal_terms_off"]  # no yearly term on 91 days, say so

    register = catalog.load("risk_register")
    assert set(register["server_id"]) == set(clean["server_id"])
    assert register[["prob_above_80", "prob_above_90"]].stack().between(0, 1).all()
    assert not register["stale"].any()
    evaluation = catalog.load("risk_evaluation")
    assert evaluation["backtest"]  # evaluated on its own history although there is no truth

    report = (data_root / "08_reporting" / "capacity_report.html").read_text()
    assert "Servers at risk" in report
    assert json.loads(json.dumps(catalog.load("risk_summary")))["servers"] == 10
    assert pd.Timestamp(catalog.load("risk_summary")["analysis_date"]) == clean["date"].max()
