"""SageMaker runner overheads, measured side by side on this machine (no AWS: moto's S3 on 127.0.0.1).

1. Code install inside a job: unpacking the wheel onto PYTHONPATH (what the entrypoint does) versus
   ``python -m venv --system-site-packages`` + ``pip install --no-deps <wheel>`` (the alternative).
2. ``kedro run --env cloud --pipelines risk_analysis``: SequentialRunner versus the SageMaker runner's local
   backend (wheel build, upload, one job as a subprocess), on the risk_analysis test inputs.

The machine is shared and has 2 cores: compare the columns of one run rather than the absolute seconds.
Run: ``python benchmarks/runner.py``.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import boto3
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from moto.server import ThreadedMotoServer

from capacity_forecaster.runner.bundle import build_wheel

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from tests.pipelines.risk_analysis.test_pipeline import _write_inputs  # noqa: E402  (small contract inputs)

INPUTS = ("forecasts", "clean_server_metrics", "server_inventory", "server_truth")

LOGGING = """
version: 1
disable_existing_loggers: false
handlers:
  plain: {class: logging.StreamHandler, formatter: plain}
formatters:
  plain: {format: "%(name)s: %(message)s"}
loggers:
  kedro: {level: INFO}
  capacity_forecaster: {level: INFO}
root: {handlers: [plain]}
"""


def _timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    return time.perf_counter() - start, proc


def bench_install(wheel: Path, tmp: Path) -> None:
    start = time.perf_counter()
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp / "site")
    unzip = time.perf_counter() - start
    venv_s, _ = _timed([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")])
    pip_s, _ = _timed([str(tmp / "venv/bin/pip"), "install", "-q", "--no-deps", "--disable-pip-version-check",
                       str(wheel)])  # fmt: skip
    print(
        f"code install per job   unpack wheel {unzip:6.2f} s | "
        f"venv {venv_s:6.2f} s + pip --no-deps {pip_s:6.2f} s"
    )


def bench_risk_analysis(tmp: Path, endpoint: str) -> None:
    os.environ.update(CF_BUCKET="cf-bench", CF_DATA_ROOT=str(tmp / "data"))
    (tmp / "data").mkdir()
    boto3.client("s3").create_bucket(Bucket="cf-bench")
    _write_inputs(tmp / "data", with_truth=True)
    bootstrap_project(PROJECT)
    with KedroSession.create(project_path=PROJECT) as session:
        catalog = session.load_context().catalog
        frames = {
            n: catalog.load(n)
            for n in ("forecasts", "clean_server_metrics", "server_inventory", "server_truth")
        }
    with KedroSession.create(project_path=PROJECT, env="cloud") as session:
        catalog = session.load_context().catalog
        for name, frame in frames.items():
            catalog.save(name, frame)
    (tmp / "logging.yml").write_text(LOGGING)
    env = {**os.environ, "KEDRO_LOGGING_CONFIG": str(tmp / "logging.yml")}
    base = [sys.executable, "-m", "kedro", "run", "--env", "cloud", "--pipelines", "risk_analysis"]
    seq_s, seq = _timed([*base, "--runner", "SequentialRunner"], cwd=PROJECT, env=env)
    sm_s, sm = _timed(
        [*base, "--params", "run_id=bench", "--runner-params", "backend=local"], cwd=PROJECT, env=env
    )
    assert seq.returncode == 0 and sm.returncode == 0, (seq.stderr[-2000:], sm.stderr[-2000:])
    key = "sagemaker/runs/bench/jobs/cf-bench-risk-analysis.json"
    report = json.loads(boto3.client("s3").get_object(Bucket="cf-bench", Key=key)["Body"].read())
    print(f"risk_analysis wall     SequentialRunner {seq_s:6.1f} s | "
          f"SageMakerRunner local backend {sm_s:6.1f} s "
          f"(inside the job: {report['duration_s']:.1f} s, 1 job, requirements installed: "
          f"{len(report['installed_requirements'])})")  # fmt: skip
    for line in sm.stderr.splitlines():
        if line.startswith("capacity_forecaster.runner") and ("Built" in line or "Completed in" in line):
            print("   ", line)


def main() -> None:
    os.environ.update(KEDRO_DISABLE_TELEMETRY="true", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")  # fmt: skip
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            wheel = build_wheel(PROJECT, Path(tmp) / "wheel")
            print(f"wheel build (once/run) {time.perf_counter() - start:6.1f} s  ({wheel.name})")
            bench_install(wheel, Path(tmp))
            bench_risk_analysis(Path(tmp), os.environ["AWS_ENDPOINT_URL"])
    finally:
        server.stop()
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
