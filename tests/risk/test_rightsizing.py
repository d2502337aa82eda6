"""Right-sizing on hand-checked cases with the shipped price table (us-east-1 m5: 0.096 USD/h per 2 vCPU)."""

import pandas as pd
import pytest

from capacity_forecaster.cloud.prices import load_price_table
from capacity_forecaster.pipelines.risk_analysis.rightsizing_nodes import recommend_instance_types
from capacity_forecaster.risk.rightsizing import peak_forecasts, right_size

PRICES = load_price_table()
NO_7I = ["m5", "c5", "r5", "m6i", "c6i", "r6i"]


def _peaks(rows: dict[str, tuple[float, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"cpu_p95": {s: c for s, (c, _) in rows.items()}, "memory_p95": {s: m for s, (_, m) in rows.items()}},
        dtype="float64",
    )


def _inventory(types: dict[str, str], **extra: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame({"server_id": list(types), "instance_type": list(types.values())})
    for column, values in extra.items():
        frame[column] = frame["server_id"].map(values)
    return frame


def _size(peaks, inventory, families=NO_7I, region="us-east-1") -> pd.DataFrame:
    return right_size(peaks, inventory, PRICES, 70.0, families, 730, region).set_index("server_id")


def test_quiet_m5_4xlarge_moves_down_within_its_family():
    out = _size(
        _peaks({"at20": (20.0, 20.0), "at15": (15.0, 15.0)}),
        _inventory({"at20": "m5.4xlarge", "at15": "m5.4xlarge"}),
    )
    # 20 % of 16 vCPU = 3.2 busy vCPU: 4.57 vCPU at 70 %, so m5.xlarge (4 vCPU, 80 %) does not fit; 64 GiB x
    # 20 / 70 = 18.3 GiB > 16 as well. m5.2xlarge does: 0.384 - 0.768 USD/h x 730 h.
    assert out.loc["at20", ["required_vcpus", "required_memory_gb"]].tolist() == [4.57, 18.29]
    assert out.loc["at20", "recommended_instance_type"] == "m5.2xlarge"
    assert out.loc["at20", "monthly_cost_change_usd"] == pytest.approx(-280.32)
    # 15 %: 3.43 vCPU and 13.7 GiB fit m5.xlarge (4 vCPU, 16 GiB): 0.192 - 0.768 USD/h x 730 h.
    assert out.loc["at15", "recommended_instance_type"] == "m5.xlarge"
    assert out.loc["at15", "monthly_cost_change_usd"] == pytest.approx(-420.48)
    assert "in family m5" in out.loc["at15", "reason"]


def test_nothing_fits_and_the_other_families_are_tried_next():
    peaks, inventory = _peaks({"hot": (95.0, 50.0)}), _inventory({"hot": "m5.24xlarge"})
    # 96 vCPU x 95 / 70 = 130.3 vCPU: more than m5.24xlarge (96) and any 32xlarge (128).
    none = _size(peaks, inventory).loc["hot"]
    assert none["recommended_instance_type"] is None and pd.isna(none["monthly_cost_change_usd"])
    assert "130.3 vCPU" in none["reason"] and "more than any type" in none["reason"]
    # With m7i allowed, m7i.48xlarge (192 vCPU, 768 GiB) fits: 0.1008 x 96 - 4.608 USD/h x 730 h.
    bigger = _size(peaks, inventory, families=[*NO_7I, "m7i"]).loc["hot"]
    assert bigger["recommended_instance_type"] == "m7i.48xlarge"
    assert bigger["monthly_cost_change_usd"] == 3700.22  # (9.6768 - 4.608) x 730, to the cent
    assert "cheapest of the allowed families" in bigger["reason"]


def test_servers_that_are_not_ec2_or_lack_forecasts_get_a_reason():
    out = _size(
        _peaks({"onprem": (20.0, 20.0), "noagent": (15.0, None)}),
        _inventory({"onprem": "dell-r740", "noagent": "m5.4xlarge", "silent": "m5.large"}),
    )
    assert out["recommended_instance_type"].isna().tolist() == [True, False, True]
    assert (
        out.loc["onprem", "reason"] == "dell-r740 is not an EC2 instance type of the price table in us-east-1"
    )
    assert out.loc["silent", "reason"] == "no cpu_p95 forecast"
    # No memory forecast: memory stays at 64 GiB, so the only m5 with it is the current type.
    assert out.loc["noagent", "recommended_instance_type"] == "m5.4xlarge"
    assert out.loc["noagent", "monthly_cost_change_usd"] == 0.0
    assert "already the smallest fitting type; memory not monitored" in out.loc["noagent", "reason"]
    # The contract's inventory may have no instance_type at all (an on-premises fleet).
    bare = _size(_peaks({"x": (20.0, 20.0)}), pd.DataFrame({"server_id": ["x"]})).loc["x"]
    assert bare["reason"] == "no instance_type in server_inventory"


def test_prices_follow_the_region_of_the_availability_zone():
    out = _size(
        _peaks({"dublin": (15.0, 15.0)}),
        _inventory({"dublin": "m5.4xlarge"}, datacenter={"dublin": "eu-west-1a"}),
    ).loc["dublin"]
    assert out["region"] == "eu-west-1" and out["recommended_instance_type"] == "m5.xlarge"
    assert out["monthly_cost_change_usd"] == -468.66  # (0.214 - 0.856) x 730


def test_node_uses_the_peak_of_the_selected_forecast_through_the_horizon():
    dates = pd.date_range("2026-12-01", periods=3)
    rows = []
    for metric, selected, other in (
        ("cpu_p95", [10.0, 15.0, 12.0], 60.0),
        ("memory_p95", [14.0, 9.0, 8.0], 60.0),
    ):
        for date, value in zip(dates, selected, strict=True):
            rows.append(("a", metric, date, "trees", value - 5, value - 2, value, True))
            rows.append(("a", metric, date, "prophet", other - 5, other - 2, other, False))
    forecasts = pd.DataFrame(
        rows, columns=["server_id", "metric", "date", "model", "p10", "p50", "p90", "is_selected"]
    )
    assert peak_forecasts(forecasts, "selected", "p90").loc["a"].tolist() == [15.0, 14.0]
    out = recommend_instance_types(
        forecasts, _inventory({"a": "m5.4xlarge"}), PRICES, "selected", "p90", 70.0, NO_7I, 730, "us-east-1"
    )
    assert out["recommended_instance_type"].tolist() == ["m5.xlarge"]
    with pytest.raises(ValueError, match="no rows for forecast_model='canvas'"):
        peak_forecasts(forecasts, "canvas", "p90")
