"""Reporting: figures have the expected traces, the HTML report is self-contained, empty inputs work."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from capacity_forecaster.pipelines.reporting import create_pipeline
from capacity_forecaster.pipelines.reporting.nodes import (
    _rank_servers_by_risk,
    build_capacity_report,
    plot_cluster_scatter,
    plot_forecast_vs_actual,
    plot_model_leaderboard,
    plot_quarterly_trend,
    plot_risk_heatmap,
    plot_savings_waterfall,
    select_at_risk_servers,
)
from capacity_forecaster.pipelines.reporting.pipeline import FIGURES
from tests.conftest import PROJECT_PATH

PARAMS = {
    "top_servers": 3,
    "history_days": 60,
    "heatmap_servers": 5,
    "heatmap_quantile": "p90",
    "savings_column": "monthly_savings_usd",
    "hours_per_month": 730,
    "report_title": "Test capacity report",
    "report_table_rows": 200,
    "scatter_max_servers": 2000,
}


def _figures(inputs):
    return {
        "forecast_vs_actual": plot_forecast_vs_actual(
            inputs["clean_server_metrics"], inputs["forecasts"], inputs["risk_register"], 3, 60
        ),
        "risk_heatmap": plot_risk_heatmap(inputs["forecasts"], inputs["risk_register"], 5, "p90"),
        "quarterly_trend": plot_quarterly_trend(inputs["clean_server_metrics"], inputs["server_inventory"]),
        "cluster_scatter": plot_cluster_scatter(
            inputs["clean_server_metrics"], inputs["server_clusters"], inputs["server_inventory"]
        ),
        "model_leaderboard_chart": plot_model_leaderboard(inputs["model_leaderboard"]),
        "savings_waterfall": plot_savings_waterfall(
            inputs["consolidation_plan"], inputs["server_inventory"], "monthly_savings_usd", 730
        ),
    }


def _report(inputs, figures, table_rows=None):
    at_risk = select_at_risk_servers(inputs["risk_register"], inputs["server_inventory"])
    return build_capacity_report(
        at_risk,
        inputs["risk_register"],
        inputs["consolidation_plan"],
        inputs["server_inventory"],
        inputs["data_quality_report"],
        inputs["risk_summary"],
        *(figures[name] for name in FIGURES),
        "monthly_savings_usd",
        730,
        "Test capacity report",
        table_rows,
    )


def test_rank_servers_orders_by_tier_then_days_to_breach(reporting_inputs):
    ranked = _rank_servers_by_risk(reporting_inputs["risk_register"])
    assert ranked["server_id"].is_unique and len(ranked) == 6
    assert ranked["risk_level"].tolist()[:2] == ["very_high", "very_high"]
    assert ranked["server_id"].tolist()[:2] == ["s5", "s1"]  # s5 crosses 90 % on day 1, s1 later
    assert ranked.loc[0, "metric"] == "cpu_p95"  # the worst metric of s5
    assert ranked["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(ranked["risk_level"].tail(2)) == {"underutilized"}


def test_rank_servers_rejects_unknown_levels_and_missing_columns(reporting_inputs):
    register = reporting_inputs["risk_register"].assign(risk_level="critical")
    with pytest.raises(ValueError, match="unknown risk levels \\['critical'\\]"):
        _rank_servers_by_risk(register)
    with pytest.raises(ValueError, match="risk_register is missing columns \\['days_to_90'\\]"):
        _rank_servers_by_risk(reporting_inputs["risk_register"].drop(columns="days_to_90"))


def test_select_at_risk_servers_keeps_very_high_and_high_only(reporting_inputs):
    at_risk = select_at_risk_servers(reporting_inputs["risk_register"], reporting_inputs["server_inventory"])
    assert at_risk["server_id"].tolist() == ["s5", "s1"]
    assert at_risk["archetype"].tolist() == ["web", "web"]
    assert list(at_risk.columns[:5]) == ["rank", "server_id", "archetype", "risk_level", "metric"]
    optional = ["action", "first_date_above_80", "first_date_above_90", "reason"]  # those the register has
    assert list(at_risk.columns[-4:]) == optional
    assert at_risk.loc[0, "reason"] == "p90 peaks at 100.0 %"
    assert reporting_inputs["risk_register"]["server_id"].nunique() == 6  # input untouched


def test_forecast_vs_actual_draws_band_p50_and_history_per_server(reporting_inputs):
    fig = _figures(reporting_inputs)["forecast_vs_actual"]
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["p90", "p10-p90", "forecast p50", "actual"] * 3
    assert [t.fill for t in fig.data[1::4]] == ["tonexty"] * 3
    p50 = fig.data[2]
    assert len(p50.x) == 90  # the selected model only, over the horizon
    selected = reporting_inputs["forecasts"].query(
        "server_id == 's5' and metric == 'cpu_p95' and is_selected"
    )
    assert list(p50.y) == pytest.approx(selected["p50"].tolist())
    assert len(fig.data[3].x) == 60  # history_days
    assert [a.text for a in fig.layout.annotations][:1] == ["s5 · cpu_p95 · very_high"]


def test_risk_heatmap_is_servers_by_weeks_of_worst_metric(reporting_inputs):
    fig = _figures(reporting_inputs)["risk_heatmap"]
    heatmap = fig.data[0]
    assert heatmap.type == "heatmap"
    assert list(heatmap.x) == [f"W{w}" for w in range(1, 14)]  # 90 days -> 13 weeks
    assert list(heatmap.y)[-1] == "s5" and len(heatmap.y) == 5  # most at risk on top (last row)
    forecasts = reporting_inputs["forecasts"]
    first_week = forecasts[forecasts["is_selected"] & (forecasts["server_id"] == "s5")]
    first_week = first_week[first_week["date"] < first_week["date"].min() + pd.Timedelta(days=7)]
    assert heatmap.z[-1][0] == pytest.approx(first_week["p90"].max())
    assert heatmap.customdata[-1][0][0] == "cpu_p95"


def test_risk_heatmap_rejects_unknown_quantile(reporting_inputs):
    with pytest.raises(ValueError, match="heatmap_quantile must be one of"):
        plot_risk_heatmap(reporting_inputs["forecasts"], reporting_inputs["risk_register"], 5, "p95")


def test_quarterly_trend_has_one_line_per_metric_and_archetype(reporting_inputs):
    fig = _figures(reporting_inputs)["quarterly_trend"]
    assert len(fig.data) == 4 * 4  # metrics x archetypes (web, database, batch, idle)
    assert sorted({t.name for t in fig.data}) == ["batch", "database", "idle", "web"]
    idle_cpu = next(t for t in fig.data if t.name == "idle" and t.xaxis == "x")
    assert list(idle_cpu.x)[0] == "2024Q1"
    assert sum(t.showlegend for t in fig.data) == 4


def test_cluster_scatter_has_one_trace_per_cluster(reporting_inputs):
    fig = _figures(reporting_inputs)["cluster_scatter"]
    assert [t.name for t in fig.data] == ["cluster 0: busy web", "cluster 1: batch", "cluster 2: idle"]
    assert sorted(fig.data[0].text) == ["s1", "s2", "s5"]


def test_quarterly_trend_means_match_a_plain_groupby(reporting_inputs):
    clean, inventory = reporting_inputs["clean_server_metrics"], reporting_inputs["server_inventory"]
    fig = plot_quarterly_trend(clean, inventory)
    data = clean.merge(inventory[["server_id", "archetype"]], on="server_id")
    data["quarter"] = data["date"].dt.to_period("Q").astype(str)
    expected = data.groupby(["metric", "archetype", "quarter"])["value"].mean()
    drawn = {
        (metric, trace.name, quarter): value
        for trace in fig.data
        for metric in [fig.layout.annotations[int(trace.xaxis[1:] or 1) - 1].text]
        for quarter, value in zip(trace.x, trace.y, strict=True)
    }
    assert drawn.keys() == set(expected.index)
    assert all(abs(drawn[key] - value) < 1e-9 for key, value in expected.items())


def test_figures_of_a_history_with_categorical_keys_are_the_same(reporting_inputs):
    # the catalog loads clean_server_metrics with server_id and metric as categoricals (read_dictionary)
    clean, inventory = reporting_inputs["clean_server_metrics"], reporting_inputs["server_inventory"]
    categorical = clean.astype({"server_id": "category", "metric": "category"})
    assert (
        plot_quarterly_trend(categorical, inventory).to_json()
        == plot_quarterly_trend(clean, inventory).to_json()
    )
    clusters = reporting_inputs["server_clusters"]
    assert (
        plot_cluster_scatter(categorical, clusters, inventory).to_json()
        == plot_cluster_scatter(clean, clusters, inventory).to_json()
    )


def test_cluster_scatter_samples_every_cluster_of_a_big_fleet(reporting_inputs):
    inputs = reporting_inputs
    fig = plot_cluster_scatter(
        inputs["clean_server_metrics"], inputs["server_clusters"], inputs["server_inventory"], 3
    )
    assert sorted(len(t.x) for t in fig.data) == [1, 1, 2]  # about 3 of 6 servers, every cluster kept
    assert "(4 of 6 servers, sampled per cluster)" in fig.layout.title.text
    whole = plot_cluster_scatter(
        inputs["clean_server_metrics"], inputs["server_clusters"], inputs["server_inventory"], 6
    )
    assert sum(len(t.x) for t in whole.data) == 6 and "sampled" not in whole.layout.title.text


def test_model_leaderboard_sorted_by_mase_with_coverage(reporting_inputs):
    fig = _figures(reporting_inputs)["model_leaderboard_chart"]
    assert [t.name for t in fig.data] == ["mase", "coverage"]
    assert list(fig.data[0].x) == ["trees", "seasonal_naive"]
    wrapped = plot_model_leaderboard({"models": reporting_inputs["model_leaderboard"]})
    assert list(wrapped.data[0].y) == [0.71, 1.0]
    with pytest.raises(ValueError, match="no MASE column"):
        plot_model_leaderboard([{"model": "trees", "smape": 3.0}])


def test_savings_waterfall_goes_from_fleet_cost_to_cost_after(reporting_inputs):
    fig = _figures(reporting_inputs)["savings_waterfall"]
    waterfall = fig.data[0]
    fleet = 2.5 * 730
    assert list(waterfall.x) == ["fleet today", "consolidate idle", "after consolidation"]
    assert list(waterfall.y[:2]) == pytest.approx([fleet, -73.0])
    assert list(waterfall.text) == ["$1,825", "-$73", "$1,752"]
    assert "saves $73 (4.0%)" in fig.layout.title.text


def test_empty_optional_inputs_give_annotated_figures(reporting_inputs):
    empty_plan = reporting_inputs["consolidation_plan"].iloc[0:0]
    fig = plot_savings_waterfall(empty_plan, reporting_inputs["server_inventory"], "monthly_savings_usd", 730)
    assert list(fig.data[0].x) == ["fleet today", "after consolidation"]
    assert "no consolidation candidates" in fig.layout.title.text
    no_clusters = plot_cluster_scatter(
        reporting_inputs["clean_server_metrics"],
        reporting_inputs["server_clusters"].iloc[0:0],
        reporting_inputs["server_inventory"],
    )
    assert no_clusters.data == () and no_clusters.layout.annotations[0].text == "No clusters"
    assert plot_model_leaderboard([]).layout.annotations[0].text == "No models in the leaderboard"
    empty_register = reporting_inputs["risk_register"].iloc[0:0]
    assert (
        plot_forecast_vs_actual(
            reporting_inputs["clean_server_metrics"], reporting_inputs["forecasts"], empty_register, 3, 60
        )
        .layout.annotations[0]
        .text
        == "No servers in the risk register"
    )


def test_capacity_report_is_self_contained_html(reporting_inputs):
    figures = _figures(reporting_inputs)
    report = _report(reporting_inputs, figures)
    assert report.startswith("<!DOCTYPE html>") and report.rstrip().endswith("</html>")
    assert not re.search(r"<script[^>]+src=", report)  # nothing fetched: no CDN, no external script
    assert "<link" not in report and "@import" not in report
    assert report.count("plotly.js v") == 1  # the bundle is inlined exactly once
    assert len(re.findall(r'Plotly\.newPlot\(\s*"fig-\d+"', report)) == len(FIGURES)
    assert "Servers at risk (2)" in report and '<td class="col-risk_level very_high">very_high</td>' in report
    assert "$73" in report and 'duplicates_removed</td><td class="col-value">50</td>' in report
    assert (
        'savings.servers_moved</td><td class="col-value">1</td>' in report
        and 'top_at_risk_servers</td><td class="col-value">2 entries' in report
    )
    assert "analysis date 2025-02-03" in report
    assert '<td class="col-days_to_90">1</td>' in report  # whole days
    assert _report(reporting_inputs, figures) == report  # deterministic (fixed div ids)


def test_capacity_report_lists_the_most_urgent_and_points_to_the_full_csv(reporting_inputs):
    report = _report(reporting_inputs, _figures(reporting_inputs), table_rows=1)
    assert "Servers at risk (2)" in report
    assert "The 1 most urgent of 2 at-risk servers" in report and "<code>at_risk_servers</code>" in report
    table = report[report.index("Servers at risk (2)") : report.index("</table>")]
    assert table.count('<td class="col-server_id">') == 1 and '<td class="col-server_id">s5</td>' in table
    assert "most urgent" not in _report(reporting_inputs, _figures(reporting_inputs), table_rows=2)


def test_capacity_report_shows_whole_days_after_a_csv_round_trip(reporting_inputs, tmp_path: Path):
    at_risk = select_at_risk_servers(reporting_inputs["risk_register"], reporting_inputs["server_inventory"])
    at_risk.iloc[:1].assign(days_to_90=pd.NA).to_csv(tmp_path / "at_risk.csv", index=False)
    reloaded = pd.read_csv(tmp_path / "at_risk.csv")
    assert reloaded["days_to_90"].dtype == "float64"  # what CSVDataset gives back
    figures = _figures(reporting_inputs)
    report = build_capacity_report(
        reloaded,
        *(reporting_inputs[n] for n in ("risk_register", "consolidation_plan", "server_inventory")),
        reporting_inputs["data_quality_report"],
        reporting_inputs["risk_summary"],
        *(figures[name] for name in FIGURES),
        "monthly_savings_usd",
        730,
        "t",
    )
    assert '<td class="col-days_to_80">1</td><td class="col-days_to_90"></td>' in report


def test_capacity_report_without_risk_or_savings(reporting_inputs):
    inputs = dict(reporting_inputs)
    inputs["consolidation_plan"] = inputs["consolidation_plan"].iloc[0:0]
    inputs["risk_register"] = (
        inputs["risk_register"]
        .assign(risk_level="normal", days_to_80=pd.NA, days_to_90=pd.NA)
        .astype({"days_to_80": "Int64", "days_to_90": "Int64"})
    )
    report = _report(inputs, _figures(inputs))
    assert "No server is at risk in the horizon." in report
    assert "$0" in report


def test_pipeline_runs_on_an_in_memory_catalog(reporting_inputs):
    catalog = DataCatalog()
    for name, data in reporting_inputs.items():
        catalog[name] = data
    for leaf, value in PARAMS.items():
        catalog[f"params:reporting.{leaf}"] = value
    out = SequentialRunner().run(create_pipeline(), catalog)
    assert set(out) == {"capacity_report"}  # the runner returns the free outputs
    report = out["capacity_report"].load()
    assert "<h1>Test capacity report</h1>" in report and report.count('class="plotly-graph-div"') == len(
        FIGURES
    )


@pytest.mark.slow
def test_pipeline_run_through_kedro_session(kedro_session, data_root: Path, reporting_inputs):
    session = kedro_session(runtime_params={"reporting": {"top_servers": 2}})
    catalog = session.load_context().catalog
    for name, data in reporting_inputs.items():
        catalog.save(name, data)
    session.run(pipeline_names=["reporting"], runner=SequentialRunner())
    reporting = data_root / "08_reporting"
    report = (reporting / "capacity_report.html").read_text()
    assert "<h1>Capacity report</h1>" in report and "Plotly.newPlot(" in report
    figure = json.loads((reporting / "figures" / "forecast_vs_actual.json").read_text())
    assert len(figure["data"]) == 4 * 2  # runtime_params top_servers=2 reached the node
    assert pd.read_csv(reporting / "at_risk_servers.csv")["server_id"].tolist() == ["s5", "s1"]
    assert sorted(p.stem for p in (reporting / "figures").glob("*.json")) == sorted(FIGURES)


_SAVE_REPORT = """
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
bootstrap_project({project!r})
catalog = KedroSession.create({project!r}).load_context().catalog
catalog.save("capacity_report", "s5 \\u00b7 cpu_p95 \\u2014 \\u00e9")
assert catalog.load("capacity_report") == "s5 \\u00b7 cpu_p95 \\u2014 \\u00e9"
"""


def test_capacity_report_is_written_as_utf8_under_a_c_locale(data_root: Path):
    """Containers often run with LANG=C; the catalog pins utf-8 so the report still saves."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii:backslashreplace"}
    result = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", _SAVE_REPORT.format(project=str(PROJECT_PATH))],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = data_root / "08_reporting" / "capacity_report.html"
    assert report.read_bytes() == "s5 \u00b7 cpu_p95 \u2014 \u00e9".encode()
