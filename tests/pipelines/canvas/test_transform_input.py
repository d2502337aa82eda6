"""Transform input: future regressor rows, and files of whole items below the payload limit."""

import io

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.canvas.requests import ITEM_ID, TARGET, TIMESTAMP
from capacity_forecaster.canvas.transform_input import MIB, add_future_regressors, split_whole_items
from capacity_forecaster.pipelines.canvas.nodes import export_canvas_training_data

REGRESSORS = ["is_end_of_quarter", "is_month_end", "is_holiday"]


def _features(n_servers: int, days: int, last_day: str = "2024-12-20") -> pd.DataFrame:
    """server_features of ``n_servers`` x 2 metrics; the last server stops 5 days early (a ragged end)."""
    dates = pd.date_range(end=last_day, periods=days, freq="D")
    calendar = calendar_features(dates, "US")
    rng = np.random.default_rng(3)
    frames = []
    for n in range(n_servers):
        for metric in ("cpu_p95", "memory_p95"):
            part = calendar.assign(server_id=f"srv-{n:04d}", metric=metric, value=rng.uniform(5, 95, days))
            frames.append(part.iloc[: days - 5] if n == n_servers - 1 else part)
    return pd.concat(frames, ignore_index=True)


def test_every_item_gets_its_future_regressors_from_its_own_last_day():
    training = export_canvas_training_data(_features(3, 40), REGRESSORS, "US", 2, 5)
    rows = add_future_regressors(training, 14, REGRESSORS, "US", 2, 5)
    future = rows[rows[TARGET].isna()]
    assert len(rows) == len(training) + 6 * 14
    pd.testing.assert_frame_equal(
        rows[rows[TARGET].notna()].reset_index(drop=True), training, check_dtype=False
    )
    starts = future.groupby(ITEM_ID)[TIMESTAMP].min()
    assert starts["srv-0000|cpu_p95"] == "2024-12-21" and starts["srv-0002|cpu_p95"] == "2024-12-16"
    assert (future.groupby(ITEM_ID).size() == 14).all()
    days = pd.DatetimeIndex(pd.to_datetime(future[TIMESTAMP]))
    expected = calendar_features(days, "US", 2, 5)[REGRESSORS].astype("int8").to_numpy()
    assert (future[REGRESSORS].to_numpy() == expected).all()
    christmas = future[future[TIMESTAMP] == "2024-12-25"]
    assert (christmas["is_holiday"] == 1).all() and (christmas["is_end_of_quarter"] == 1).all()


def test_a_fleet_larger_than_the_limit_is_split_into_files_of_whole_items():
    training = export_canvas_training_data(_features(40, 60), REGRESSORS, "US", 2, 5)
    rows = add_future_regressors(training, 14, REGRESSORS, "US", 2, 5)
    limit_mb = 0.05
    whole = rows.to_csv(index=False).encode()
    assert len(whole) > 3 * limit_mb * MIB  # the fleet's CSV is several times the limit

    files = split_whole_items(rows, limit_mb)
    assert len(files) >= 4
    assert all(len(content) < limit_mb * MIB for content in files)
    parts = [pd.read_csv(io.BytesIO(content), dtype={ITEM_ID: str}) for content in files]
    items = [set(part[ITEM_ID]) for part in parts]
    assert sum(len(s) for s in items) == len(set().union(*items)) == rows[ITEM_ID].nunique()  # once each
    rebuilt = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(rebuilt, rows.astype({TARGET: "float64"}), check_dtype=False)
    assert all(content.startswith(b"item_id,timestamp,target_value,") for content in files)


def test_an_item_larger_than_the_limit_is_refused_with_its_name():
    training = export_canvas_training_data(_features(2, 400), REGRESSORS, "US", 2, 5)
    with pytest.raises(ValueError, match=r"canvas item 'srv-0000\|cpu_p95' alone is 0\.0\d MiB"):
        split_whole_items(training, 0.005)


def test_an_item_split_across_the_frame_is_refused():
    rows = pd.DataFrame({ITEM_ID: ["a|cpu", "b|cpu", "a|cpu"], TIMESTAMP: ["2024-01-01"] * 3, TARGET: 1.0})
    with pytest.raises(ValueError, match="each item's rows together"):
        split_whole_items(rows, 1)
