"""Cloud catalog datasets on moto's S3: identical round trips, all-or-nothing saves and clear errors."""

import gzip
import json

import boto3
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import requests
import s3fs
from kedro.io import DatasetError

from capacity_forecaster.cloud.errors import CloudDatasetError
from capacity_forecaster.cloud.hooks import guard_dataset
from tests.cloud.conftest import object_keys


@pytest.fixture
def catalog(bucket, kedro_session):
    """The cloud environment's catalog, on the moto bucket."""
    return kedro_session(env="cloud").load_context().catalog


def _clean_metrics() -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=5, freq="D")
    return pd.DataFrame(
        {
            "server_id": pd.Series(["srv-0001"] * 5 + ["srv-0002"] * 5, dtype="str"),
            "metric": pd.Series(["cpu_p95"] * 10, dtype="str"),
            "date": pd.DatetimeIndex(list(dates) * 2).as_unit("ns"),
            "value": [12.5, 13.0, np.nan, 14.25, 99.9, 0.0, 100.0, 55.5, 55.5, 1e-3],
            "is_imputed": [False, False, True, False, False] * 2,
            "is_clipped": [False] * 9 + [True],
            "is_outlier": [False] * 10,
        }
    )


def _server_truth() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "server_id": pd.Series(["a", "b"], dtype="str"),
            "metric": pd.Series(["cpu_p95", "memory_p95"], dtype="str"),
            "peak": [91.2, 40.0],
            "first_date_above_80": pd.to_datetime(["2024-02-03", None]).as_unit("ns"),
            "days_to_80": pd.array([3, None], dtype="Int64"),
            "risk_level": pd.Series(["very_high", "normal"], dtype="str"),
        }
    )


def test_round_trips_are_identical_and_land_at_the_layout_keys(catalog, bucket):
    raw = pd.DataFrame(
        {
            "timestamp": ["2024-01-01", "2024-01-02"],
            "server_id": ["srv-0001", "srv-0001"],
            "cpu_p95": [10.5, 11.25],
            "memory_p95": [50.5, 51.125],  # not integral: pyarrow's CSV writer prints 50.0 as 50 (-> int64)
            "disk_io_p95": [1.5, 2.75],
            "network_p95": [3.25, 4.5],
        }
    )
    features = _clean_metrics().assign(lag_1=np.arange(10, dtype="float32"), rolling_std_7=np.float32(np.nan))
    report = {
        "rows_in": 10,
        "rows_out": 9,
        "long_gaps": [{"server_id": "a", "start": "2024-01-01", "days": 9}],
    }
    figure = go.Figure(go.Scatter(x=[1, 2], y=[3.5, 4.5], name="p50"))
    html = "<html><body>Capacity report – 90 days ≥ 80 %</body></html>"
    cases = {
        "raw_server_metrics": raw,
        "clean_server_metrics": _clean_metrics(),
        "server_features": features,
        "server_truth": _server_truth(),
        "data_quality_report": report,
        "risk_heatmap": figure,
        "capacity_report": html,
    }
    for name, data in cases.items():
        catalog.save(name, data)
    keys = object_keys(bucket)
    assert {
        "raw/server_metrics.csv.gz",
        "processed/clean_server_metrics.parquet",
        "processed/server_features.parquet",
        "raw/server_truth.parquet",
        "processed/data_quality_report.json",
        "reporting/figures/risk_heatmap.json",
        "reporting/capacity_report.html",
    } == set(keys)
    body = boto3.client("s3").get_object(Bucket=bucket, Key="raw/server_metrics.csv.gz")["Body"].read()
    assert gzip.decompress(body).decode().splitlines()[0] == ",".join(raw.columns)
    for name, data in cases.items():
        loaded = catalog.load(name)
        if name == "clean_server_metrics":  # its keys load as categoricals (read_dictionary in the catalog)
            loaded = loaded.astype({"server_id": data["server_id"].dtype, "metric": data["metric"].dtype})
        if isinstance(data, pd.DataFrame):
            pd.testing.assert_frame_equal(loaded, data, check_exact=True)
            assert loaded.dtypes.to_dict() == data.dtypes.to_dict(), name
        elif isinstance(data, go.Figure):
            assert loaded.to_dict() == data.to_dict()
        else:
            assert loaded == data, name
    assert catalog.load("raw_server_metrics").attrs["source"] == f"s3://{bucket}/raw/server_metrics.csv.gz"


def test_failed_save_leaves_no_partial_object_and_keeps_the_previous_one(catalog, bucket):
    catalog.save("data_quality_report", {"rows_in": 1})
    with pytest.raises(DatasetError, match="not JSON serializable"):
        catalog.save("data_quality_report", {"rows_in": 2, "bad": object()})  # json.dump fails mid-stream
    s3fs.S3FileSystem.clear_instance_cache()
    body = (
        boto3.client("s3").get_object(Bucket=bucket, Key="processed/data_quality_report.json")["Body"].read()
    )
    assert json.loads(body) == {"rows_in": 1}
    assert "Uploads" not in boto3.client("s3").list_multipart_uploads(Bucket=bucket)


def test_without_the_guard_s3fs_commits_a_partial_object(catalog, bucket):
    """Why the guard exists: the same failing save on an unguarded dataset leaves truncated JSON behind."""
    from kedro_datasets.json import JSONDataset  # noqa: PLC0415

    dataset = JSONDataset(filepath=f"s3://{bucket}/processed/unguarded.json")
    with pytest.raises(DatasetError):
        dataset.save({"rows_in": 2, "bad": object()})
    body = boto3.client("s3").get_object(Bucket=bucket, Key="processed/unguarded.json")["Body"].read()
    assert body.replace(b"\n", b"").replace(b" ", b"") == b'{"rows_in":2,"bad":'  # truncated, committed


def test_failed_multipart_write_is_aborted(bucket):
    """A 6 MiB write that fails after its first part went up: no object, no open multipart upload remain."""
    from kedro_datasets.pandas import CSVDataset  # noqa: PLC0415

    dataset = CSVDataset(
        filepath=f"s3://{bucket}/raw/big.csv",
        fs_args={"default_block_size": 5 * 2**20},
        save_args={"index": False},
    )
    guard_dataset("big", dataset)

    class Exploding(pd.DataFrame):  # fails after pandas has streamed > 5 MiB into the s3fs file
        def to_csv(self, path_or_buf, **kwargs):
            path_or_buf.write("x" * (6 * 2**20))
            raise RuntimeError("disk full while formatting")

    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(Exploding({"a": [1]}))
    s3 = boto3.client("s3")
    assert "raw/big.csv" not in object_keys(bucket)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def _cloud_error(excinfo: pytest.ExceptionInfo) -> CloudDatasetError:
    """The catalog re-wraps dataset errors as ``DatasetError("<name>: ...")``; ours is the cause."""
    assert isinstance(excinfo.value.__cause__, CloudDatasetError), excinfo.value
    assert str(excinfo.value).endswith(str(excinfo.value.__cause__))
    return excinfo.value.__cause__


def test_missing_bucket_names_dataset_uri_and_reason(catalog, bucket):
    boto3.client("s3").delete_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(DatasetError) as err:
        catalog.save("clean_server_metrics", _clean_metrics())
    error = _cloud_error(err)
    assert (error.dataset_name, error.uri, error.operation, error.problem.code) == (
        "clean_server_metrics",
        f"s3://{bucket}/processed/clean_server_metrics.parquet",
        "save",
        "NoSuchBucket",
    )
    assert f"Could not save dataset 'clean_server_metrics' to s3://{bucket}/processed/" in str(error)
    assert "The specified bucket does not exist" in str(error) and "CF_BUCKET" in str(error)
    with pytest.raises(DatasetError, match=r"load dataset 'forecasts' from s3://.*NoSuchBucket"):
        catalog.load("forecasts")


def test_missing_object_says_what_to_run(catalog):
    with pytest.raises(
        DatasetError,
        match=r"load dataset 'forecasts' from s3://cf-test-bucket/forecasts/"
        r"forecasts.parquet: NoSuchKey.*the modelling pipeline writes it",
    ):
        catalog.load("forecasts")


@pytest.mark.parametrize(
    ("name", "key", "body"),
    [
        ("clean_server_metrics", "processed/clean_server_metrics.parquet", b"PAR1 this is not parquet"),
        (
            "raw_server_metrics",
            "raw/server_metrics.csv.gz",
            gzip.compress(b"timestamp,server_id\n2024-01-01,a\n", mtime=0)[:20],
        ),
        ("data_quality_report", "processed/data_quality_report.json", b'{"rows_in": 1, '),
    ],
)
def test_corrupt_object_is_reported_as_unreadable(catalog, bucket, name, key, body):
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    with pytest.raises(
        DatasetError, match=rf"load dataset '{name}' from s3://{bucket}/{key}: Unreadable: \w+"
    ) as err:
        catalog.load(name)
    assert _cloud_error(err).problem.code == "Unreadable"


def test_access_denied_names_dataset_uri_and_reason(catalog, bucket, aws, monkeypatch, kedro_session):
    """IAM enforcement on moto: a user who may read raw/ only cannot read processed/ or write anywhere."""
    catalog.save("clean_server_metrics", _clean_metrics())
    catalog.save("raw_server_metrics", pd.DataFrame({"timestamp": ["2024-01-01"], "server_id": ["a"]}))
    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="raw-read-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetObject"],
                        "Resource": f"arn:aws:s3:::{bucket}/raw/*",
                    },
                    {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    s3fs.S3FileSystem.clear_instance_cache()
    reader = kedro_session(env="cloud").load_context().catalog  # new filesystems with the reader's keys
    requests.post(f"{aws}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        assert reader.load("raw_server_metrics")["server_id"].tolist() == ["a"]
        with pytest.raises(DatasetError) as load_err:
            reader.load("clean_server_metrics")
        with pytest.raises(DatasetError) as save_err:
            reader.save("forecasts", pd.DataFrame({"p50": [1.0]}))
    finally:
        requests.post(f"{aws}/moto-api/reset-auth", data=b"inf", timeout=10)
    assert (
        "load dataset 'clean_server_metrics' from "
        "s3://cf-test-bucket/processed/clean_server_metrics.parquet: "
        "AccessDenied" in str(_cloud_error(load_err))
    )
    assert (
        "save dataset 'forecasts' to s3://cf-test-bucket/forecasts/forecasts.parquet: AccessDenied: Access "
        "Denied" in str(_cloud_error(save_err))
    )
    assert "IAM policy" in str(save_err.value)


def test_versioned_pickle_save_load_and_failed_save_adds_no_version(bucket):
    from kedro.io import Version  # noqa: PLC0415
    from kedro_datasets.pickle import PickleDataset  # noqa: PLC0415

    def dataset() -> PickleDataset:  # a new save version each time, as in each run
        made = PickleDataset(filepath=f"s3://{bucket}/models/model.pkl", version=Version(None, None))
        guard_dataset("model", made)
        return made

    first = {"cpu_p95": np.arange(200_000, dtype="float64")}
    dataset().save(first)
    versions = [k for k in object_keys(bucket, "models/") if k.endswith("/model.pkl")]
    assert len(versions) == 1 and versions[0].startswith("models/model.pkl/")
    with pytest.raises(DatasetError):  # the array is written, then pickling the lambda fails
        dataset().save({"cpu_p95": first["cpu_p95"], "bad": lambda: 1})
    assert [k for k in object_keys(bucket, "models/")] == versions
    np.testing.assert_array_equal(dataset().load()["cpu_p95"], first["cpu_p95"])


def test_fitted_models_are_versioned_per_shard(bucket, kedro_session):
    """Each shard job adds its own versioned partition; loading gives every shard's latest version."""
    fits = {"shard-1-of-2": [{"cpu_p95": 1}, {"cpu_p95": 3}], "shard-2-of-2": [{"cpu_p95": 2}]}
    for shard, versions in fits.items():
        for fitted in versions:  # a job's catalog per save, as in one SageMaker job per shard
            kedro_session(env="cloud").load_context().catalog.save(
                "seasonal_naive_forecaster", {shard: fitted}
            )
    keys = [k for k in object_keys(bucket, "models/") if k.endswith(".pkl")]
    assert len(keys) == 3 and all(
        k.startswith("models/shards/seasonal_naive_forecaster/shard-") for k in keys
    )
    loaded = kedro_session(env="cloud").load_context().catalog.load("seasonal_naive_forecaster")
    assert {name: load() for name, load in loaded.items()} == {
        "shard-1-of-2": {"cpu_p95": 3},
        "shard-2-of-2": {"cpu_p95": 2},
    }
