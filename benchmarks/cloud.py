"""Cloud storage stage: S3 (moto server on 127.0.0.1) vs local disk for a default-size clean_server_metrics.

Prints, side by side, save and load seconds of the same frame through kedro-datasets' ParquetDataset on local
disk, on S3 unguarded, and on S3 through the project's guard (fsspec transaction + error translation), plus
the object size. moto keeps objects in memory and runs in this process, so the S3 figures measure the
client stack (s3fs, botocore, HTTP) and the guard's overhead, not AWS latency or bandwidth. Run:
``python benchmarks/cloud.py [n_servers]`` (default 120 servers x 1461 days x 4 metrics).
"""

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
from kedro_datasets.pandas import ParquetDataset
from moto.server import ThreadedMotoServer

from capacity_forecaster.cloud.hooks import guard_dataset


def _frame(n_servers: int, days: int = 1461) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dates = pd.date_range("2022-01-01", periods=days, freq="D")
    metrics = ["cpu_p95", "memory_p95", "disk_io_p95", "network_p95"]
    n = n_servers * len(metrics) * days
    return pd.DataFrame(
        {
            "server_id": np.repeat([f"srv-{i:04d}" for i in range(n_servers)], len(metrics) * days),
            "metric": np.tile(np.repeat(metrics, days), n_servers),
            "date": np.tile(dates.values, n_servers * len(metrics)),
            "value": rng.uniform(0, 100, n).round(3),
            "is_imputed": rng.random(n) < 0.01,
            "is_clipped": rng.random(n) < 0.001,
            "is_outlier": rng.random(n) < 0.001,
        }
    )


def _time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(n_servers: int = 120) -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket="bench")
    frame = _frame(n_servers)
    fs_args = {"config_kwargs": {"retries": {"mode": "adaptive", "max_attempts": 8}}}
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {
            "local disk": ParquetDataset(filepath=str(Path(tmp) / "clean.parquet")),
            "s3 unguarded": ParquetDataset(filepath="s3://bench/processed/plain.parquet", fs_args=fs_args),
            "s3 guarded": ParquetDataset(filepath="s3://bench/processed/guarded.parquet", fs_args=fs_args),
        }
        guard_dataset("clean_server_metrics", datasets["s3 guarded"])
        print(
            f"clean_server_metrics-like frame: {len(frame):,} rows, {n_servers} servers "
            f"(2 shared cores, other jobs running: compare rows, not absolutes)"
        )
        print(f"{'storage':<14}{'save s':>9}{'load s':>9}{'bytes':>12}  identical")
        for name, dataset in datasets.items():
            save = _time(lambda d=dataset: d.save(frame))
            load = _time(lambda d=dataset: d.load())
            loaded = dataset.load()
            if name == "local disk":
                size = Path(tmp, "clean.parquet").stat().st_size
            else:
                key = str(dataset._filepath).split("/", 1)[1]
                size = boto3.client("s3").head_object(Bucket="bench", Key=key)["ContentLength"]
            same = loaded.equals(frame) and (loaded.dtypes == frame.dtypes).all()
            print(f"{name:<14}{save:>9.2f}{load:>9.2f}{size:>12,}  {same}")
    server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 120)
