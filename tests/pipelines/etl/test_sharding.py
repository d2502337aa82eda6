"""etl sharding: every raw row lands in exactly one shard, K shards give the K=1 tables and a quality report
whose shard counts add up, empty shards work, and the export can be read in bounded chunks."""

import gc
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import s3fs
from kedro.io import DatasetError

from capacity_forecaster.cloud.hooks import guard_dataset
from capacity_forecaster.datasets.metrics_export import MetricsExportDataset
from capacity_forecaster.datasets.shards import ShardedParquetDataset, ShardPartsDataset
from capacity_forecaster.pipelines.etl.nodes import (
    RawMetricsError,
    build_fleet_quality_report,
    clean_metric_shards,
    split_raw_metrics,
)
from capacity_forecaster.sharding import shard_name, shard_of
from tests.pipelines.etl.test_nodes import (
    CALENDAR,
    CLEAN_DEFAULTS,
    PARAMS,
    STALE_AFTER_DAYS,
    daily_frame,
    inventory,
)
from tests.pipelines.etl.test_pipeline import BITBRAINS, BITBRAINS_PARAMS

SERVERS = tuple(f"srv-{i:02d}" for i in range(12))
KEYS = ["server_id", "metric", "date"]
COUNTS = (  # additive counts of data_quality_report, each checked to add up across shards
    "rows_in",
    "rows_out",
    "values_out",
    "servers",
    "unknown_server_rows_dropped",
    "inventory_servers_without_metrics",
    "duplicates_removed",
    "conflicting_rows_merged",
    "daily_rows_observed",
    "calendar_days_added",
    "values_imputed",
    "values_left_missing",
    "values_clipped",
    "values_flagged_outlier",
    "outliers_replaced",
    "days_replaced",
)


def dirty_fleet() -> tuple[pd.DataFrame, pd.DataFrame]:
    """12 servers x 150 days with duplicates, conflicting rows, a clipped spike, short and long gaps, a server
    that stopped reporting, an unknown server and an inventory server without metrics."""
    raw = daily_frame(150, servers=SERVERS, seed=3)
    raw.loc[40, "cpu_p95"] = 140.0  # clipped
    raw.loc[300 + 70, "memory_p95"] = 99.0  # a glitch on a daily export: replaced
    raw = raw.drop(index=list(range(160, 163)) + list(range(500, 512)))  # a short and a long gap
    stopped = raw["server_id"].eq("srv-05") & (raw["timestamp"] > "2023-04-01")
    raw = raw.loc[~stopped]
    conflict = raw.iloc[[900]].assign(cpu_p95=77.0)
    unknown = daily_frame(30, servers=("ghost",))
    raw = pd.concat([raw, raw.iloc[[7, 8, 1200]], conflict, unknown], ignore_index=True)
    return raw, inventory(*SERVERS, "spare-1")


def run_etl(tmp_path, raw, servers, shards, *, chunk_rows=None, etl=None, name="run"):
    """The etl pipeline's nodes and datasets, in process: split -> per-shard cleaning -> fleet report."""
    etl = {"column_mapping": {}, "throughput_capacity": {}, "unknown_servers": "drop", **(etl or {})}
    export = raw
    if chunk_rows:
        path = tmp_path / f"{name}-export.parquet"
        raw.to_parquet(path, index=False)
        export = MetricsExportDataset(filepath=str(path), chunk_rows=chunk_rows).load()
    parts = ShardPartsDataset(filepath=str(tmp_path / f"{name}-raw_shards"))
    for routed, plan_so_far in split_raw_metrics(export, servers, etl["column_mapping"], shards, 2500):
        parts.save(routed)
        plan = plan_so_far  # the last chunk's plan covers the whole export
    clean_ds = ShardedParquetDataset(filepath=str(tmp_path / f"{name}-clean.parquet"))
    features_ds = ShardedParquetDataset(filepath=str(tmp_path / f"{name}-features.parquet"))
    cleaning = {k: v for k, v in CLEAN_DEFAULTS.items() if k not in CALENDAR}
    for clean, features, stats_so_far in clean_metric_shards(
        parts.load(),
        plan,
        servers,
        valid_date_range=None,
        value_scale=None,
        min_daily_coverage=PARAMS["min_daily_coverage"],
        lags=PARAMS["lags"],
        rolling_windows=PARAMS["rolling_windows"],
        **etl,
        **cleaning,
        **CALENDAR,
    ):
        clean_ds.save(clean)
        features_ds.save(features)
        stats = stats_so_far  # the last shard's statistics cover every shard
    report = build_fleet_quality_report(stats, STALE_AFTER_DAYS)
    return parts, plan, clean_ds.load(), features_ds.load(), report


def by_keys(frame: pd.DataFrame) -> pd.DataFrame:
    # the catalog loads clean_server_metrics' keys as categoricals in file order: compared as strings
    text = {c: "str" for c in ("server_id", "metric") if isinstance(frame[c].dtype, pd.CategoricalDtype)}
    return frame.astype(text).sort_values(KEYS, kind="stable").reset_index(drop=True)


def without_shards(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k != "shards"}
    conflicts = out["conflicting_duplicates"]
    out["conflicting_duplicates"] = {**conflicts, "examples": sorted(conflicts["examples"], key=json.dumps)}
    return out


# ------------------------------------------------------------------------------------------ split
@pytest.mark.parametrize("chunk_rows", [None, 250])
def test_every_raw_row_lands_in_exactly_one_shard_of_its_server(tmp_path, chunk_rows):
    raw, servers = dirty_fleet()
    parts, plan, *_ = run_etl(tmp_path, raw, servers, shards=3, chunk_rows=chunk_rows)
    shards = {name: load() for name, load in parts.load().items()}
    assert list(shards) == [shard_name(i, 3) for i in range(1, 4)]
    rows = pd.concat(shards.values(), ignore_index=True).sort_values("_row").reset_index(drop=True)
    assert rows["_row"].tolist() == list(range(len(raw)))  # each row once, with its export position
    pd.testing.assert_frame_equal(rows.drop(columns="_row"), raw, check_dtype=False)
    for name, frame in shards.items():
        assert (shard_of(frame["server_id"], 3) == int(name.split("-")[1])).all()
        assert plan["rows"][name] == len(frame)
    assert plan["chunks"] == (1 if chunk_rows is None else -(-len(raw) // chunk_rows))


def test_export_is_read_in_chunks_of_at_most_chunk_rows(tmp_path):
    raw, _ = dirty_fleet()
    for name in ("export.csv.gz", "export.parquet"):
        dataset = MetricsExportDataset(filepath=str(tmp_path / name), chunk_rows=400)
        dataset.save(raw)
        chunks = dataset.load()
        assert not isinstance(chunks, pd.DataFrame)  # lazy: nothing read yet
        sizes = [len(c) for c in chunks]
        assert max(sizes) <= 400 and sum(sizes) == len(raw) and len(sizes) == -(-len(raw) // 400)
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        MetricsExportDataset(filepath=str(tmp_path / "x.csv"), chunk_rows=0)


# ------------------------------------------------------------------------------------------ K vs 1
def test_three_shards_give_the_one_shard_tables_and_a_report_that_adds_up(tmp_path):
    raw, servers = dirty_fleet()
    _, _, clean1, features1, report1 = run_etl(tmp_path, raw, servers, shards=1, name="k1")
    _, _, clean3, features3, report3 = run_etl(tmp_path, raw, servers, shards=3, chunk_rows=500, name="k3")

    pd.testing.assert_frame_equal(by_keys(clean3), by_keys(clean1))
    # rolling statistics come from cumulative sums over the whole (shard's) array: equal up to rounding
    pd.testing.assert_frame_equal(by_keys(features3), by_keys(features1), check_exact=False, atol=1e-4)
    assert "shards" not in report1 and set(report3["shards"]) == {shard_name(i, 3) for i in (1, 2, 3)}
    report3["source"] = report1["source"]  # the chunked run read a Parquet copy of the export
    assert without_shards(report3) == without_shards(report1)
    for key in COUNTS:
        assert sum(s[key] for s in report3["shards"].values()) == report1[key], key
    # the dirt really is there, so the sums above are not sums of zeros
    assert report1["duplicates_removed"] == 3 and report1["conflicting_rows_merged"] == 1
    assert report1["unknown_server_rows_dropped"] == 30 and report1["inventory_servers_without_metrics"] == 1
    assert report1["values_clipped"] >= 1 and report1["values_imputed"] >= 3 and report1["long_gaps"]
    assert [s["server_id"] for s in report3["stale_servers"]] == ["srv-05"]
    assert len(clean1) == report1["values_out"]


@pytest.mark.skipif(not BITBRAINS.exists(), reason=f"real Bitbrains sample not present at {BITBRAINS}")
def test_sub_daily_export_sharded_keeps_every_rule(tmp_path):
    """The real 5-minute sample (10 VMs, no inventory: kept as unknown): partial days, edges, peaks kept."""
    raw = MetricsExportDataset(filepath=str(BITBRAINS)).load()
    etl = {
        "column_mapping": BITBRAINS_PARAMS["column_mapping"],
        "throughput_capacity": BITBRAINS_PARAMS["throughput_capacity"],
        "unknown_servers": "keep",
    }
    no_inventory = pd.DataFrame()
    _, _, clean1, _, report1 = run_etl(tmp_path, raw, no_inventory, 1, etl=etl, name="k1")
    _, _, clean3, _, report3 = run_etl(tmp_path, raw, no_inventory, 3, chunk_rows=50_000, etl=etl, name="k3")
    pd.testing.assert_frame_equal(by_keys(clean3), by_keys(clean1))
    report3["source"] = report1["source"]
    assert without_shards(report3) == without_shards(report1)
    assert report1["sampling"] == "sub-daily" and len(report1["unknown_servers"]) == 10
    assert report1["sparse_edge_days_dropped"] >= 10 and set(report1["days_replaced_by_rule"]) == {
        "partial_day"
    }
    for key in (*COUNTS, "subdaily_samples_aggregated", "sparse_days_blanked", "outliers_kept_sub_daily"):
        assert sum(s[key] for s in report3["shards"].values()) == report1[key], key


def test_a_shard_without_servers_works(tmp_path):
    raw, servers = daily_frame(60, servers=("a", "b")), inventory("a", "b")
    _, plan, clean, features, report = run_etl(tmp_path, raw, servers, shards=7)
    empty = [name for name, rows in plan["rows"].items() if rows == 0]
    assert len(empty) >= 5
    assert all(report["shards"][name]["rows_in"] == 0 for name in empty)
    _, _, clean1, _, report1 = run_etl(tmp_path, raw, servers, shards=1, name="k1")
    pd.testing.assert_frame_equal(by_keys(clean), by_keys(clean1))
    assert report["servers"] == 2 and report["values_out"] == report1["values_out"] == len(features)


def test_auto_shards_follow_the_inventory_size(tmp_path):
    raw, servers = dirty_fleet()
    plans = [plan for _, plan in split_raw_metrics(raw, servers, {}, "auto", 5)]
    assert plans[-1]["shards"] == 3  # ceil(13 inventory servers / 5)
    plans = [plan for _, plan in split_raw_metrics(raw, pd.DataFrame(), {}, "auto", 5)]
    assert plans[-1]["shards"] == 1  # no inventory to size it


# ------------------------------------------------------------------------------------------ errors
def test_validation_error_in_a_shard_names_the_exports_row(tmp_path):
    raw, servers = dirty_fleet()
    raw["timestamp"] = raw["timestamp"].astype(object)
    raw.loc[1000, "timestamp"] = "03/01/2023 5pm"
    for shards in (1, 4):
        with pytest.raises(RawMetricsError, match=r"column 'timestamp': 1 row\(s\) .* e\.g\. row 1000 \("):
            run_etl(tmp_path, raw, servers, shards, name=f"k{shards}")


def test_sharded_parquet_appears_only_after_the_last_shard_and_in_order(tmp_path):
    path = tmp_path / "table.parquet"
    dataset = ShardedParquetDataset(filepath=str(path))
    dataset.save({"shard-1-of-2": pd.DataFrame({"x": [1, 2]})})
    assert not path.exists()
    dataset.save({"shard-2-of-2": pd.DataFrame({"x": [3]})})
    assert dataset.load()["x"].tolist() == [1, 2, 3]
    assert not (tmp_path / "table.parquet.parts").exists()  # the shards' parts are removed
    with pytest.raises(DatasetError, match="got shard-2-of-2, expected"):
        dataset.save({"shard-2-of-2": pd.DataFrame({"x": [4]})})
    dataset.save(pd.DataFrame({"x": [9]}))  # a plain frame still saves as in pandas.ParquetDataset
    assert dataset.load()["x"].tolist() == [9]


def test_a_local_sharded_save_streams_into_one_file_and_an_interrupted_one_starts_afresh(tmp_path):
    path = tmp_path / "out" / "table.parquet"
    interrupted = ShardedParquetDataset(filepath=str(path))
    interrupted.save({"shard-1-of-3": pd.DataFrame({"x": [1, 2]})})
    assert (tmp_path / "out" / "table.parquet.partial").exists() and not path.exists()
    dataset = ShardedParquetDataset(filepath=str(path))  # the next run: a new instance
    dataset.save({"shard-1-of-2": pd.DataFrame({"x": [5]})})
    with pytest.raises(DatasetError, match="got shard-1-of-3, expected"):
        dataset.save({"shard-1-of-3": pd.DataFrame({"x": [6]})})
    dataset.save({"shard-1-of-2": pd.DataFrame({"x": [7]})})  # after the error, a new sequence
    dataset.save({"shard-2-of-2": pd.DataFrame({"x": [8, 9]})})
    del interrupted  # its writer, still open on the old partial file, closes now
    gc.collect()
    assert dataset.load()["x"].tolist() == [7, 8, 9]
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.parquet"]
    with pytest.raises(DatasetError, match="every shard was empty"):
        dataset.save({"shard-1-of-1": pd.DataFrame()})


def test_save_args_apply_to_a_sharded_save_as_to_a_plain_one(tmp_path):
    frame = pd.DataFrame({"server_id": ["a", "a", "b"], "value": [1.0, 1.0, 2.0]})
    options = {"use_dictionary": ["server_id"], "compression": "zstd", "index": False}
    sharded = ShardedParquetDataset(filepath=str(tmp_path / "sharded.parquet"), save_args=options)
    sharded.save({"shard-1-of-2": frame.iloc[:2]})
    sharded.save({"shard-2-of-2": frame.iloc[2:]})
    plain = ShardedParquetDataset(filepath=str(tmp_path / "plain.parquet"), save_args=options)
    plain.save(frame)
    for path in ("sharded.parquet", "plain.parquet"):
        metadata = pq.ParquetFile(tmp_path / path).metadata
        columns = [metadata.row_group(g).column(c) for g in range(metadata.num_row_groups) for c in range(2)]
        assert {c.compression for c in columns} == {"ZSTD"}
        dictionary = {c.path_in_schema: "RLE_DICTIONARY" in c.encodings for c in columns}
        assert dictionary == {"server_id": True, "value": False}
    pd.testing.assert_frame_equal(sharded.load(), frame)


def test_shard_parts_of_an_older_run_are_not_mixed_in(tmp_path):
    first = ShardPartsDataset(filepath=str(tmp_path / "parts"))
    first.save({"shard-1-of-2": pd.DataFrame({"x": [1]}), "shard-2-of-2": pd.DataFrame({"x": [2]})})
    first.save({"shard-1-of-2": pd.DataFrame({"x": [3]}), "shard-2-of-2": pd.DataFrame({"x": []})})
    assert {k: v()["x"].tolist() for k, v in first.load().items()} == {
        "shard-1-of-2": [1, 3],
        "shard-2-of-2": [2],
    }
    second = ShardPartsDataset(filepath=str(tmp_path / "parts"))  # a new run
    second.save({"shard-1-of-1": pd.DataFrame({"x": [5]})})
    assert {k: v()["x"].tolist() for k, v in second.load().items()} == {"shard-1-of-1": [5]}


def test_yielded_shards_are_released_once_saved(tmp_path):
    """Kedro keeps a multi-output generator node's items (itertools.tee) until the node ends: the nodes empty
    what they yielded when resumed, so only one chunk or shard stays in memory."""
    raw, servers = dirty_fleet()
    split = split_raw_metrics(raw, servers, {}, 2, 2500)
    parts, plan = next(split)
    assert sum(len(p) for p in parts.values()) == len(raw)
    parts_ds = ShardPartsDataset(filepath=str(tmp_path / "parts"))
    parts_ds.save(parts)
    assert next(split, None) is None and parts == {}
    cleaning = {k: v for k, v in CLEAN_DEFAULTS.items() if k not in CALENDAR}
    shards = clean_metric_shards(
        parts_ds.load(),
        plan,
        servers,
        column_mapping={},
        throughput_capacity={},
        unknown_servers="drop",
        valid_date_range=None,
        value_scale=None,
        min_daily_coverage=PARAMS["min_daily_coverage"],
        lags=PARAMS["lags"],
        rolling_windows=PARAMS["rolling_windows"],
        **cleaning,
        **CALENDAR,
    )
    clean, features, _ = next(shards)
    assert len(clean["shard-1-of-2"]) and len(features["shard-1-of-2"])
    next(shards)
    assert clean == {} and features == {}


def test_kedro_run_with_three_shards_equals_one_shard(kedro_session, data_root):
    """``kedro run --pipelines etl --params etl.shards=3`` through the catalog: the raw split on disk, the
    clean and feature tables (one Parquet file each) and the report equal the one-shard run's."""
    fleet = {"data_generation": {"n_servers": 16, "history_days": 400}}
    kedro_session(runtime_params=fleet).run(pipeline_names=["data_generation", "etl"])
    outputs = ("clean_server_metrics", "server_features", "data_quality_report")
    catalog = kedro_session().load_context().catalog
    one = {name: catalog.load(name) for name in outputs}

    kedro_session(runtime_params={"etl": {"shards": 3}}).run(pipeline_names=["etl"])
    catalog = kedro_session().load_context().catalog
    three = {name: catalog.load(name) for name in outputs}

    assert sorted(p.name for p in (data_root / "02_intermediate/raw_metric_shards").iterdir()) == [
        shard_name(i, 3) for i in (1, 2, 3)
    ]
    assert (data_root / "03_primary/clean_server_metrics.parquet").is_file()
    pd.testing.assert_frame_equal(
        by_keys(three["clean_server_metrics"]), by_keys(one["clean_server_metrics"])
    )
    pd.testing.assert_frame_equal(
        by_keys(three["server_features"]), by_keys(one["server_features"]), check_exact=False, atol=1e-4
    )
    report1, report3 = one["data_quality_report"], three["data_quality_report"]
    assert without_shards(report3) == without_shards(report1) and report1["duplicates_removed"] > 0
    for key in COUNTS:
        assert sum(s[key] for s in report3["shards"].values()) == report1[key], key


def test_shard_datasets_on_s3_under_the_cloud_guard(aws):
    """On S3 the cloud env commits every save in its own transaction: shards saved one by one still make one
    file, and the raw parts round-trip."""
    s3fs.S3FileSystem().mkdir("cf-shards")
    table = ShardedParquetDataset(filepath="s3://cf-shards/processed/clean.parquet")
    parts = ShardPartsDataset(filepath="s3://cf-shards/processed/raw_metric_shards")
    assert guard_dataset("clean_server_metrics", table) and guard_dataset("raw_metric_shards", parts)
    for i in (1, 2, 3):
        table.save({shard_name(i, 3): pd.DataFrame({"x": [i, i]}) if i != 2 else pd.DataFrame()})
        parts.save({shard_name(i, 3): pd.DataFrame({"x": [i]})})
    assert table.load()["x"].tolist() == [1, 1, 3, 3]
    assert not s3fs.S3FileSystem().exists("cf-shards/processed/clean.parquet.parts")
    assert {k: v()["x"].tolist() for k, v in parts.load().items()} == {
        shard_name(i, 3): [i] for i in (1, 2, 3)
    }
