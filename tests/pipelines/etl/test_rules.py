"""The rules of issues 13 and 14 on small constructed inputs (and one real day): real peaks are kept, every
replaced day is listed, 0-1 ratios, implausible dates, conflicting duplicates, booleans, content sniffing,
stale and unknown servers."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.datasets.metrics_export import MetricsExportDataset
from capacity_forecaster.datasets.optional import OptionalCSVDataset
from capacity_forecaster.freshness import analysis_date, find_stale_servers
from capacity_forecaster.pipelines.etl.nodes import (
    RawMetricsError,
    aggregate_daily_metrics,
    build_data_quality_report,
    clean_daily_metrics,
    validate_raw_metrics,
)
from capacity_forecaster.schema import METRICS
from tests.conftest import PROJECT_PATH
from tests.pipelines.etl.test_nodes import (
    CLEAN_DEFAULTS,
    STALE_AFTER_DAYS,
    daily_frame,
    inventory,
    load_from_file,
    series,
)

M = list(METRICS)
BITBRAINS = PROJECT_PATH / "../shared/data/bitbrains_rnd_sample_5min.csv.gz"
BITBRAINS_MAPPING = {"cpu_pct": "cpu_p95", "memory_pct": "memory_p95"}
BITBRAINS_CAPACITY = {"disk_io_p95": 102400, "network_p95": 125000}


def run_etl(raw: pd.DataFrame, inv: pd.DataFrame | None = None, **validate) -> tuple[pd.DataFrame, dict]:
    """validate -> aggregate -> clean -> report with the default parameters; returns the table and report."""
    inv = inventory(*raw["server_id"].unique()) if inv is None else inv
    args = {"column_mapping": {}, "throughput_capacity": {}, "unknown_servers": "error", **validate}
    validated, v_stats = validate_raw_metrics(raw, inv, **args)
    daily, a_stats = aggregate_daily_metrics(validated, 0.5)
    clean, c_stats = clean_daily_metrics(daily, **CLEAN_DEFAULTS)
    return clean, build_data_quality_report(v_stats, a_stats, c_stats, STALE_AFTER_DAYS)


def five_minute_frame(days: int = 35, level: float = 20.0, seed: int = 0) -> pd.DataFrame:
    """One server's 5-minute samples around ``level`` % with a daily shape and noise."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2023-03-01", periods=days * 288, freq="5min")
    shape = 1 + 0.3 * np.sin(2 * np.pi * times.hour / 24)
    values = {m: np.clip(level * shape + rng.normal(0, 2, len(times)), 0, 100) for m in M}
    return pd.DataFrame({"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "server_id": "vm", **values})


# ------------------------------------------------------------------------------------ real peaks are kept
def test_sub_daily_saturation_day_is_kept_and_only_flagged():
    raw = five_minute_frame()
    day = raw["timestamp"].str.startswith("2023-03-16")
    raw.loc[day, "cpu_p95"] = 100.0  # a real saturation day of a VM that idles at ~20 %
    clean, report = run_etl(raw)
    row = series(clean, "vm", "cpu_p95").loc["2023-03-16"]
    assert row["value"] == 100.0 and not row["is_imputed"] and row["is_outlier"]
    assert report["outliers_replaced"] == 0 and report["outliers_kept_sub_daily"] >= 1
    assert report["days_replaced"] == 0 and report["replaced_days"] == []
    assert report["days_replaced_above_high_threshold"] == 0


def test_daily_glitch_above_the_high_threshold_is_replaced_and_listed():
    raw = daily_frame(90)
    raw.loc[45, "network_p95"] = 97.0  # a one-day glitch in a daily export (server a, 2023-02-16)
    raw.loc[50, "cpu_p95"] = 130.0  # impossible: clipped, then replaced as an outlier
    clean, report = run_etl(raw)
    listed = pd.DataFrame(report["replaced_days"]).set_index(["metric", "date"])
    assert report["days_replaced"] == len(listed) == report["outliers_replaced"] == 2
    glitch = listed.loc[("network_p95", "2023-02-16")]
    after = series(clean, "a", "network_p95").loc["2023-02-16", "value"]
    assert glitch["server_id"] == "a" and glitch["before"] == 97.0 and glitch["rule"] == "outlier_daily_value"
    assert glitch["after"] == pytest.approx(after, abs=0.01) and after < 80
    assert listed.loc[("cpu_p95", "2023-02-21"), "before"] == 130.0  # the raw value, before clipping
    assert report["days_replaced_above_high_threshold"] == 2
    assert set(report["replaced_day_rules"]) == {"outlier_daily_value", "partial_day"}
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


@pytest.mark.skipif(not BITBRAINS.exists(), reason=f"real Bitbrains sample not present at {BITBRAINS}")
def test_real_peak_day_from_the_bitbrains_sample_is_kept():
    """bb-rnd-0017 idles near 1 % cpu; on 2013-07-02 its 5-minute P95 is 38.6 %. The robust rule flags the day
    (it once replaced it by 0.97 %); as a P95 of ~288 real samples it must stay what it is."""
    raw = MetricsExportDataset(filepath=str(BITBRAINS)).load()
    vm = raw.loc[raw["server_id"] == "bb-rnd-0017"].reset_index(drop=True)
    vm.attrs = raw.attrs
    clean, report = run_etl(
        vm,
        column_mapping={**BITBRAINS_MAPPING, "disk_io_kbps": "disk_io_p95", "network_kbps": "network_p95"},
        throughput_capacity=BITBRAINS_CAPACITY,
    )
    samples = vm.loc[vm["timestamp"].str.startswith("2013-07-02"), "cpu_pct"]
    cpu = series(clean, "bb-rnd-0017", "cpu_p95")
    day = cpu.loc["2013-07-02"]
    assert day["value"] == pytest.approx(np.quantile(samples, 0.95)) and day["value"] > 30
    assert day["is_outlier"] and not day["is_imputed"]  # flagged as unusual, kept as real
    assert cpu["value"].median() < 5  # it really is this VM's peak, far above its usual level
    assert not any(d["rule"] == "outlier_daily_value" for d in report["replaced_days"])


# ------------------------------------------------------------------------------------ 0-1 ratios
def test_ratio_export_stops_with_value_scale_hint_and_runs_once_it_is_set(tmp_path):
    raw = daily_frame(60)
    raw[["cpu_p95", "memory_p95"]] = (raw[["cpu_p95", "memory_p95"]] / 100).round(4)
    raw = load_from_file(raw, tmp_path / "prometheus.csv")
    with pytest.raises(RawMetricsError) as err:
        validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    message = str(err.value)
    assert "prometheus.csv, column 'cpu_p95'" in message and "column 'memory_p95'" in message
    assert "value_scale {cpu_p95: 100}" in message and "0-1 ratios" in message and "row 0" in message
    assert "disk_io_p95" not in message

    validated, stats = validate_raw_metrics(
        raw, inventory("a", "b"), {}, {}, "error", value_scale={"cpu_p95": 100, "memory_p95": 100}
    )
    assert validated["cpu_p95"].to_numpy() == pytest.approx(raw["cpu_p95"].to_numpy() * 100)
    assert validated["disk_io_p95"].to_numpy() == pytest.approx(raw["disk_io_p95"].to_numpy())
    assert stats["value_scale"] == {"cpu_p95": 100.0, "memory_p95": 100.0}
    confirmed, _ = validate_raw_metrics(  # really percentages below 1 %: a factor of 1 says so
        raw, inventory("a", "b"), {}, {}, "error", value_scale={"cpu_p95": 1, "memory_p95": 1}
    )
    assert confirmed["cpu_p95"].max() <= 1


# ------------------------------------------------------------------------------------ dates
@pytest.mark.parametrize("bad", ["1970-01-01", "2031-02-14"])
def test_dates_outside_the_plausible_range_are_an_error_naming_the_rows(tmp_path, bad):
    raw = daily_frame(20)
    raw.loc[7, "timestamp"] = bad
    raw = load_from_file(raw, tmp_path / "typo.csv")
    with pytest.raises(RawMetricsError) as err:
        validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    message = str(err.value)
    assert "typo.csv, column 'timestamp': 1 row(s) fall outside the plausible range 2000-01-01" in message
    assert f"row 7 (timestamp='{bad}'" in message and "params:etl.valid_date_range" in message


def test_valid_date_range_is_configurable():
    raw = daily_frame(20)
    validated, stats = validate_raw_metrics(
        raw, inventory("a", "b"), {}, {}, "error", valid_date_range={"min": "2022-12-31", "max": "2023-01-21"}
    )
    assert len(validated) == len(raw) and stats["valid_date_range"] == ["2022-12-31", "2023-01-21"]
    with pytest.raises(RawMetricsError, match=r"2 row\(s\) fall outside the plausible range 2023-01-03 \.\."):
        validate_raw_metrics(
            raw, inventory("a", "b"), {}, {}, "error", valid_date_range={"min": "2023-01-03"}
        )


# ------------------------------------------------------------------------------------ conflicting duplicates
@pytest.mark.parametrize("in_export_order", [True, False])  # neighbours compared, or a hash of the keys
def test_conflicting_duplicates_are_merged_by_max_counted_and_listed(in_export_order):
    raw = daily_frame(30)
    twin = raw.iloc[[4]].copy()
    twin["cpu_p95"] = 91.5  # same server and timestamp, a different value
    exact = raw.iloc[[9]]  # an exact duplicate stays a duplicate
    raw = pd.concat([raw, twin, exact], ignore_index=True)
    if in_export_order:
        raw = raw.sort_values(["server_id", "timestamp"], kind="stable", ignore_index=True)
    clean, report = run_etl(raw)
    conflicts = report["conflicting_duplicates"]
    assert report["conflicting_rows_merged"] == conflicts["rows_merged"] == 1 and conflicts["timestamps"] == 1
    assert report["duplicates_removed"] == 1 and "max" in conflicts["rule"]
    example = conflicts["examples"][0]
    assert example["server_id"] == "a" and example["timestamp"].startswith("2023-01-06")
    original = daily_frame(30).loc[4, "cpu_p95"]
    assert sorted(example["cpu_p95"]) == sorted([original, 91.5])
    assert report["rows_in"] == len(raw) == report["daily_rows_observed"] + 2  # the accounting still adds up
    assert len(clean) == 2 * 30 * 4
    validated, _ = validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    daily, _ = aggregate_daily_metrics(validated, 0.5)
    merged = daily.set_index(["server_id", "date"]).loc[("a", pd.Timestamp("2023-01-06"))]
    assert merged["cpu_p95"] == 91.5 and merged["memory_p95"] == daily_frame(30).loc[4, "memory_p95"]  # max


# ------------------------------------------------------------------------------------ booleans
def test_boolean_metric_column_is_rejected(tmp_path):
    raw = daily_frame(10)
    raw["network_p95"] = raw["network_p95"] > 40
    raw = load_from_file(raw, tmp_path / "flags.csv")
    assert raw["network_p95"].dtype == bool  # pandas reads True/False as booleans
    with pytest.raises(RawMetricsError, match=r"flags\.csv, column 'network_p95': 20 row\(s\) hold booleans"):
        validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")


# ------------------------------------------------------------------------------------ content sniffing
def test_parquet_named_csv_is_read_as_parquet(tmp_path):
    frame = daily_frame(5)
    frame.to_parquet(tmp_path / "export.csv")
    loaded = MetricsExportDataset(filepath=str(tmp_path / "export.csv")).load()
    pd.testing.assert_frame_equal(loaded, frame)
    assert loaded.attrs["source"] == str(tmp_path / "export.csv")


@pytest.mark.parametrize(("sep", "name"), [(";", "export.csv"), ("\t", "export.csv.gz"), ("|", "export.txt")])
def test_csv_delimiter_is_detected(tmp_path, sep, name):
    frame = daily_frame(5)
    frame.to_csv(tmp_path / name, sep=sep, index=False)
    loaded = MetricsExportDataset(filepath=str(tmp_path / name)).load()
    pd.testing.assert_frame_equal(loaded, frame)


def test_gzip_csv_without_gz_suffix_is_read(tmp_path):
    frame = daily_frame(5)
    frame.to_csv(tmp_path / "export.csv", index=False, compression="gzip")
    pd.testing.assert_frame_equal(MetricsExportDataset(filepath=str(tmp_path / "export.csv")).load(), frame)


def test_excel_file_named_csv_is_a_clear_error(tmp_path):
    with zipfile.ZipFile(tmp_path / "export.csv", "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(Exception, match=r"export\.csv: not a CSV or Parquet export, it holds a ZIP archive"):
        MetricsExportDataset(filepath=str(tmp_path / "export.csv")).load()


def test_single_joined_column_gets_a_delimiter_hint():
    frame = daily_frame(3)
    joined = pd.DataFrame({";".join(frame.columns): frame.astype(str).agg(";".join, axis=1)})
    with pytest.raises(RawMetricsError, match=r"separated by ';', not ','.*load_args: \{sep: ';'\}"):
        validate_raw_metrics(joined, inventory("a", "b"), {}, {}, "error")


# ------------------------------------------------------------------------------------ stale servers
def test_server_that_stopped_reporting_is_listed_as_stale_without_invented_rows():
    raw = daily_frame(60, servers=("a", "b", "quiet", "hollow"))
    dates = pd.to_datetime(raw["timestamp"])
    raw = raw.loc[~((raw["server_id"] == "quiet") & (dates > dates.max() - pd.Timedelta(days=18)))].copy()
    hollow = (raw["server_id"] == "hollow") & (
        pd.to_datetime(raw["timestamp"]) > dates.max() - pd.Timedelta(days=10)
    )
    raw.loc[hollow, M] = np.nan  # rows still exported, with empty values
    clean, report = run_etl(raw)
    assert report["stale_after_days"] == STALE_AFTER_DAYS and report["analysis_date"] == "2023-03-02"
    assert report["stale_servers"] == [
        {"server_id": "quiet", "last_day": "2023-02-12", "days_silent": 18},
        {"server_id": "hollow", "last_day": "2023-02-20", "days_silent": 10},
    ]
    quiet = clean.loc[clean["server_id"] == "quiet", "date"]
    assert quiet.max() == pd.Timestamp("2023-02-12")  # its calendar ends at its own last day
    assert [g["server_id"] for g in report["long_gaps"]] == [
        "hollow"
    ]  # its empty tail is reported, not filled


def test_report_applies_the_freshness_rule_as_on_the_clean_table():
    raw = daily_frame(60, servers=("a", "b", "c"))
    raw.loc[(raw["server_id"] == "b") & (raw["timestamp"] >= "2023-02-20"), M] = np.nan
    raw.loc[(raw["server_id"] == "c") & (raw["timestamp"] == "2023-03-02"), "cpu_p95"] = (
        99.0  # replaced glitch
    )
    raw.loc[(raw["server_id"] == "c") & (raw["timestamp"] == "2023-03-02"), M[1:]] = np.nan
    validated, _ = validate_raw_metrics(raw, inventory("a", "b", "c"), {}, {}, "error")
    daily, _ = aggregate_daily_metrics(validated, 0.5)
    clean, stats = clean_daily_metrics(daily, **CLEAN_DEFAULTS)
    for days in (0, 1, 7, 10):
        pd.testing.assert_frame_equal(
            find_stale_servers(stats["server_last_days"], days), find_stale_servers(clean, days)
        )
    assert analysis_date(stats["server_last_days"]) == analysis_date(clean)
    # b's tail is empty; c's last value is an edge glitch: flagged, kept, so observed
    assert find_stale_servers(clean, 0)["server_id"].tolist() == ["b"]


# ------------------------------------------------------------------------------------ unknown servers
def test_unknown_servers_keep_without_an_inventory_file(tmp_path):
    inv = OptionalCSVDataset(
        filepath=str(tmp_path / "missing.csv"), columns=["server_id", "archetype"]
    ).load()
    assert inv.empty and list(inv.columns) == ["server_id", "archetype"]
    raw = daily_frame(20)
    with pytest.raises(RawMetricsError, match=r"2 server\(s\): \['a', 'b'\]"):
        validate_raw_metrics(raw, inv, {}, {}, "error")
    clean, report = run_etl(raw, inv, unknown_servers="keep")
    assert report["unknown_servers"] == ["a", "b"] and report["unknown_servers_action"] == "keep"
    assert report["unknown_server_rows_kept"] == len(raw) and report["unknown_server_rows_dropped"] == 0
    assert report["server_inventory"] == "0 server(s)" and set(clean["server_id"]) == {"a", "b"}
    inventory("a").to_csv(tmp_path / "present.csv", index=False)
    present = OptionalCSVDataset(filepath=str(tmp_path / "present.csv"), columns=["server_id"]).load()
    _, report = run_etl(raw, present, unknown_servers="keep")
    assert report["unknown_servers"] == ["b"] and report["unknown_server_rows_kept"] == 20


@pytest.mark.parametrize(("busy_samples", "kept"), [(24, True), (10, False)])
def test_partial_day_is_never_imputed_below_what_its_samples_prove(busy_samples, kept):
    """Only ``busy_samples`` 5-minute samples (all at 100 %) survive on 2023-03-16 of a VM at ~20 %. With 288
    samples in a full day, 16 samples at 100 % already make its P95 100 %: 24 prove the peak, 10 do not."""
    raw = five_minute_frame()
    day = raw.index[raw["timestamp"].str.startswith("2023-03-16")]
    raw = raw.drop(index=day[busy_samples:])
    raw.loc[day[:busy_samples], "cpu_p95"] = 100.0
    clean, report = run_etl(raw)
    row = series(clean, "vm", "cpu_p95").loc["2023-03-16"]
    assert row["is_imputed"] and (row["value"] == 100.0) == kept and (kept or row["value"] < 40)
    listed = [d for d in report["replaced_days"] if d["metric"] == "cpu_p95"]
    assert listed == [
        {
            "server_id": "vm",
            "metric": "cpu_p95",
            "date": "2023-03-16",
            "before": 100.0,
            "after": round(row["value"], 2),
            "rule": "partial_day",
        }
    ]
    assert report["days_replaced_above_high_threshold"] == (0 if kept else 1)  # lowered: counted and logged
