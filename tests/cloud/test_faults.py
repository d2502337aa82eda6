"""S3 faults injected between the client and moto's server (``fault_proxy``): every failure class names the
dataset, its ``s3://`` URI, the service's reason and what to do; SIGTERM during a multipart save leaves no
upload behind; configuration errors reach the command line as one message, without a traceback."""

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import boto3
import numpy as np
import pandas as pd
import pytest
import s3fs
from kedro.io import AbstractDataset, DatasetError
from kedro.runner import SequentialRunner

from capacity_forecaster.cloud.errors import CloudDatasetError, CloudStorageError, user_error
from capacity_forecaster.cloud.hooks import guard_dataset
from capacity_forecaster.cloud.s3 import CHECK_CONFIG, check_bucket, make_check_client, make_client, push_file
from capacity_forecaster.cloud.signals import EXIT_CODE
from tests.cloud.conftest import object_keys
from tests.cloud.fault_proxy import FaultProxy, complete_upload, object_read, upload_part
from tests.conftest import PROJECT_PATH
from tests.helpers import run_kedro

FEW_RETRIES = {"retries": {"mode": "standard", "total_max_attempts": 2}}
"""The catalog retries 8 times with backoff (~35 s against a server that always fails); 2 attempts suffice
to show what the user sees after the last retry."""
PART = 5 * 2**20


@pytest.fixture
def proxy(aws, monkeypatch):
    """A fault proxy in front of moto; boto3 and s3fs in this process talk to it."""
    fault_proxy = FaultProxy(aws).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield fault_proxy
    fault_proxy.stop()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def cloud_dataset(bucket, kedro_session):
    """Builds a dataset exactly as ``conf/cloud`` declares it (type, path, args) with 2 attempts per request
    and 5 MiB multipart blocks, guarded as the hooks guard it."""
    conf = kedro_session(env="cloud").load_context().config_loader["catalog"]

    def make(name: str) -> AbstractDataset:
        entry = copy.deepcopy(conf[name])
        entry["fs_args"]["config_kwargs"] = {**entry["fs_args"]["config_kwargs"], **FEW_RETRIES}
        entry["fs_args"]["default_block_size"] = PART
        dataset = AbstractDataset.from_config(name, entry)
        assert guard_dataset(name, dataset)
        return dataset

    return make


def _large_frame() -> pd.DataFrame:
    """~12 MiB of Parquet (random floats do not compress): three 5 MiB parts."""
    values = np.random.default_rng(0).random(1_500_000)
    return pd.DataFrame({"server_id": "srv-0001", "value": values})


def _open_uploads(bucket: str) -> list:
    return boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _cause(excinfo: pytest.ExceptionInfo) -> CloudDatasetError:
    error = excinfo.value
    assert isinstance(error, CloudDatasetError), repr(error)
    return error


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        (("HEAD", "GET"), "HTTP 500 on HeadObject: Internal Server Error (2 attempts)"),
        (
            ("GET",),
            "HTTP 500 InternalError on GetObject: We encountered an internal error. Please try again.",
        ),
    ],
    ids=["head-and-get", "get-only"],
)
def test_server_error_on_download_is_a_service_error_not_a_corrupt_file(
    proxy, cloud_dataset, bucket, methods, expected
):
    dataset = cloud_dataset("clean_server_metrics")
    dataset.save(pd.DataFrame({"value": [1.0]}))
    proxy.fail(object_read("processed/clean_server_metrics.parquet", methods))
    with pytest.raises(DatasetError) as err:
        dataset.load()
    error = _cause(err)
    message = str(error)
    assert (error.dataset_name, error.uri, error.problem.code) == (
        "clean_server_metrics",
        f"s3://{bucket}/processed/clean_server_metrics.parquet",
        "ServiceError",
    )
    assert expected in message
    assert "S3 failed on its side" in message and "retry later" in message
    assert "corrupt" not in message and "re-push" not in message


@pytest.mark.parametrize(
    ("rule", "operation"),
    [(upload_part, "UploadPart"), (complete_upload, "CompleteMultipartUpload")],
    ids=["upload-part", "complete"],
)
def test_server_error_during_a_multipart_save_names_dataset_uri_and_reason(
    proxy, cloud_dataset, bucket, rule, operation
):
    dataset = cloud_dataset("clean_server_metrics")
    fault = proxy.fail(rule)
    with pytest.raises(DatasetError) as err:
        dataset.save(_large_frame())
    error = _cause(err)
    assert fault.hits >= 1
    uri = f"s3://{bucket}/processed/clean_server_metrics.parquet"
    assert str(error).startswith(
        f"Could not save dataset 'clean_server_metrics' to {uri}: "
        f"ServiceError: HTTP 500 InternalError on {operation}: We encountered an internal error."
    )
    assert "Errno" not in str(error)
    assert object_keys(bucket) == {} and _open_uploads(bucket) == []  # nothing half-written


def test_server_error_on_one_partition_names_it_and_commits_no_partition(proxy, cloud_dataset, bucket):
    dataset = cloud_dataset("model_input_shards")
    folder = "forecasts/intermediate/shards/model_input_shards"
    fault = proxy.fail(lambda r: upload_part(r) and r.path.endswith("/shard-2-of-2.parquet"))
    with pytest.raises(DatasetError) as err:
        dataset.save({f"shard-{i}-of-2": pd.DataFrame({"y": [float(i)]}) for i in (1, 2)})
    error = _cause(err)
    assert fault.hits >= 1
    assert (error.dataset_name, error.uri, error.problem.code) == (
        "model_input_shards",
        f"s3://{bucket}/{folder}/shard-2-of-2.parquet",
        "ServiceError",
    )
    assert "HTTP 500 InternalError on UploadPart: We encountered an internal error." in str(error)
    assert object_keys(bucket) == {} and _open_uploads(bucket) == []  # shard 1 was not committed either


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_fails_the_pre_run_check_with_a_clear_message(
    bucket, kedro_session, monkeypatch, data_root
):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(CloudStorageError) as err:
        kedro_session(env="cloud").run(pipeline_names=["data_generation"], runner=SequentialRunner())
    assert str(err.value).startswith(
        f"Cannot use s3://{bucket}/raw/: Unreachable: Could not connect to the endpoint"
    )
    assert endpoint in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)
    assert list(data_root.rglob("*")) == []


@pytest.fixture
def blackhole_endpoint():
    """An endpoint whose TCP handshakes never complete: a listening socket with a full accept queue (Linux
    drops further SYNs), as with a firewall that drops packets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield f"http://127.0.0.1:{port}"
    for sock in [*fillers, server]:
        sock.close()


def test_connect_timeout_is_reported_as_unreachable(aws, blackhole_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", blackhole_endpoint)
    client = make_client("us-east-1", {"connect_timeout": 0.5, "retries": {"total_max_attempts": 1}})
    with pytest.raises(CloudStorageError) as err:
        check_bucket(client, "cf-test-bucket", "us-east-1", prefix="raw/")
    assert str(err.value).startswith(
        "Cannot use s3://cf-test-bucket/raw/: Unreachable: Connect timeout on endpoint URL: "
        f'"{blackhole_endpoint}/'
    )


def test_missing_credentials_are_named(aws, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CloudStorageError) as err:
        check_bucket(make_check_client("us-east-1"), "cf-test-bucket", "us-east-1", prefix="raw/")
    assert str(err.value).startswith(
        "Cannot use s3://cf-test-bucket/raw/: NoCredentials: Unable to locate credentials. "
        "What to do: no AWS credentials were found: set AWS_PROFILE"
    )


def test_the_bucket_check_gives_up_after_two_short_attempts():
    config = make_check_client("us-east-1", {"retries": {"mode": "adaptive", "max_attempts": 8}}).meta.config
    assert (config.connect_timeout, config.read_timeout) == (5, 20)
    assert config.retries == CHECK_CONFIG["retries"]


def test_missing_derived_dataset_says_which_pipelines_to_run(cloud_dataset, bucket):
    with pytest.raises(DatasetError) as err:
        cloud_dataset("forecasts").load()
    message = str(_cause(err))
    assert "NoSuchKey" in message
    assert "the modelling pipeline writes it" in message
    assert "`kedro run --env cloud --pipelines etl,modelling`" in message
    assert "kedro cloud push" not in message


def test_risk_analysis_on_an_empty_bucket_says_which_pipelines_to_run(bucket, kedro_session):
    """``--pipelines risk_analysis`` makes Kedro load only that pipeline; the hint still finds the writers."""
    with pytest.raises(DatasetError) as err:
        kedro_session(env="cloud").run(pipeline_names=["risk_analysis"], runner=SequentialRunner())
    message = str(user_error(err.value))
    assert re.search(r"the (etl|modelling) pipeline writes it", message), message
    assert re.search(r"`kedro run --env cloud --pipelines etl(,modelling)?`", message), message
    assert "kedro cloud push" not in message


def test_missing_raw_dataset_says_how_to_push_it(cloud_dataset):
    with pytest.raises(DatasetError) as err:
        cloud_dataset("server_inventory").load()
    assert "`kedro cloud push <file> --dataset server_inventory`" in str(_cause(err))


SAVE_SCRIPT = """
import sys
import numpy as np, pandas as pd
from kedro_datasets.pandas import ParquetDataset
from capacity_forecaster.cloud.hooks import guard_dataset

dataset = ParquetDataset(
    filepath=sys.argv[1],
    fs_args={"default_block_size": 5 * 2**20, "config_kwargs": {"retries": {"total_max_attempts": 1}}},
)
if sys.argv[2] == "guarded":
    guard_dataset("clean_server_metrics", dataset)
dataset.save(pd.DataFrame({"value": np.random.default_rng(0).random(1_500_000)}))
print("saved")
"""

PUSH_SCRIPT = """
import sys
from pathlib import Path
from capacity_forecaster.cloud.s3 import make_client, push_file

bucket, key, path = sys.argv[1:4]
Path(path).write_bytes(bytes(12 * 2**20))
push_file(make_client("us-east-1"), Path(path), bucket, key, multipart_threshold=5 * 2**20)
print("saved")
"""


def _run_and_terminate(proxy, tmp_path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs ``script`` (a multipart upload) in a subprocess, holds its first part at the proxy and sends
    SIGTERM while that part is in flight; returns once the process ended and the part was answered."""
    path = tmp_path / "upload.py"
    path.write_text(textwrap.dedent(script))
    gate = proxy.hold(upload_part)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_PATH / "src"), str(PROJECT_PATH)])}
    proc = subprocess.Popen(
        [sys.executable, str(path), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert gate.arrived.wait(timeout=120), "the upload never sent a part"
        proc.send_signal(signal.SIGTERM)  # the part is in flight: the upload is half done
        gate.release()
        out, err = proc.communicate(timeout=120)
    finally:
        gate.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert gate.done.wait(timeout=60)  # the held part got its answer before we look
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _save_and_terminate(proxy, bucket, tmp_path, mode: str) -> subprocess.CompletedProcess:
    return _run_and_terminate(proxy, tmp_path, SAVE_SCRIPT, f"s3://{bucket}/processed/big.parquet", mode)


def test_sigterm_during_a_multipart_save_aborts_the_upload(proxy, bucket, tmp_path):
    done = _save_and_terminate(proxy, bucket, tmp_path, "guarded")
    assert done.returncode == EXIT_CODE, done.stderr[-2000:]
    assert "SIGTERM while saving 'clean_server_metrics'" in done.stderr
    assert "saved" not in done.stdout
    assert object_keys(bucket) == {}
    assert _open_uploads(bucket) == []


def test_sigterm_during_kedro_cloud_push_aborts_the_upload(proxy, bucket, tmp_path):
    done = _run_and_terminate(proxy, tmp_path, PUSH_SCRIPT, bucket, "raw/big.bin", str(tmp_path / "big.bin"))
    assert done.returncode == EXIT_CODE, done.stderr[-2000:]
    assert "SIGTERM while uploading" in done.stderr and "saved" not in done.stdout
    assert object_keys(bucket) == {}
    assert _open_uploads(bucket) == []


def test_server_error_during_kedro_cloud_push_names_the_uri_and_reason(proxy, bucket, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(12 * 2**20))
    proxy.fail(upload_part, status=503, code="SlowDown", message="Please reduce your request rate.")
    with pytest.raises(CloudStorageError) as err:
        push_file(
            make_client("us-east-1", FEW_RETRIES), path, bucket, "raw/big.bin", multipart_threshold=PART
        )
    assert str(err.value).startswith(
        f"Cannot upload {path} to s3://{bucket}/raw/big.bin: ServiceError: HTTP 503 SlowDown on UploadPart: "
        "Please reduce your request rate. (2 attempts). What to do: S3 failed on its side"
    )
    assert object_keys(bucket) == {} and _open_uploads(bucket) == []


def test_without_the_guard_sigterm_leaves_an_unfinished_upload(proxy, bucket, tmp_path):
    """Why the handler exists: the default SIGTERM ends the process with its multipart upload still open."""
    done = _save_and_terminate(proxy, bucket, tmp_path, "unguarded")
    assert done.returncode == -signal.SIGTERM
    uploads = _open_uploads(bucket)
    assert [u["Key"] for u in uploads] == ["processed/big.parquet"]
    s3 = boto3.client("s3")
    for upload in uploads:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def test_documented_lifecycle_rule_is_a_valid_bucket_configuration(bucket):
    """The README's rule for uploads a ``kill -9`` leaves behind, applied as documented (botocore validates
    the request against the S3 API model; moto stores it)."""
    rule_file = PROJECT_PATH / "docs" / "s3" / "abort-incomplete-uploads.json"
    s3 = boto3.client("s3")
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration=json.loads(rule_file.read_text())
    )
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Status"] == "Enabled" and rule["Filter"] == {"Prefix": ""}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert f"file://docs/s3/{rule_file.name}" in (PROJECT_PATH / "README.md").read_text()


@pytest.mark.parametrize(
    "command",
    [("run", "--env", "cloud", "--pipelines", "etl"), ("cloud", "check")],
    ids=["kedro-run", "kedro-cloud-check"],
)
def test_cf_bucket_unset_is_one_error_line_without_a_traceback(command):
    env = {k: v for k, v in os.environ.items() if k != "CF_BUCKET"}
    done = run_kedro(*command, env=env)
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(
        "Error: CF_BUCKET is not set: the cloud environment needs `export CF_BUCKET=<bucket name>`."
    ), done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
