"""etl through a KedroSession on files in data_root, through the MetricsExportDataset, on the Bitbrains
export."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import s3fs
import yaml

from capacity_forecaster.datasets.metrics_export import MetricsExportDataset
from capacity_forecaster.pipelines.etl import create_pipeline
from capacity_forecaster.pipelines.etl.nodes import (
    aggregate_daily_metrics,
    build_data_quality_report,
    build_server_features,
    clean_daily_metrics,
    validate_raw_metrics,
)
from capacity_forecaster.schema import METRICS
from tests.conftest import PROJECT_PATH
from tests.pipelines.etl.test_nodes import (
    CALENDAR,
    CLEAN_DEFAULTS,
    PARAMS,
    STALE_AFTER_DAYS,
    daily_frame,
    inventory,
)

M = list(METRICS)
BITBRAINS = PROJECT_PATH / "../shared/data/bitbrains_rnd_sample_5min.csv.gz"
BITBRAINS_PARAMS = yaml.safe_load((PROJECT_PATH / "conf/bitbrains/parameters.yml").read_text())["etl"]


# ------------------------------------------------------------------------------------------ dataset
@pytest.mark.parametrize("name", ["metrics.csv", "metrics.csv.gz", "metrics.parquet"])
def test_metrics_export_dataset_round_trip_records_source(tmp_path, name):
    frame = daily_frame(5)
    dataset = MetricsExportDataset(filepath=str(tmp_path / name))
    dataset.save(frame)
    loaded = dataset.load()
    assert loaded.attrs["source"] == str(tmp_path / name)
    pd.testing.assert_frame_equal(loaded.drop(columns=[]), frame, check_dtype=False)
    if name.endswith(".gz"):
        with gzip.open(tmp_path / name, "rt") as handle:  # really gzip, not text with a .gz name
            assert handle.readline().strip() == ",".join(frame.columns)


def test_metrics_export_dataset_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the format of '.*metrics\.xlsx'"):
        MetricsExportDataset(filepath=str(tmp_path / "metrics.xlsx"))


def test_metrics_export_dataset_reads_s3(aws):
    s3fs.S3FileSystem().mkdir("cf-etl")
    dataset = MetricsExportDataset(filepath="s3://cf-etl/raw/metrics.csv.gz")
    dataset.save(daily_frame(3))
    loaded = dataset.load()
    assert loaded.attrs["source"] == "s3://cf-etl/raw/metrics.csv.gz" and len(loaded) == 6


# ------------------------------------------------------------------------------------------ Kedro run
def test_etl_pipeline_runs_through_kedro_session(kedro_session, data_root):
    raw = daily_frame(200, servers=("srv-1", "srv-2", "srv-3"))
    raw.loc[50, "cpu_p95"] = 140.0
    raw = raw.drop(index=range(100, 103))
    raw = pd.concat([raw, raw.iloc[[7]]], ignore_index=True)
    (data_root / "01_raw").mkdir()
    raw.to_csv(data_root / "01_raw/server_metrics.csv.gz", index=False, compression="gzip")
    inventory("srv-1", "srv-2", "srv-3").to_csv(data_root / "01_raw/server_inventory.csv", index=False)

    with kedro_session() as session:
        session.run(pipeline_names=["etl"])

    clean = pd.read_parquet(data_root / "03_primary/clean_server_metrics.parquet")
    features = pd.read_parquet(data_root / "04_feature/server_features.parquet")
    report = json.loads((data_root / "08_reporting/data_quality_report.json").read_text())
    assert len(clean) == 3 * 4 * 200 == len(features) == report["values_out"]
    assert list(clean.columns) == [
        "server_id",
        "metric",
        "date",
        "value",
        "is_imputed",
        "is_clipped",
        "is_outlier",
    ]
    assert clean["date"].dtype == "datetime64[ns]" and clean["value"].between(0, 100).all()
    assert report["rows_in"] == len(raw) and report["duplicates_removed"] == 1
    assert report["values_imputed"] == 12 and report["values_clipped"] == 1
    assert report["source"].endswith("01_raw/server_metrics.csv.gz")
    assert {"lag_1", "lag_364", "rolling_std_30", "is_holiday"} <= set(features.columns)


def test_etl_pipeline_names_the_catalog_file_on_bad_input(kedro_session, data_root):
    raw = daily_frame(20, servers=("srv-1",))
    raw.loc[3, "timestamp"] = "03/01/2023 5pm"
    (data_root / "01_raw").mkdir()
    raw.to_csv(data_root / "01_raw/server_metrics.csv.gz", index=False, compression="gzip")
    inventory("srv-1").to_csv(data_root / "01_raw/server_inventory.csv", index=False)
    with (
        kedro_session() as session,
        pytest.raises(Exception, match=r"server_metrics\.csv\.gz, column 'timestamp'"),
    ):
        session.run(pipeline_names=["etl"])


def test_pipeline_nodes_are_named_and_namespaced():
    pipeline = create_pipeline()
    assert {n.name for n in pipeline.nodes} == {
        "etl.split_raw_metrics_node",
        "etl.clean_metric_shards_node",
        "etl.build_data_quality_report_node",
    }
    assert pipeline.inputs() >= {"raw_server_metrics", "server_inventory"}
    assert {"clean_server_metrics", "server_features", "data_quality_report"} <= pipeline.all_outputs()


# ------------------------------------------------------------------------------------------ Bitbrains
@pytest.mark.skipif(not BITBRAINS.exists(), reason=f"real Bitbrains sample not present at {BITBRAINS}")
def test_real_bitbrains_5_minute_export():
    """10 real VMs, 5-minute samples with per-VM phase and jitter, day-long gaps, throughputs in KB/s."""
    raw = MetricsExportDataset(filepath=str(BITBRAINS)).load()
    servers = sorted(raw["server_id"].unique())
    with pytest.raises(ValueError, match=r"bitbrains_rnd_sample_5min\.csv\.gz: required column"):
        validate_raw_metrics(raw, inventory(*servers), {}, {}, "error")  # export names need the mapping

    validated, v_stats = validate_raw_metrics(
        raw,
        inventory(*servers),
        BITBRAINS_PARAMS["column_mapping"],
        BITBRAINS_PARAMS["throughput_capacity"],
        "error",
    )
    daily, a_stats = aggregate_daily_metrics(validated, PARAMS["min_daily_coverage"])
    clean, c_stats = clean_daily_metrics(daily, **CLEAN_DEFAULTS)
    report = build_data_quality_report(v_stats, a_stats, c_stats, STALE_AFTER_DAYS)
    features = build_server_features(clean, PARAMS["lags"], PARAMS["rolling_windows"], **CALENDAR)

    assert report["sampling"] == "sub-daily" and report["servers"] == 10 and report["rows_in"] == 251_915
    assert report["subdaily_samples_aggregated"] > 240_000
    per_server = clean.groupby("server_id")["date"].nunique()
    assert per_server.between(85, 93).all()  # ~92 days of history
    assert clean["value"].between(0, 100).all() or clean["value"].isna().any()
    assert clean["value"].dropna().between(0, 100).all()
    # the partial first day (samples start 22:00) is not kept as a biased P95
    assert report["sparse_edge_days_dropped"] >= 10
    # the ~24 h gaps on 2013-07-31 / 2013-08-31 are short: filled and marked, not left as holes
    assert clean.loc[clean["date"].isin(pd.to_datetime(["2013-07-31", "2013-08-31"])), "is_imputed"].any()
    # one VM's daily cpu P95 by hand
    vm = servers[0]
    samples = raw[(raw["server_id"] == vm) & raw["timestamp"].str.startswith("2013-08-15")]["cpu_pct"]
    day = clean[(clean["server_id"] == vm) & (clean["metric"] == "cpu_p95") & (clean["date"] == "2013-08-15")]
    assert day["value"].item() == pytest.approx(np.quantile(samples, 0.95))
    # short history: the long lags exist but are empty, the short ones are filled
    assert features["lag_364"].isna().all() and features["lag_7"].notna().mean() > 0.8


@pytest.mark.skipif(not BITBRAINS.exists(), reason=f"real Bitbrains sample not present at {BITBRAINS}")
def test_bitbrains_env_runs_without_inventory_and_a_dotted_override_changes_one_key(kedro_session, data_root):
    """``kedro run --env bitbrains --pipelines etl --params etl.high_threshold=90``: the env's own etl keys,
    the override and base's other etl defaults all apply (parameters merge key by key); no real peak is
    replaced."""
    with kedro_session(env="bitbrains", runtime_params={"etl": {"high_threshold": 90}}) as session:
        session.run(pipeline_names=["etl"])
    report = json.loads((data_root / "08_reporting/data_quality_report.json").read_text())
    assert report["high_threshold"] == 90  # the override
    assert report["unknown_servers_action"] == "keep" and len(report["unknown_servers"]) == 10  # the env
    assert report["valid_date_range"][0] == "2000-01-01" and report["rows_out"] == 910  # base defaults
    assert report["outliers_replaced"] == 0 and report["days_replaced_above_high_threshold"] == 0
    assert {d["rule"] for d in report["replaced_days"]} == {"partial_day"}
