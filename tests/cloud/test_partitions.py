"""The cloud guard on kedro-datasets ``PartitionedDataset``s (the per-shard datasets) on moto's S3: a save
writes all of its partitions or none, and failures name the dataset, the partition's URI and the reason."""

import boto3
import numpy as np
import pandas as pd
import pytest
import s3fs
from kedro.io import DatasetError
from kedro.pipeline import Node, Pipeline
from kedro_datasets.partitions import PartitionedDataset

from capacity_forecaster.cloud.errors import CloudDatasetError, CloudStorageError
from capacity_forecaster.cloud.hooks import S3DatasetHooks, guard_dataset
from tests.cloud.conftest import object_keys

SHARDS = "forecasts/intermediate/shards/model_input_shards/"
MODELS = "models/shards/seasonal_naive_forecaster/"


@pytest.fixture
def catalog(bucket, kedro_session):
    """The cloud environment's catalog on the moto bucket, guarded by the hooks as in a run."""
    return kedro_session(env="cloud").load_context().catalog


def _shards(run: str, bad: str | None = None) -> dict[str, pd.DataFrame]:
    """A 3-way model input, one frame per shard; shard ``bad`` holds a column Parquet cannot write."""
    shards = {f"shard-{i}-of-3": pd.DataFrame({"run": [run], "y": [float(i)]}) for i in (1, 2, 3)}
    if bad is not None:
        shards[bad] = pd.DataFrame({"run": [run, run], "y": [1.0, "not a float"]})
    return shards


def _cause(excinfo: pytest.ExceptionInfo) -> CloudDatasetError:
    """The catalog re-wraps dataset errors as ``DatasetError("<name>: ...")``; ours is the cause."""
    error = excinfo.value.__cause__ if not isinstance(excinfo.value, CloudDatasetError) else excinfo.value
    assert isinstance(error, CloudDatasetError), repr(excinfo.value)
    return error


def test_the_cloud_catalog_guards_its_partitioned_datasets(catalog):
    for name in ("model_input_shards", "seasonal_naive_forecaster"):  # by after_catalog_created
        assert catalog[name]._cf_s3_guarded, name
    assert guard_dataset("prophet_backtest", catalog["prophet_backtest"])  # factory-made: before_pipeline_run
    assert "ParquetDataset" in repr(catalog["model_input_shards"])


def test_failed_partition_save_commits_no_partition_and_keeps_the_previous_set(catalog, bucket):
    catalog.save("model_input_shards", _shards("first"))
    before = object_keys(bucket, SHARDS)
    with pytest.raises(DatasetError, match="not a float|Expected|Could not convert"):
        catalog.save("model_input_shards", _shards("second", bad="shard-3-of-3"))  # 1 and 2 written first
    s3fs.S3FileSystem.clear_instance_cache()
    assert object_keys(bucket, SHARDS) == before
    loaded = catalog.load("model_input_shards")
    assert {key: load()["run"].tolist() for key, load in loaded.items()} == {
        f"shard-{i}-of-3": ["first"] for i in (1, 2, 3)
    }
    assert "Uploads" not in boto3.client("s3").list_multipart_uploads(Bucket=bucket)


def test_failed_first_save_leaves_nothing_a_load_would_take_for_a_set(catalog, bucket):
    with pytest.raises(DatasetError):
        catalog.save("model_input_shards", _shards("only", bad="shard-3-of-3"))
    assert object_keys(bucket, SHARDS) == {}
    with pytest.raises(DatasetError) as err:
        catalog.load("model_input_shards")
    error = _cause(err)
    assert (error.dataset_name, error.uri, error.operation, error.problem.code) == (
        "model_input_shards",
        f"s3://{bucket}/{SHARDS.rstrip('/')}",
        "load",
        "NoSuchKey",
    )
    assert "No partitions found" in str(error) and "the modelling pipeline writes it" in str(error)


def test_without_the_guard_the_same_save_leaves_a_partial_set(bucket):
    """Why partitions are guarded: each partition is committed as it goes, the failed one as an empty
    object, so a load lists a complete-looking set."""
    dataset = PartitionedDataset(
        path=f"s3://{bucket}/{SHARDS}", dataset="pandas.ParquetDataset", filename_suffix=".parquet"
    )
    with pytest.raises(DatasetError):
        dataset.save(_shards("only", bad="shard-3-of-3"))
    loaded = dataset.load()
    assert sorted(loaded) == ["shard-1-of-3", "shard-2-of-3", "shard-3-of-3"]  # looks complete, but:
    assert object_keys(bucket, SHARDS)[f"{SHARDS}shard-3-of-3.parquet"] == 0
    with pytest.raises(DatasetError):
        loaded["shard-3-of-3"]()


def test_versioned_partition_failing_mid_stream_adds_no_version(bucket, kedro_session):
    """A pickle that fails after its array is streamed: no new version of any shard, the old ones load.
    Each save gets its own catalog, so its own save version, as each run does."""

    def catalog():
        return kedro_session(env="cloud").load_context().catalog

    fitted = {"cpu_p95": np.arange(200_000, dtype="float64")}
    catalog().save("seasonal_naive_forecaster", {"shard-1-of-2": fitted, "shard-2-of-2": {"cpu_p95": 2}})
    versions = object_keys(bucket, MODELS)
    assert len(versions) == 2
    with pytest.raises(DatasetError, match="Can't pickle|lambda"):
        catalog().save(
            "seasonal_naive_forecaster",
            {"shard-1-of-2": {"cpu_p95": 1}, "shard-2-of-2": {**fitted, "bad": lambda: 1}},
        )
    assert object_keys(bucket, MODELS) == versions
    assert "Uploads" not in boto3.client("s3").list_multipart_uploads(Bucket=bucket)
    loaded = catalog().load("seasonal_naive_forecaster")
    np.testing.assert_array_equal(loaded["shard-1-of-2"]()["cpu_p95"], fitted["cpu_p95"])
    catalog().save("seasonal_naive_forecaster", {"shard-1-of-2": {"cpu_p95": 3}})  # a later run's shard 1
    assert len(object_keys(bucket, MODELS)) == 3
    assert catalog().load("seasonal_naive_forecaster")["shard-1-of-2"]() == {"cpu_p95": 3}


def test_unreadable_partition_names_its_own_uri(catalog, bucket):
    catalog.save("model_input_shards", _shards("first"))
    key = f"{SHARDS}shard-2-of-3.parquet"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"PAR1 this is not parquet")
    loaded = catalog.load("model_input_shards")
    assert loaded["shard-1-of-3"]()["run"].tolist() == ["first"]
    with pytest.raises(CloudDatasetError) as err:
        loaded["shard-2-of-3"]()  # the merge step calls each partition's load
    assert (err.value.dataset_name, err.value.uri, err.value.problem.code) == (
        "model_input_shards",
        f"s3://{bucket}/{key}",
        "Unreadable",
    )


def test_missing_bucket_names_the_dataset_on_load_and_the_partition_on_save(catalog, bucket):
    boto3.client("s3").delete_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(DatasetError) as load_err:
        catalog.load("model_input_shards")
    error = _cause(load_err)
    assert (error.dataset_name, error.uri, error.problem.code) == (
        "model_input_shards",
        f"s3://{bucket}/{SHARDS.rstrip('/')}",
        "NoSuchBucket",
    )
    assert "The specified bucket does not exist" in str(error) and "CF_BUCKET" in str(error)
    with pytest.raises(DatasetError) as save_err:
        catalog.save("model_input_shards", _shards("first"))
    error = _cause(save_err)
    assert (error.operation, error.uri, error.problem.code) == (
        "save",
        f"s3://{bucket}/{SHARDS}shard-1-of-3.parquet",
        "NoSuchBucket",
    )
    assert str(error).startswith(f"Could not save dataset 'model_input_shards' to s3://{bucket}/{SHARDS}")


def _overwriting(bucket: str) -> PartitionedDataset:
    dataset = PartitionedDataset(
        path=f"s3://{bucket}/replaced",
        dataset="pandas.ParquetDataset",
        filename_suffix=".parquet",
        overwrite=True,
    )
    assert guard_dataset("replaced", dataset)
    return dataset


def test_overwrite_deletes_the_old_partitions_only_after_the_new_set_is_committed(bucket):
    _overwriting(bucket).save(_shards("first"))
    with pytest.raises(DatasetError):
        _overwriting(bucket).save(_shards("second", bad="shard-2-of-3"))
    assert {k: v()["run"].tolist() for k, v in _overwriting(bucket).load().items()} == {
        f"shard-{i}-of-3": ["first"] for i in (1, 2, 3)
    }
    _overwriting(bucket).save({"shard-1-of-3": _shards("third")["shard-1-of-3"], "extra": pd.DataFrame()})
    assert sorted(object_keys(bucket, "replaced/")) == [
        "replaced/extra.parquet",
        "replaced/shard-1-of-3.parquet",
    ]
    assert _overwriting(bucket).load()["shard-1-of-3"]()["run"].tolist() == ["third"]


def test_pre_run_check_covers_a_pipeline_of_partitioned_datasets(catalog, bucket):
    """``prophet_backtest`` is factory-made: the run's hook guards it and checks its bucket."""
    pipeline = Pipeline([Node(lambda shards: shards, "model_input_shards", "prophet_backtest", name="copy")])
    boto3.client("s3").delete_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(CloudStorageError, match=rf"Cannot use s3://{bucket}/forecasts/intermediate/shards/"):
        S3DatasetHooks().before_pipeline_run(pipeline, catalog)
    assert catalog["prophet_backtest"]._cf_s3_guarded
