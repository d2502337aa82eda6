"""data_generation then etl through a KedroSession into a temp dir: the catalog outputs fit together."""

import pandas as pd

from capacity_forecaster.schema import METRICS

SMALL_FLEET = {"data_generation": {"n_servers": 16, "history_days": 400}}


def test_generated_fleet_goes_through_etl(kedro_session, data_root):
    kedro_session(runtime_params=SMALL_FLEET).run(pipeline_names=["data_generation", "etl"])
    catalog = kedro_session(runtime_params=SMALL_FLEET).load_context().catalog

    inventory = catalog.load("server_inventory")
    raw = catalog.load("raw_server_metrics")
    clean = catalog.load("clean_server_metrics")
    features = catalog.load("server_features")
    report = catalog.load("data_quality_report")

    assert (data_root / "03_primary" / "clean_server_metrics.parquet").exists()
    assert set(clean["server_id"]) == set(inventory["server_id"])
    assert set(clean["metric"]) == set(METRICS)
    # One row per server, metric and day of the 400-day history: the dirt (gaps, duplicates) is cleaned away.
    days = pd.to_datetime(raw["timestamp"]).nunique()
    assert days == 400
    assert len(clean) == 16 * len(METRICS) * days
    assert not clean.duplicated(["server_id", "metric", "date"]).any()
    assert clean["value"].dropna().between(0, 100).all()
    assert report["rows_in"] == len(raw) and report["accounting"]["balanced"]
    assert report["duplicates_removed"] > 0 and report["values_imputed"] > 0
    keys = ["server_id", "metric", "date"]  # the catalog loads clean's server_id and metric as categoricals
    assert features[keys].equals(clean[keys].astype(features[keys].dtypes.to_dict()))
    assert {"lag_1", "lag_90", "rolling_mean_7", "is_end_of_quarter", "is_holiday"} <= set(features.columns)
