"""OptionalParquetDataset: the server_truth type, which may be absent on real (not generated) data."""

import pandas as pd

from capacity_forecaster.datasets.optional import OptionalParquetDataset


def test_missing_file_loads_an_empty_frame(tmp_path):
    dataset = OptionalParquetDataset(filepath=str(tmp_path / "server_truth.parquet"))
    assert not dataset.exists()
    assert dataset.load().empty


def test_existing_file_round_trips(tmp_path):
    dataset = OptionalParquetDataset(filepath=str(tmp_path / "server_truth.parquet"))
    frame = pd.DataFrame({"server_id": ["s1"], "days_to_90": pd.array([40], dtype="Int64")})
    dataset.save(frame)
    pd.testing.assert_frame_equal(dataset.load(), frame)
