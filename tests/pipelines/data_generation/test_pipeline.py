"""Tests of the data_generation pipeline: node contracts, generator statistics, dirt, truth, a Kedro run."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.pipelines.data_generation import create_pipeline
from capacity_forecaster.pipelines.data_generation.nodes import (
    add_monitoring_dirt,
    build_server_truth,
    draw_server_profiles,
    generate_server_inventory,
    simulate_utilisation,
    split_history_and_future,
)
from capacity_forecaster.schema import METRICS, RISK_LEVELS
from tests.conftest import PROJECT_PATH

M = list(METRICS)
CONF = PROJECT_PATH / "conf" / "base"
SHARED = yaml.safe_load((CONF / "parameters.yml").read_text())
DEFAULTS = yaml.safe_load((CONF / "parameters_data_generation.yml").read_text())["data_generation"]
SMALL = {"n_servers": 24, "history_days": 730}
INTERMEDIATES = (
    "server_inventory",
    "server_profiles",
    "simulated_metrics",
    "history_metrics",
    "future_metrics",
    "raw_server_metrics",
    "server_truth",
)


class _KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so a test can read every intermediate afterwards."""

    def _release(self) -> None:
        pass


def _run(**overrides: Any) -> dict[str, pd.DataFrame]:
    """Runs the pipeline with SequentialRunner on an in-memory catalog of the project parameters."""
    params = {**copy.deepcopy(DEFAULTS), **overrides}
    catalog = DataCatalog()
    for key, value in params.items():
        catalog[f"params:data_generation.{key}"] = value
    catalog["params:horizon"] = SHARED["horizon"]
    for key, value in SHARED["calendar"].items():
        catalog[f"params:calendar.{key}"] = value
    for name in INTERMEDIATES:
        catalog[name] = _KeptDataset()
    SequentialRunner().run(create_pipeline(), catalog)
    return {name: catalog.load(name) for name in INTERMEDIATES}


@pytest.fixture(scope="module")
def small() -> dict[str, pd.DataFrame]:
    """24 servers x 2 years of history + horizon."""
    return _run(**SMALL)


@pytest.fixture(scope="module")
def default_fleet() -> dict[str, pd.DataFrame]:
    """The default fleet: 120 servers x 4 years."""
    return _run()


@pytest.fixture(scope="module")
def clean(small: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Clean simulated values (history + future) joined with archetype and calendar features."""
    sim = small["simulated_metrics"]
    cal = calendar_features(pd.DatetimeIndex(sim["timestamp"].unique()), **SHARED["calendar"])
    return sim.merge(cal.rename(columns={"date": "timestamp"}), on="timestamp").merge(
        small["server_inventory"][["server_id", "archetype"]], on="server_id"
    )


# --- inventory ---------------------------------------------------------------------------------------------


def test_inventory_columns_sizes_and_prices(small):
    inv = small["server_inventory"]
    assert inv.columns.tolist() == [
        "server_id",
        "archetype",
        "instance_family",
        "instance_type",
        "vcpus",
        "memory_gb",
        "hourly_cost_usd",
        "datacenter",
    ]
    assert inv["server_id"].tolist() == [f"srv-{i:04d}" for i in range(1, 25)]
    assert inv["archetype"].value_counts().to_dict() == {
        "web": 9,
        "database": 6,
        "batch": 5,
        "idle": 4,
    }  # 24 x mix, largest remainder
    prices = pd.DataFrame(DEFAULTS["instance_families"]).T.loc[inv["instance_family"]]
    np.testing.assert_allclose(
        inv["hourly_cost_usd"], inv["vcpus"] * prices["usd_per_vcpu_hour"].values, atol=1e-4
    )
    np.testing.assert_array_equal(inv["memory_gb"], inv["vcpus"] * prices["memory_gb_per_vcpu"].values)
    assert (inv["hourly_cost_usd"] > 0).all() and inv["datacenter"].isin(DEFAULTS["datacenters"]).all()
    assert inv.loc[inv["archetype"] == "database", "instance_family"].eq("r6i").all()


def test_inventory_rejects_a_mix_that_does_not_sum_to_one():
    mix = {"web": 0.5, "database": 0.2, "batch": 0.2, "idle": 0.2}
    with pytest.raises(ValueError, match="sum to 1"):
        generate_server_inventory(10, mix, DEFAULTS["archetypes"], DEFAULTS["instance_families"], ["dc"], 1)


def test_inventory_rejects_an_archetype_without_profile():
    with pytest.raises(ValueError, match=r"without a profile: \['gpu'\]"):
        generate_server_inventory(
            10, {"gpu": 1.0}, DEFAULTS["archetypes"], DEFAULTS["instance_families"], ["dc"], 1
        )


def test_simulation_rejects_a_correlation_that_is_not_positive_definite(small):
    archetypes = copy.deepcopy(DEFAULTS["archetypes"])
    archetypes["web"]["correlation"] = [
        [1, 0.9, 0.9, -0.9],
        [0.9, 1, 0.9, 0.9],
        [0.9, 0.9, 1, 0.9],
        [-0.9, 0.9, 0.9, 1],
    ]
    with pytest.raises(ValueError, match="web.correlation is not positive definite"):
        simulate_utilisation(small["server_profiles"], archetypes, "2024-01-01", 30, 10, 0.3, "US", 2, 5, 1)


# --- determinism, shapes, dtypes ---------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data(small):
    again = _run(**SMALL)
    for name in ("server_inventory", "raw_server_metrics", "future_metrics", "server_truth"):
        pd.testing.assert_frame_equal(again[name], small[name])
    other = _run(**SMALL, random_seed=DEFAULTS["random_seed"] + 1)
    assert not other["future_metrics"][M].equals(small["future_metrics"][M])
    assert not other["server_inventory"]["archetype"].equals(small["server_inventory"]["archetype"])


def test_raw_metrics_schema_and_format(small):
    raw = small["raw_server_metrics"]
    assert raw.columns.tolist() == ["timestamp", "server_id", *M]
    assert raw["timestamp"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert raw["timestamp"].min() == "2022-01-01" and raw["timestamp"].max() == "2023-12-31"
    assert all(raw[m].dtype == np.float64 for m in M)
    np.testing.assert_allclose(raw[M].to_numpy(), raw[M].round(2).to_numpy())
    assert set(raw["server_id"]) == set(small["server_inventory"]["server_id"])


def test_future_metrics_cover_the_horizon_with_clean_values(small):
    future = small["future_metrics"]
    assert future.columns.tolist() == ["timestamp", "server_id", *M]
    assert future["timestamp"].dtype == "datetime64[ns]"
    assert len(future) == 24 * SHARED["horizon"]
    dates = pd.DatetimeIndex(future["timestamp"].unique())
    assert dates.min() == pd.Timestamp("2024-01-01")  # the day after the last history day
    assert dates.max() == pd.Timestamp("2024-01-01") + pd.Timedelta(days=SHARED["horizon"] - 1)
    values = future[M].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 100
    history = small["history_metrics"]
    assert history["timestamp"].max() == pd.Timestamp("2023-12-31")
    assert len(history) + len(future) == len(small["simulated_metrics"])


# --- archetype patterns ------------------------------------------------------------------------------------


def test_web_weekdays_are_busier_than_weekends(clean):
    web = clean[clean["archetype"] == "web"]
    weekday, weekend = (web.loc[web["day_of_week"] < 5, M].mean(), web.loc[web["day_of_week"] >= 5, M].mean())
    assert (weekday["cpu_p95"] - weekend["cpu_p95"]) > 8
    assert (weekday["network_p95"] - weekend["network_p95"]) > 8
    assert (weekday > weekend).all()


def test_quarter_end_windows_are_clearly_higher_for_batch_and_database(clean):
    for archetype, metric, min_lift in (
        ("batch", "cpu_p95", 15),
        ("batch", "disk_io_p95", 12),
        ("database", "cpu_p95", 8),
        ("database", "disk_io_p95", 8),
    ):
        rows = clean[clean["archetype"] == archetype]
        quarter_end = rows.loc[rows["is_end_of_quarter"], metric].mean()
        rest = rows.loc[~rows["is_end_of_quarter"] & ~rows["is_month_end"], metric].mean()
        assert quarter_end - rest > min_lift, (archetype, metric, quarter_end, rest)
        month_end_only = rows.loc[rows["is_month_end"] & ~rows["is_end_of_quarter"], metric].mean()
        assert rest < month_end_only < quarter_end


def test_holidays_dip_for_web_and_batch(clean):
    for archetype in ("web", "batch"):
        weekdays = clean[
            (clean["archetype"] == archetype) & (clean["day_of_week"] < 5) & ~clean["is_month_end"]
        ]
        assert (
            weekdays.loc[weekdays["is_holiday"], "cpu_p95"].mean()
            < 0.8 * weekdays.loc[~weekdays["is_holiday"], "cpu_p95"].mean()
        )


def test_idle_servers_stay_below_40_percent_on_every_metric(clean, default_fleet):
    means = clean.groupby(["archetype", "server_id"])[M].mean()
    assert (means.loc["idle"] < 40).all().all()
    assert (
        means.drop(index="idle").max(axis=1) >= 40
    ).all()  # only idle servers are consolidation candidates
    inventory = default_fleet["server_inventory"]
    assert 0.15 <= (inventory["archetype"] == "idle").mean() <= 0.20


def test_database_memory_is_steady_and_high(small, clean):
    profiles = small["server_profiles"]
    steady = profiles.loc[~profiles["is_grower"] & (profiles["shift_day"] < 0), "server_id"]
    db = clean[(clean["archetype"] == "database") & clean["server_id"].isin(steady)].groupby("server_id")[
        "memory_p95"
    ]
    assert db.ngroups >= 3
    assert (db.mean() > 50).all() and (db.std() < 6).all()


def test_noise_is_correlated_across_metrics_and_persistent():
    """With a flat profile (no seasonality, growth or shifts) the values are level + noise, so their
    correlation across metrics must match the archetype's matrix and their lag-1 autocorrelation its AR(1)."""
    archetypes = copy.deepcopy(DEFAULTS["archetypes"])
    for profile in archetypes.values():
        profile.update(
            weekly_shape=[1.0] * 7,
            holiday_dip=1.0,
            growth_per_year=[0.0, 0.0],
            month_end_peak=dict.fromkeys(M, 0.0),
            quarter_end_peak=dict.fromkeys(M, 0.0),
        )
    inventory = generate_server_inventory(
        40, DEFAULTS["archetype_mix"], archetypes, DEFAULTS["instance_families"], ["dc"], 7
    )
    profiles = draw_server_profiles(inventory, archetypes, 1000, 0.0, [80, 90], [100, 200], 0.0, [0, 0], 7)
    sim = simulate_utilisation(profiles, archetypes, "2020-01-01", 1000, 1, 0.3, "US", 2, 5, 7)
    sim = sim.merge(inventory[["server_id", "archetype"]], on="server_id")
    for archetype in ("web", "database", "batch"):
        rows = sim[sim["archetype"] == archetype]
        corr = np.mean([g[M].corr().to_numpy() for _, g in rows.groupby("server_id")], axis=0)
        expected = np.asarray(archetypes[archetype]["correlation"])
        assert (corr[expected > 0] > 0).all()
        np.testing.assert_allclose(corr, expected, atol=0.08)
        lag1 = np.mean([g["cpu_p95"].autocorr(1) for _, g in rows.groupby("server_id")])
        assert lag1 == pytest.approx(archetypes[archetype]["ar_coefficient"], abs=0.08)


# --- dirt ------------------------------------------------------------------------------------------


def test_dirt_is_counted_by_its_parameters():
    dirt = {
        "missing_day_share": 0.01,
        "gap_server_share": 0.25,
        "gap_days": [30, 30],
        "duplicate_share": 0.01,
        "spike_share": 0.002,
        "spike_out_of_range_share": 0.5,
    }
    out = _run(**SMALL, **dirt)
    history, raw = out["history_metrics"], out["raw_server_metrics"]
    n = len(history)

    duplicates = raw.duplicated().sum()
    assert raw.duplicated(["timestamp", "server_id"]).sum() == duplicates  # duplicates are exact copies
    deduped = raw.drop_duplicates()
    missing = n - len(deduped)
    gap_rows = 0.25 * 24 * 30
    assert abs(duplicates - 0.01 * n) < 4 * np.sqrt(0.01 * n)
    assert abs(missing - (0.01 * n + gap_rows)) < 4 * np.sqrt(0.01 * n) + 0.6 * gap_rows

    # A 30-day gap: some server misses 30 consecutive days inside its history.
    days = pd.to_datetime(deduped["timestamp"])
    longest_step = days.groupby(deduped["server_id"]).diff().dt.days.max()
    assert longest_step == 31

    keyed = history.assign(timestamp=history["timestamp"].dt.strftime("%Y-%m-%d"))
    both = deduped.merge(keyed, on=["timestamp", "server_id"], suffixes=("", "_true"))
    assert len(both) == len(deduped)
    changed = np.stack([both[m] != both[f"{m}_true"] for m in M])
    expected_spikes = 0.002 * 4 * len(both)
    assert abs(changed.sum() - expected_spikes) < 4 * np.sqrt(expected_spikes)
    values = raw[M].to_numpy()
    out_of_range = ((values > 100) | (values < 0)).sum()
    assert (values > 100).any() and (values < 0).any()
    assert abs(out_of_range - expected_spikes / 2) < 4 * np.sqrt(expected_spikes / 2)


def test_no_dirt_means_the_raw_history_is_the_clean_history():
    none = {"missing_day_share": 0.0, "gap_server_share": 0.0, "duplicate_share": 0.0, "spike_share": 0.0}
    out = _run(**SMALL, **none)
    history = out["history_metrics"].assign(
        timestamp=out["history_metrics"]["timestamp"].dt.strftime("%Y-%m-%d")
    )
    pd.testing.assert_frame_equal(out["raw_server_metrics"], history)


# --- truth -----------------------------------------------------------------------------------------


def _truth_from(future: pd.DataFrame) -> pd.DataFrame:
    """Recomputes the truth with plain pandas, independently of build_server_truth."""
    long = future.melt(id_vars=["timestamp", "server_id"], var_name="metric").sort_values("timestamp")
    analysis_date = future["timestamp"].min() - pd.Timedelta(days=1)
    rows = []
    for (server, metric), g in long.groupby(["server_id", "metric"]):
        above_80, above_90 = g.loc[g["value"] > 80, "timestamp"], g.loc[g["value"] > 90, "timestamp"]
        peak, mean = g["value"].max(), g["value"].mean()
        level = (
            "very_high" if peak > 90 else "high" if peak > 80 else "underutilized" if mean < 40 else "normal"
        )
        rows.append(
            {
                "server_id": server,
                "metric": metric,
                "peak": peak,
                "mean": mean,
                "first_date_above_80": above_80.min() if len(above_80) else pd.NaT,
                "first_date_above_90": above_90.min() if len(above_90) else pd.NaT,
                "days_to_80": (above_80.min() - analysis_date).days if len(above_80) else pd.NA,
                "days_to_90": (above_90.min() - analysis_date).days if len(above_90) else pd.NA,
                "risk_level": level,
            }
        )
    return pd.DataFrame(rows)


def test_truth_is_consistent_with_future_metrics(default_fleet):
    truth = default_fleet["server_truth"]
    assert truth.columns.tolist() == [
        "server_id",
        "metric",
        "peak",
        "mean",
        "first_date_above_80",
        "first_date_above_90",
        "days_to_80",
        "days_to_90",
        "risk_level",
        "server_risk_level",
    ]
    assert truth["days_to_80"].dtype == "Int64" and truth["first_date_above_80"].dtype == "datetime64[ns]"
    expected = _truth_from(default_fleet["future_metrics"])
    got = truth.set_index(["server_id", "metric"]).sort_index()
    expected = expected.set_index(["server_id", "metric"]).sort_index()
    np.testing.assert_allclose(got["peak"], expected["peak"])
    np.testing.assert_allclose(got["mean"], expected["mean"])
    for column in ("first_date_above_80", "first_date_above_90", "risk_level"):
        pd.testing.assert_series_equal(
            got[column], expected[column].astype(got[column].dtype), check_names=False
        )
    for column in ("days_to_80", "days_to_90"):
        pd.testing.assert_series_equal(got[column], expected[column].astype("Int64"), check_names=False)
    severity = got["risk_level"].map(RISK_LEVELS.index).groupby("server_id")
    server_level = np.where(severity.min() == 3, 3, severity.min())
    assert (
        got.groupby("server_id")["server_risk_level"].first() == np.asarray(RISK_LEVELS)[server_level]
    ).all()


def test_truth_rejects_an_incomplete_future_grid(small):
    with pytest.raises(ValueError, match="complete grid"):
        build_server_truth(small["future_metrics"].iloc[1:])


def test_default_fleet_has_every_tier_and_growers_are_learnable(default_fleet):
    truth, history = default_fleet["server_truth"], default_fleet["history_metrics"]
    tiers = truth.drop_duplicates("server_id")["server_risk_level"].value_counts()
    n = len(default_fleet["server_inventory"])
    assert tiers["very_high"] >= 0.04 * n and tiers["high"] >= 0.02 * n
    assert 0.12 * n <= tiers["underutilized"] <= 0.30 * n and tiers["normal"] >= 0.5 * n

    # A naive forecaster that only sees the history (trend of the last 120 days + last year's worst excursion
    # above its mean) must separate the truly high-risk servers from the rest.
    recent = history[history["timestamp"] > history["timestamp"].max() - pd.Timedelta(days=120)]
    day = (recent["timestamp"] - recent["timestamp"].min()).dt.days
    slope = recent[M].apply(
        lambda col: col.groupby(recent["server_id"]).apply(lambda v: np.polyfit(day.loc[v.index], v, 1)[0])
    )
    last_month = recent[recent["timestamp"] > recent["timestamp"].max() - pd.Timedelta(days=28)]
    level = last_month.groupby("server_id")[M].mean()
    year = history[history["timestamp"] > history["timestamp"].max() - pd.Timedelta(days=365)]
    excursion = year.groupby("server_id")[M].quantile(0.99) - year.groupby("server_id")[M].mean()
    projected = (level + slope.clip(lower=0) * 90 + excursion).max(axis=1)
    flagged = projected > 80
    at_risk = truth.groupby("server_id")["server_risk_level"].first().isin(["very_high", "high"])
    recall = (flagged & at_risk).sum() / at_risk.sum()
    precision = (flagged & at_risk).sum() / flagged.sum()
    assert recall >= 0.9 and precision >= 0.8, (recall, precision)


# --- the pipeline through Kedro ----------------------------------------------------------------------------


def test_pipeline_run_writes_the_four_datasets(kedro_session, data_root: Path):
    session = kedro_session(runtime_params={"data_generation": {"n_servers": 12, "history_days": 400}})
    session.run(pipeline_names=["data_generation"], runner=SequentialRunner())
    raw = pd.read_csv(data_root / "01_raw" / "server_metrics.csv.gz")
    inventory = pd.read_csv(data_root / "01_raw" / "server_inventory.csv")
    future = pd.read_parquet(data_root / "01_raw" / "future_metrics.parquet")
    truth = pd.read_parquet(data_root / "01_raw" / "server_truth.parquet")
    assert raw.columns.tolist() == ["timestamp", "server_id", *M] and raw["server_id"].nunique() == 12
    assert raw["timestamp"].max() == "2023-02-04"  # 400 days from 2022-01-01; defaults merged, not replaced
    assert len(inventory) == 12 and {"vcpus", "memory_gb", "hourly_cost_usd"} <= set(inventory.columns)
    assert len(future) == 12 * SHARED["horizon"] and future["timestamp"].min() == pd.Timestamp("2023-02-05")
    assert len(truth) == 12 * len(M) and truth["risk_level"].isin(RISK_LEVELS).all()


def test_nodes_do_not_modify_their_inputs(small):
    inputs = {
        name: small[name].copy(deep=True)
        for name in ("server_profiles", "simulated_metrics", "history_metrics")
    }
    simulate_utilisation(
        small["server_profiles"], DEFAULTS["archetypes"], "2022-01-01", 60, 10, 0.3, "US", 2, 5, 3
    )
    split_history_and_future(small["simulated_metrics"], 90)
    add_monitoring_dirt(small["history_metrics"], 0.1, 0.5, [2, 5], 0.1, 0.1, 0.5, 3)
    build_server_truth(small["future_metrics"])
    for name, before in inputs.items():
        pd.testing.assert_frame_equal(small[name], before)
