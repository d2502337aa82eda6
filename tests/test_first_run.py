"""What a new user sees from ``kedro run`` on a small fleet: progress while it works, a summary at the end.

The runs are real ``kedro run`` processes on an 8-server fleet with the cheap models and Prophet, writing into
a temp data root (CF_DATA_ROOT): one with its output piped (as in CI or a SageMaker job log: periodic progress
log lines, no bars), ``--pipelines risk_analysis`` alone, and Prophet's backtest on a pseudo-terminal (rich
bars) with ``--params quiet=true`` (no summary).
"""

import json
import os
import pty
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.conftest import PROJECT_PATH

# One worker under xdist: the module fixtures (fleet, piped run) are runs of a minute not to repeat.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("first_run")]

FLEET = {"data_generation": {"n_servers": 8, "history_days": 400}}
CHEAP_MODELS = ",".join(
    [
        "data_generation.n_servers=8",
        "data_generation.history_days=400",
        "modelling.backtest.n_origins=2",
        "modelling.ensemble_members=[]",
        "modelling.random_forest.enabled=false",
        "modelling.gradient_boosting.enabled=false",
        "modelling.quantile_gbm.enabled=false",
        "modelling.prophet.backtest_folds=1",
        "modelling.prophet.hyperparameters.n_jobs=1",
    ]
)
SERVERS = 8
PROGRESS_LINE = re.compile(r"Prophet fits: (\d+)/(\d+) series \((\d+) %\)")
BAR = "━"


@pytest.fixture(scope="module")
def data_root() -> Iterator[Path]:
    """A temp data root holding the generated and cleaned 8-server fleet."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CF_DATA_ROOT", tmp)
        patch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
        bootstrap_project(PROJECT_PATH)
        with KedroSession.create(project_path=PROJECT_PATH, runtime_params=FLEET) as session:
            session.run(pipeline_names=["data_generation", "etl"])
        yield Path(tmp)


def _command(pipelines: str, params: str = CHEAP_MODELS, *options: str) -> list[str]:
    return [sys.executable, "-m", "kedro", "run", "--pipelines", pipelines, "--params", params, *options]


def _environment(data_root: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PROJECT_PATH / "src"), os.environ.get("PYTHONPATH")) if p)
    inherited = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return {  # rich decides bars or log lines from the terminal alone, as for a user
        **inherited,
        "CF_DATA_ROOT": str(data_root),
        "KEDRO_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": path,
        "COLUMNS": "160",
    }


def _piped(command: list[str], data_root: Path) -> str:
    proc = subprocess.run(
        command, cwd=PROJECT_PATH, env=_environment(data_root), capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def _on_terminal(command: list[str], data_root: Path) -> str:
    """Runs ``command`` with stdin, stdout and stderr on a pseudo-terminal; returns everything it wrote."""
    controller, worker = pty.openpty()
    proc = subprocess.Popen(
        command, cwd=PROJECT_PATH, env=_environment(data_root), stdin=worker, stdout=worker, stderr=worker
    )
    os.close(worker)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    assert proc.wait() == 0, output[-3000:]
    return output


def _summary(output: str) -> str:
    assert "Run summary:" in output, output[-3000:]
    return output[output.index("Run summary:") :]


@pytest.fixture(scope="module")
def piped_run(data_root: Path) -> str:
    """modelling, risk_analysis and reporting with their output piped."""
    return _piped(_command("modelling,risk_analysis,reporting"), data_root)


def test_piped_run_logs_progress_lines_and_no_bars(piped_run: str):
    steps = [tuple(map(int, m.groups())) for m in PROGRESS_LINE.finditer(piped_run)]
    # Prophet is fitted per metric on the 8 servers' series, in the backtest fold and then on all history;
    # every fit ends with its 100 % line (lines in between depend on how long the fits take).
    assert [s for s in steps if s[2] == 100] == [(SERVERS, SERVERS, 100)] * 4 * 2
    assert all(total == SERVERS for _, total, _ in steps)
    for model in ("seasonal_naive", "changepoint_regression", "prophet"):  # the fold loops end with 100 %
        assert re.search(rf"Backtest {model}: (\d+)/\1 folds \(100 %\)", piped_run), model
    assert BAR not in piped_run


def test_summary_after_a_run(piped_run: str, data_root: Path):
    summary = _summary(piped_run)
    risk = json.loads((data_root / "08_reporting" / "risk_summary.json").read_text())
    lines = summary.splitlines()
    assert re.match(r"Run summary: modelling, reporting, risk_analysis \(env local\) in \d+", lines[0])
    assert f"Report: {data_root}/08_reporting/capacity_report.html" in lines
    assert f"At-risk CSV: {data_root}/08_reporting/at_risk_servers.csv" in lines
    tiers = ", ".join(f"{tier} {count}" for tier, count in risk["server_tiers"].items())
    assert f"Servers per tier: {tiers} (8 servers, analysis date {risk['analysis_date']})" in lines
    at_risk = risk["server_tiers"]["very_high"] + risk["server_tiers"]["high"]
    top = risk["top_at_risk_servers"][:5]
    assert (
        f"Top at-risk servers ({len(top)} of {at_risk}, most severe and soonest first):" in lines
        if top
        else "No server is at risk within the horizon." in lines
    )
    for server in top:
        row = next(line for line in lines if line.strip().startswith(server["server_id"] + " "))
        assert server["risk_level"] in row and server["metric"] in row
        for level in (80, 90):
            if server[f"first_date_above_{level}"]:
                assert f"{level} % on {server[f'first_date_above_{level}']}" in row
    savings = risk["savings"]
    assert (
        f"Monthly savings: {savings['monthly_savings_usd']:,.0f} USD" in summary
        and f"{savings['servers_moved']} servers moved onto {savings['hosts_receiving']} hosts" in summary
    )


def test_summary_after_risk_analysis_alone(piped_run: str, data_root: Path):
    summary = _summary(_piped(_command("risk_analysis"), data_root))
    assert summary.startswith("Run summary: risk_analysis (env local)")
    assert f"Report: {data_root}/08_reporting/capacity_report.html (from an earlier run)" in summary
    assert "Servers per tier: " in summary and "Monthly savings: " in summary


def test_bars_on_a_terminal_and_quiet(data_root: Path):
    """Prophet's backtest alone (``--to-outputs prophet_backtest``), on a terminal, with ``quiet=true``."""
    command = _command("modelling", CHEAP_MODELS + ",quiet=true", "--to-outputs", "prophet_backtest")
    output = _on_terminal(command, data_root)
    assert BAR in output and "Prophet fits" in output and "Backtest prophet" in output
    assert not PROGRESS_LINE.search(output)  # a terminal gets bars instead of log lines
    assert "Pipeline execution completed" in output and "Run summary" not in output  # quiet=true
