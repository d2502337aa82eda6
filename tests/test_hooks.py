"""RunSummaryHooks: the summary's text, where it says the files are, quiet runs and a summary that fails.

The summary after real ``kedro run`` processes is tested in test_first_run.py.
"""

import json
from pathlib import Path

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from capacity_forecaster.hooks import RunSummaryHooks, headline, location

SUMMARY = {
    "analysis_date": "2025-12-31",
    "servers": 20,
    "server_tiers": {"very_high": 1, "high": 1, "normal": 15, "underutilized": 3},
    "top_at_risk_servers": [
        {
            "server_id": "srv-0007",
            "metric": "cpu_p95",
            "risk_level": "very_high",
            "first_date_above_80": "2026-01-10",
            "first_date_above_90": "2026-02-02",
        },
        {
            "server_id": "srv-12",
            "metric": "memory_p95",
            "risk_level": "high",
            "first_date_above_80": "2026-03-01",
            "first_date_above_90": None,
        },
    ],  # fmt: skip
    "savings": {
        "monthly_savings_usd": 3504.4,
        "savings_share": 0.0756,
        "servers_moved": 18,
        "hosts_receiving": 5,
    },  # fmt: skip
}


def _identity(x):
    return x


def test_headline_lists_tiers_top_servers_and_savings():
    assert headline(SUMMARY) == [
        "Servers per tier: very_high 1, high 1, normal 15, underutilized 3"
        " (20 servers, analysis date 2025-12-31)",
        "Top at-risk servers (2 of 2, most severe and soonest first):",
        "  srv-0007  very_high  cpu_p95      80 % on 2026-01-10, 90 % on 2026-02-02",
        "  srv-12    high       memory_p95   80 % on 2026-03-01",
        "Monthly savings: 3,504 USD (7.6 % of the fleet's cost), 18 servers moved onto 5 hosts",
    ]
    calm = {**SUMMARY, "top_at_risk_servers": [], "savings": {}}
    assert headline(calm)[1:] == ["No server is at risk within the horizon."]


def test_location_is_the_s3_uri_or_the_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert location(ParquetDataset(filepath="s3://cf-bucket/fleet/08_reporting/x.parquet")) == (
        "s3://cf-bucket/fleet/08_reporting/x.parquet"
    )
    monkeypatch.chdir(tmp_path)
    assert location(JSONDataset(filepath=str(tmp_path / "data" / "r.json"))) == "data/r.json"
    assert location(JSONDataset(filepath="/elsewhere/r.json")) == "/elsewhere/r.json"
    assert location(MemoryDataset()) is None


def _printed(capsys: pytest.CaptureFixture) -> list[str]:
    """Lines printed from the summary on (Kedro's log handler writes to stdout too)."""
    out = capsys.readouterr().out
    return out[out.index("Run summary:") :].splitlines() if "Run summary:" in out else []


def _run(hooks: RunSummaryHooks, catalog: DataCatalog, runtime_params: dict | None = None) -> None:
    pipeline = Pipeline([Node(_identity, "risk_register", "risk_summary", name="summarise_risk_node")])
    params = {"env": "local", "pipeline_names": ["risk_analysis"], "runtime_params": runtime_params or {}}
    hooks.before_pipeline_run()
    hooks.after_pipeline_run(run_params=params, pipeline=pipeline, catalog=catalog)


def test_summary_is_printed_unless_quiet(tmp_path: Path, capsys: pytest.CaptureFixture):
    summary = tmp_path / "risk_summary.json"
    summary.write_text(json.dumps(SUMMARY))
    report = JSONDataset(filepath=str(tmp_path / "capacity_report.html"))
    catalog = DataCatalog({"risk_summary": JSONDataset(filepath=str(summary)), "capacity_report": report})
    hooks = RunSummaryHooks()

    _run(hooks, catalog)
    printed = _printed(capsys)
    assert printed[0].startswith("Run summary: risk_analysis (env local) in 0 s")
    assert "Report" not in printed[1]  # neither written by this run nor there from an earlier one
    assert printed[1:] == headline(SUMMARY)

    (tmp_path / "capacity_report.html").write_text("{}")
    _run(hooks, catalog)
    assert f"Report: {tmp_path}/capacity_report.html (from an earlier run)" in _printed(capsys)

    for quiet in (True, "true"):
        _run(hooks, catalog, {"quiet": quiet})
        assert _printed(capsys) == []
    catalog["params:quiet"] = MemoryDataset(True)
    _run(hooks, catalog)
    assert _printed(capsys) == []


def test_a_summary_that_fails_is_a_warning(tmp_path: Path, capsys, caplog):
    broken = tmp_path / "risk_summary.json"
    broken.write_text("{not json")
    _run(RunSummaryHooks(), DataCatalog({"risk_summary": JSONDataset(filepath=str(broken))}))
    assert _printed(capsys) == []
    assert "No run summary: DatasetError" in caplog.text


def test_no_headline_when_the_run_wrote_nothing(tmp_path: Path, capsys):
    """A dry run (``SageMakerRunner`` ``dry_run=true``) has risk_summary among its outputs but writes none."""
    _run(RunSummaryHooks(), DataCatalog({"risk_summary": JSONDataset(filepath=str(tmp_path / "none.json"))}))
    assert len(_printed(capsys)) == 1
