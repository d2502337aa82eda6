"""Unit tests of the etl nodes on tiny inline frames: validation errors, daily P95, every cleaning rule,
the quality report's accounting and leak-free features."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.datasets.metrics_export import MetricsExportDataset
from capacity_forecaster.pipelines.etl.nodes import (
    RawMetricsError,
    aggregate_daily_metrics,
    build_data_quality_report,
    build_server_features,
    clean_daily_metrics,
    validate_raw_metrics,
)
from capacity_forecaster.schema import METRICS
from tests.conftest import PROJECT_PATH

M = list(METRICS)
PARAMS = yaml.safe_load((PROJECT_PATH / "conf/base/parameters_etl.yml").read_text())["etl"]
CALENDAR = {"country": "US", "month_end_business_days": 2, "quarter_end_business_days": 5}
CLEAN_DEFAULTS = {
    "max_gap_days": PARAMS["max_gap_days"],
    "imputation_method": PARAMS["imputation_method"],
    "outlier_threshold": PARAMS["outlier_threshold"],
    "outlier_window_weeks": PARAMS["outlier_window_weeks"],
    "outlier_min_scale": PARAMS["outlier_min_scale"],
    "replace_outliers": PARAMS["replace_outliers"],
    "high_threshold": PARAMS["high_threshold"],
    **CALENDAR,
}
STALE_AFTER_DAYS = yaml.safe_load((PROJECT_PATH / "conf/base/parameters.yml").read_text())["stale_after_days"]


def daily_frame(n_days: int = 120, servers: tuple[str, ...] = ("a", "b"), seed: int = 0) -> pd.DataFrame:
    """A clean daily export (timestamp text, as a CSV gives it) with a weekly shape and noise."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2023-01-02", periods=n_days, freq="D")
    weekly = np.where(dates.day_of_week >= 5, 0.7, 1.0)
    frames = []
    for i, server in enumerate(servers):
        values = {
            m: np.round(30 + 5 * i + 10 * j / 4 + 20 * weekly + rng.normal(0, 1.5, n_days), 2)
            for j, m in enumerate(M)
        }
        frames.append(pd.DataFrame({"timestamp": dates.strftime("%Y-%m-%d"), "server_id": server, **values}))
    return pd.concat(frames, ignore_index=True)


def inventory(*servers: str) -> pd.DataFrame:
    return pd.DataFrame({"server_id": list(servers), "archetype": "web"})


def run_cleaning(raw: pd.DataFrame, **overrides) -> tuple[pd.DataFrame, dict, dict, dict]:
    validated, v_stats = validate_raw_metrics(raw, inventory(*raw["server_id"].unique()), {}, {}, "error")
    daily, a_stats = aggregate_daily_metrics(validated, PARAMS["min_daily_coverage"])
    clean, c_stats = clean_daily_metrics(daily, **{**CLEAN_DEFAULTS, **overrides})
    return clean, v_stats, a_stats, c_stats


def series(clean: pd.DataFrame, server: str, metric: str) -> pd.DataFrame:
    return clean[(clean["server_id"] == server) & (clean["metric"] == metric)].set_index("date")


def load_from_file(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Writes ``frame`` as CSV and loads it back through the catalog dataset, so it carries its file path."""
    frame.to_csv(path, index=False)
    return MetricsExportDataset(filepath=str(path)).load()


# ------------------------------------------------------------------------------------------ validation
def test_missing_column_names_file_column_and_example_rows(tmp_path):
    raw = load_from_file(daily_frame(10).drop(columns="memory_p95"), tmp_path / "export.csv")
    with pytest.raises(RawMetricsError, match=r"export\.csv.*\['memory_p95'\] not found") as err:
        validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    assert "example rows" in str(err.value) and "'server_id': 'a'" in str(err.value)
    assert "column_mapping" in str(err.value)


def test_unparseable_timestamp_names_file_column_and_rows(tmp_path):
    frame = daily_frame(10)
    frame.loc[3, "timestamp"] = "2023-13-45"
    frame.loc[7, "timestamp"] = "yesterday"
    raw = load_from_file(frame, tmp_path / "export.csv")
    with pytest.raises(
        RawMetricsError, match=r"export\.csv, column 'timestamp': 2 row\(s\) are empty or not ISO 8601"
    ) as err:
        validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    assert "row 3 (timestamp='2023-13-45'" in str(err.value) and "row 7 (timestamp='yesterday'" in str(
        err.value
    )


def test_epoch_timestamps_are_refused_with_the_expected_format(tmp_path):
    frame = daily_frame(3, servers=("a",)).assign(timestamp=[1372629804, 1372630104, 1372630404])
    raw = load_from_file(frame, tmp_path / "epoch.csv")
    with pytest.raises(
        RawMetricsError, match=r"epoch\.csv, column 'timestamp': 3 row\(s\) are numbers \(epoch\?\)"
    ):
        validate_raw_metrics(raw, inventory("a"), {}, {}, "error")


def test_non_numeric_value_names_file_column_and_rows(tmp_path):
    frame = daily_frame(10).astype({"cpu_p95": "object"})
    frame.loc[4, "cpu_p95"] = "12,5%"
    frame.loc[5, "cpu_p95"] = None  # an empty cell is a gap, not an error
    raw = load_from_file(frame, tmp_path / "export.csv")
    with pytest.raises(
        RawMetricsError, match=r"export\.csv, column 'cpu_p95': 1 row\(s\) are not finite numbers"
    ) as err:
        validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    assert "row 4 (timestamp='2023-01-06', server_id='a', cpu_p95='12,5%')" in str(err.value)


def test_unknown_server_is_an_error_naming_it(tmp_path):
    raw = load_from_file(daily_frame(10, servers=("a", "ghost")), tmp_path / "export.csv")
    with pytest.raises(
        RawMetricsError, match=r"export\.csv, column 'server_id': 10 row\(s\) name servers missing"
    ) as err:
        validate_raw_metrics(raw, inventory("a"), {}, {}, "error")
    assert "['ghost']" in str(err.value) and "row 10 (timestamp='2023-01-02', server_id='ghost')" in str(
        err.value
    )


def test_all_problems_are_reported_together(tmp_path):
    frame = daily_frame(10).astype({"network_p95": "object"})
    frame.loc[0, "timestamp"] = "bad"
    frame.loc[1, "network_p95"] = "n/a!"
    raw = load_from_file(frame, tmp_path / "export.csv")
    with pytest.raises(RawMetricsError) as err:
        validate_raw_metrics(raw, inventory("a"), {}, {}, "error")
    message = str(err.value)
    assert (
        "'timestamp'" in message and "'network_p95'" in message and "missing from server_inventory" in message
    )


def test_unknown_servers_drop_and_keep():
    raw = daily_frame(10, servers=("a", "ghost"))
    validated, stats = validate_raw_metrics(raw, inventory("a"), {}, {}, "drop")
    assert set(validated["server_id"]) == {"a"} and stats["unknown_server_rows_dropped"] == 10
    assert stats["unknown_servers"] == ["ghost"]
    validated, stats = validate_raw_metrics(raw, inventory("a"), {}, {}, "keep")
    assert (
        len(validated) == 20
        and stats["unknown_server_rows_dropped"] == 0
        and stats["unknown_servers"] == ["ghost"]
    )


def test_column_mapping_and_throughput_capacity():
    raw = daily_frame(5).rename(
        columns={"cpu_p95": "cpu_pct", "disk_io_p95": "disk_io_kbps", "timestamp": "time"}
    )
    raw["disk_io_kbps"] = 2048.0
    validated, _ = validate_raw_metrics(
        raw,
        inventory("a", "b"),
        {"cpu_pct": "cpu_p95", "disk_io_kbps": "disk_io_p95", "time": "timestamp"},
        {"disk_io_p95": 102400},
        "error",
    )
    assert list(validated.columns) == ["timestamp", "server_id", *M]
    assert np.allclose(validated["disk_io_p95"], 2.0)  # 2048 KB/s of 100 MB/s
    assert np.allclose(validated["cpu_p95"], raw["cpu_pct"])


def test_timestamps_with_offsets_become_utc_days():
    raw = daily_frame(2, servers=("a",))
    raw["timestamp"] = ["2023-01-02T01:30:00+02:00", "2023-01-02T23:30:00Z"]
    validated, _ = validate_raw_metrics(raw, inventory("a"), {}, {}, "error")
    assert validated["timestamp"].tolist() == [
        pd.Timestamp("2023-01-01 23:30"),
        pd.Timestamp("2023-01-02 23:30"),
    ]
    assert validated["timestamp"].dtype == "datetime64[ns]"


# ------------------------------------------------------------------------------------------ daily P95
def test_daily_input_passes_through_unchanged_and_duplicates_are_removed():
    raw = daily_frame(30)
    dirty = pd.concat([raw, raw.iloc[[3, 3, 40]]], ignore_index=True)
    validated, _ = validate_raw_metrics(dirty, inventory("a", "b"), {}, {}, "error")
    daily, stats = aggregate_daily_metrics(validated, 0.5)
    assert stats["duplicates_removed"] == 3 and stats["sampling"] == "daily"
    assert stats["subdaily_samples_aggregated"] == 0 and stats["daily_rows_observed"] == 60
    expected = raw.assign(date=pd.to_datetime(raw["timestamp"]))
    assert np.array_equal(daily[M].to_numpy(), expected[M].to_numpy())
    assert daily["date"].tolist() == expected["date"].tolist()


def _sub_daily(step_minutes: int, days: int, seed: int) -> pd.DataFrame:
    """Samples every ``step_minutes`` with a per-server phase and jitter, as a real export."""
    rng = np.random.default_rng(seed)
    frames = []
    for server, phase in (("a", 137), ("b", 1001)):
        start = pd.Timestamp("2023-03-01") + pd.Timedelta(seconds=phase)
        n = days * 24 * 60 // step_minutes
        jitter = pd.to_timedelta(rng.integers(-20, 20, n), unit="s")
        times = start + pd.to_timedelta(np.arange(n) * step_minutes, unit="min") + jitter
        values = {m: rng.uniform(0, 100, n) for m in M}
        frames.append(
            pd.DataFrame({"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "server_id": server, **values})
        )
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("step_minutes", [5, 60])
def test_sub_daily_samples_become_the_daily_p95(step_minutes):
    raw = _sub_daily(step_minutes, days=4, seed=step_minutes)
    validated, _ = validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    daily, stats = aggregate_daily_metrics(validated, 0.5)
    assert stats["sampling"] == "sub-daily"
    ts = pd.to_datetime(raw["timestamp"]).dt.tz_localize(None)
    expected = raw.assign(date=ts.dt.floor("D")).groupby(["server_id", "date"])[M].quantile(0.95)
    got = daily.set_index(["server_id", "date"])[M]
    expected = expected.loc[got.index]
    assert np.allclose(got.to_numpy(), expected.to_numpy())
    # each server's first and last days are complete except for its phase: nothing partial is kept
    assert len(daily) + stats["sparse_edge_days_dropped"] == stats["daily_rows_observed"]
    assert stats["subdaily_samples_aggregated"] == len(raw) - stats["daily_rows_observed"]


def test_sparse_sub_daily_days_become_gaps_or_are_dropped_at_the_edges():
    raw = _sub_daily(60, days=6, seed=1)
    ts = pd.to_datetime(raw["timestamp"]).dt.tz_localize(None)
    # server a: 2 samples left on its 3rd day (an outage), and its last day cut to 3 samples
    outage = (raw["server_id"] == "a") & (ts.dt.day == 3) & (ts.dt.hour >= 2)
    cut = (raw["server_id"] == "a") & (ts.dt.day == 6) & (ts.dt.hour >= 3)
    raw = raw.loc[~(outage | cut)]
    validated, _ = validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    daily, stats = aggregate_daily_metrics(validated, 0.5)
    a = daily[daily["server_id"] == "a"].set_index("date")
    assert a.loc["2023-03-03", "is_partial"] and stats["sparse_days_blanked"] == 1
    assert a["is_partial"].sum() == 1 and a.loc["2023-03-03", "samples"] == 2
    assert a.index.max() == pd.Timestamp("2023-03-05") and stats["sparse_edge_days_dropped"] == 1
    clean, c_stats = clean_daily_metrics(daily, **CLEAN_DEFAULTS)  # the partial day becomes an imputed gap
    day = clean[(clean["server_id"] == "a") & (clean["date"] == "2023-03-03")]
    assert day["is_imputed"].all() and c_stats["days_replaced_by_rule"] == {"partial_day": 4}
    listed = pd.DataFrame(c_stats["replaced_days"])
    assert set(listed["date"]) == {"2023-03-03"} and set(listed["rule"]) == {"partial_day"}
    assert listed.set_index("metric")["before"].to_dict() == pytest.approx(
        a.loc["2023-03-03", M].astype(float).round(2).to_dict()
    )


# ------------------------------------------------------------------------------------------ cleaning
def test_complete_calendar_long_schema_and_order():
    raw = daily_frame(40).drop(index=[5, 6])  # server a misses two days
    clean, *_, stats = run_cleaning(raw)
    assert list(clean.columns) == [
        "server_id",
        "metric",
        "date",
        "value",
        "is_imputed",
        "is_clipped",
        "is_outlier",
    ]
    assert clean.dtypes.to_dict() == {
        "server_id": "str",
        "metric": "str",
        "date": "datetime64[ns]",
        "value": "float64",
        "is_imputed": "bool",
        "is_clipped": "bool",
        "is_outlier": "bool",
    }
    assert len(clean) == 2 * 4 * 40 and stats["calendar_days_added"] == 2
    assert clean.equals(clean.sort_values(["server_id", "metric", "date"]).reset_index(drop=True))
    assert set(clean["metric"]) == set(M)


def test_impossible_values_are_clipped_and_flagged():
    raw = daily_frame(60)
    raw.loc[30, "cpu_p95"] = 130.0
    raw.loc[31, "memory_p95"] = -5.0
    clean, *_, stats = run_cleaning(raw, replace_outliers=False)
    cpu, mem = series(clean, "a", "cpu_p95"), series(clean, "a", "memory_p95")
    assert cpu.loc["2023-02-01", "value"] == 100.0 and cpu.loc["2023-02-01", "is_clipped"]
    assert mem.loc["2023-02-02", "value"] == 0.0 and mem.loc["2023-02-02", "is_clipped"]
    assert clean["is_clipped"].sum() == 2 == stats["values_clipped"]
    assert clean["value"].between(0, 100).all()


def test_short_gap_is_interpolated_in_time_and_marked():
    raw = daily_frame(60)
    gap = raw.index[(raw["server_id"] == "a") & raw["timestamp"].between("2023-01-20", "2023-01-22")]
    clean, *_, stats = run_cleaning(raw.drop(index=gap))
    cpu = series(clean, "a", "cpu_p95")
    before, after = cpu.loc["2023-01-19", "value"], cpu.loc["2023-01-23", "value"]
    expected = before + (after - before) * np.array([1, 2, 3]) / 4
    assert np.allclose(cpu.loc["2023-01-20":"2023-01-22", "value"], expected)
    assert cpu.loc["2023-01-20":"2023-01-22", "is_imputed"].all() and cpu["is_imputed"].sum() == 3
    assert stats["values_imputed"] == 12 and stats["values_left_missing"] == 0


def test_seasonal_imputation_uses_the_same_weekday():
    raw = daily_frame(60)
    day = raw.index[(raw["server_id"] == "a") & (raw["timestamp"] == "2023-01-21")]  # a Saturday
    clean, *_ = run_cleaning(raw.drop(index=day), imputation_method="seasonal")
    cpu = series(clean, "a", "cpu_p95")
    expected = (cpu.loc["2023-01-14", "value"] + cpu.loc["2023-01-28", "value"]) / 2
    assert cpu.loc["2023-01-21", "value"] == pytest.approx(expected) and cpu.loc["2023-01-21", "is_imputed"]


def test_long_gap_is_reported_with_dates_and_left_missing():
    raw = daily_frame(80)
    gap = raw.index[(raw["server_id"] == "b") & raw["timestamp"].between("2023-02-01", "2023-02-10")]
    clean, *_, stats = run_cleaning(raw.drop(index=gap))
    cpu = series(clean, "b", "cpu_p95")
    assert cpu.loc["2023-02-01":"2023-02-10", "value"].isna().all()
    assert not cpu.loc["2023-02-01":"2023-02-10", "is_imputed"].any()
    assert stats["long_gaps"] == [
        {
            "server_id": "b",
            "start": "2023-02-01",
            "end": "2023-02-10",
            "days": 10,
            "metrics": sorted(M),
            "reason": "longer than 5 days",
        }
    ]
    assert stats["values_left_missing"] == 40 and clean["value"].isna().sum() == 40


def test_spike_is_flagged_and_replaced_or_kept():
    raw = daily_frame(90)
    raw.loc[45, "network_p95"] = 99.0  # a glitch on an ordinary Thursday
    replaced, *_, stats = run_cleaning(raw)
    kept, *_, kept_stats = run_cleaning(raw, replace_outliers=False)
    row = series(replaced, "a", "network_p95").loc["2023-02-16"]
    assert row["is_outlier"] and row["is_imputed"] and row["value"] < 80
    row = series(kept, "a", "network_p95").loc["2023-02-16"]
    assert row["is_outlier"] and not row["is_imputed"] and row["value"] == 99.0
    assert stats["values_flagged_outlier"] == 1 == stats["outliers_replaced"]
    assert kept_stats["values_flagged_outlier"] == 1 and kept_stats["outliers_replaced"] == 0


def test_recurring_month_end_and_quarter_end_peaks_are_not_outliers():
    """A batch-like server: +14 points in the month-end window and +27 at quarter ends, every period, for 3
    years. None of these days may be flagged; a one-off +30 spike on an ordinary day must be."""
    rng = np.random.default_rng(3)
    dates = pd.date_range("2022-01-01", periods=3 * 365, freq="D")
    cal = calendar_features(dates, **CALENDAR)
    peak = np.where(cal["is_end_of_quarter"], 27.0, np.where(cal["is_month_end"], 14.0, 0.0))
    values = 30 + peak + rng.normal(0, 3, len(dates))
    spike_day = 200
    assert peak[spike_day] == 0
    values[spike_day] += 30
    raw = pd.DataFrame(
        {"timestamp": dates.strftime("%Y-%m-%d"), "server_id": "batch-1", **{m: values for m in M}}
    )
    clean, *_ = run_cleaning(raw, replace_outliers=False)
    cpu = series(clean, "batch-1", "cpu_p95")
    flagged = cpu.index[cpu["is_outlier"]]
    assert not (cal.set_index("date").loc[flagged, ["is_month_end", "is_end_of_quarter"]].any(axis=1)).any()
    assert list(flagged) == [dates[spike_day]]


def test_recurring_holiday_dips_are_not_outliers_even_inside_period_end_windows():
    """Holidays dip to 60 % (Thanksgiving sometimes inside the month-end window, Christmas inside the
    quarter-end window) on a growing web-like series: none of it is a glitch."""
    rng = np.random.default_rng(5)
    dates = pd.date_range("2022-01-01", periods=4 * 365, freq="D")
    cal = calendar_features(dates, **CALENDAR)
    level = np.linspace(35, 55, len(dates)) * np.where(dates.day_of_week >= 5, 0.65, 1.0)
    peak = np.where(cal["is_end_of_quarter"], 8.0, np.where(cal["is_month_end"], 4.0, 0.0))
    values = (level + peak) * np.where(cal["is_holiday"], 0.6, 1.0) + rng.normal(0, 2, len(dates))
    raw = pd.DataFrame(
        {"timestamp": dates.strftime("%Y-%m-%d"), "server_id": "web-1", **{m: values for m in M}}
    )
    clean, *_, stats = run_cleaning(raw, replace_outliers=False)
    assert stats["values_flagged_outlier"] == 0


def test_empty_export_is_an_error(tmp_path):
    raw = load_from_file(daily_frame(1).iloc[:0], tmp_path / "empty.csv")
    with pytest.raises(RawMetricsError, match=r"empty\.csv: no data rows"):
        validate_raw_metrics(raw, inventory("a"), {}, {}, "error")


def test_glitch_on_a_quarter_end_day_is_still_flagged():
    rng = np.random.default_rng(4)
    dates = pd.date_range("2022-01-01", periods=2 * 365, freq="D")
    cal = calendar_features(dates, **CALENDAR)
    values = 30 + np.where(cal["is_end_of_quarter"], 20.0, 0.0) + rng.normal(0, 2, len(dates))
    glitch = int(np.flatnonzero(cal["is_end_of_quarter"])[7])
    values[glitch] = 100.0
    raw = pd.DataFrame({"timestamp": dates.strftime("%Y-%m-%d"), "server_id": "s", **{m: values for m in M}})
    clean, *_ = run_cleaning(raw, replace_outliers=False)
    cpu = series(clean, "s", "cpu_p95")
    assert list(cpu.index[cpu["is_outlier"]]) == [dates[glitch]]


# ------------------------------------------------------------------------------------------ report
def test_quality_report_accounts_for_every_row_and_value():
    raw = daily_frame(90, servers=("a", "b", "c"))
    raw.loc[10, "cpu_p95"] = 150.0  # clipped (and an outlier)
    raw.loc[11, "disk_io_p95"] = np.nan  # one empty cell: imputed
    raw.loc[100, "memory_p95"] = 97.0  # a spike
    raw = raw.drop(index=list(range(20, 23)) + list(range(120, 130)))  # short gap (a), long gap (b)
    raw = pd.concat([raw, raw.iloc[[0, 1, 2]], daily_frame(3, servers=("ghost",))], ignore_index=True)
    validated, v_stats = validate_raw_metrics(raw, inventory("a", "b", "c"), {}, {}, "drop")
    daily, a_stats = aggregate_daily_metrics(validated, 0.5)
    clean, c_stats = clean_daily_metrics(daily, **CLEAN_DEFAULTS)
    report = build_data_quality_report(v_stats, a_stats, c_stats, STALE_AFTER_DAYS)
    assert report["rows_in"] == len(raw) == 270 - 13 + 3 + 3
    assert report["unknown_server_rows_dropped"] == 3 and report["duplicates_removed"] == 3
    assert report["rows_in"] == (
        report["unknown_server_rows_dropped"]
        + report["duplicates_removed"]
        + report["conflicting_rows_merged"]
        + report["subdaily_samples_aggregated"]
        + report["daily_rows_observed"]
    )
    assert (
        report["rows_out"]
        == report["daily_rows_observed"] - report["sparse_edge_days_dropped"] + report["calendar_days_added"]
    )
    assert (
        report["rows_out"] == 270
        and report["calendar_days_added"] == 13
        and report["values_out"] == len(clean)
    )
    assert report["values_out"] == report["values_observed"] + report["values_missing"]
    assert report["values_missing"] == report["values_imputed"] + report["values_left_missing"]
    assert report["values_imputed"] == 3 * 4 + 1 and report["values_left_missing"] == 10 * 4
    assert report["values_clipped"] == 1 and report["values_flagged_outlier"] >= 2
    assert report["outliers_replaced"] + report["outliers_kept"] == report["values_flagged_outlier"]
    assert clean["is_imputed"].sum() == report["values_imputed"] + report["outliers_replaced"]
    assert clean["value"].isna().sum() == report["values_left_missing"]
    assert report["servers_with_long_gaps"] == ["b"] and report["unknown_servers"] == ["ghost"]
    assert sum(s["values_clipped"] for s in report["by_metric"].values()) == report["values_clipped"]


def test_report_refuses_numbers_that_do_not_add_up():
    raw = daily_frame(20)
    validated, v_stats = validate_raw_metrics(raw, inventory("a", "b"), {}, {}, "error")
    daily, a_stats = aggregate_daily_metrics(validated, 0.5)
    clean, c_stats = clean_daily_metrics(daily, **CLEAN_DEFAULTS)
    with pytest.raises(RuntimeError, match="does not add up"):
        build_data_quality_report(
            {**v_stats, "rows_in": v_stats["rows_in"] + 1}, a_stats, c_stats, STALE_AFTER_DAYS
        )


# ------------------------------------------------------------------------------------------ features
def test_lags_and_rolling_windows_by_hand():
    dates = pd.date_range("2024-03-25", periods=8, freq="D")
    values = [1.0, 2.0, 4.0, 8.0, np.nan, 3.0, 5.0, 7.0]
    clean = pd.DataFrame(
        {
            "server_id": ["s"] * 8 + ["t"] * 3,
            "metric": "cpu_p95",
            "date": list(dates) + list(dates[:3]),
            "value": values + [10.0, 20.0, 30.0],
            "is_imputed": False,
            "is_clipped": False,
            "is_outlier": False,
        }
    )
    f = build_server_features(clean, [1, 2], [3], **CALENDAR)
    nan = np.nan
    assert np.allclose(f["lag_1"], [nan, 1, 2, 4, 8, nan, 3, 5, nan, 10, 20], equal_nan=True)
    assert np.allclose(f["lag_2"], [nan, nan, 1, 2, 4, 8, nan, 3, nan, nan, 10], equal_nan=True)
    # rolling_mean_3 at row t = mean(t-3, t-2, t-1): never the row's own value; NaN when the window has a gap
    assert np.allclose(
        f["rolling_mean_3"], [nan, nan, nan, 7 / 3, 14 / 3, nan, nan, nan, nan, nan, nan], equal_nan=True
    )
    assert np.allclose(f["rolling_std_3"][3:5], [np.std([1, 2, 4], ddof=1), np.std([2, 4, 8], ddof=1)])
    assert f["lag_1"].dtype == "float32" and f["rolling_std_3"].dtype == "float32"
    # calendar: 2024-03-29 is a Friday in the quarter-end and month-end windows; 2024-03-31 ends the quarter
    row = f.iloc[4]
    assert (row["day_of_week"], row["month"], row["is_month_end"], row["is_end_of_quarter"]) == (
        4,
        3,
        True,
        True,
    )
    assert f.iloc[6]["days_to_quarter_end"] == 0 and f.iloc[7]["days_to_quarter_end"] == 90


def test_features_schema_and_leak_free_rolling_on_a_real_series():
    clean, *_ = run_cleaning(daily_frame(400))
    f = build_server_features(clean, PARAMS["lags"], PARAMS["rolling_windows"], **CALENDAR)
    lags = [f"lag_{k}" for k in PARAMS["lags"]]
    rolling = [f"rolling_{s}_{w}" for w in PARAMS["rolling_windows"] for s in ("mean", "std")]
    assert list(f.columns[:4]) == ["server_id", "metric", "date", "value"]
    assert set(f.columns) == {
        "server_id",
        "metric",
        "date",
        "value",
        *lags,
        *rolling,
        "day_of_week",
        "month",
        "is_month_end",
        "is_end_of_quarter",
        "days_to_quarter_end",
        "is_holiday",
        "is_imputed",
    }
    assert all(f[c].dtype == "float32" for c in lags + rolling)
    assert {"lag_90", "lag_97", "lag_364"} <= set(f.columns)
    for (server, metric), group in clean.groupby(["server_id", "metric"]):
        mask = (f["server_id"] == server) & (f["metric"] == metric)
        for w in PARAMS["rolling_windows"]:
            expected = group["value"].rolling(w).mean().shift(1).to_numpy()
            assert np.allclose(f.loc[mask, f"rolling_mean_{w}"], expected, equal_nan=True, atol=1e-4)
            expected = group["value"].rolling(w).std().shift(1).to_numpy()
            assert np.allclose(f.loc[mask, f"rolling_std_{w}"], expected, equal_nan=True, atol=1e-4)
        assert np.allclose(f.loc[mask, "lag_364"], group["value"].shift(364), equal_nan=True, atol=1e-4)
    holidays = f.loc[f["is_holiday"], "date"].dt.strftime("%m-%d").unique()
    assert "12-25" in holidays and "07-04" in holidays
