"""`kedro viz build` makes a static lineage site that shows every pipeline and previews the report figures."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project
from kedro.runner import SequentialRunner

from capacity_forecaster.pipelines.reporting.pipeline import FIGURES
from tests.conftest import PROJECT_PATH
from tests.pipelines.reporting.sample_inputs import make_reporting_inputs

pytest.importorskip("kedro_viz")

REPORT_DATASETS = {*FIGURES, "at_risk_servers", "capacity_report"}


@pytest.fixture
def viz_build(kedro_session, data_root: Path, tmp_path: Path) -> tuple[Path, str]:
    """Runs reporting on sample inputs under ``data_root``, then `kedro viz build` in a copy of the project.

    The copy keeps the site (build/) and kedro-viz's .viz/ out of the work tree; the catalog still points at
    ``data_root`` through CF_DATA_ROOT, so the previews show the figures just written. Returns the site's
    folder and the command's output.
    """
    session = kedro_session()
    catalog = session.load_context().catalog
    for name, data in make_reporting_inputs().items():
        catalog.save(name, data)
    session.run(pipeline_names=["reporting"], runner=SequentialRunner())

    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", ".telemetry", "conf", "src"):
        source = PROJECT_PATH / name
        if source.is_dir():
            shutil.copytree(
                source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        elif source.exists():
            shutil.copy2(source, project / name)
    env = {**os.environ, "CF_DATA_ROOT": str(data_root), "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = [sys.executable, "-m", "kedro"]
    result = subprocess.run(
        [*kedro, "viz", "build", "--include-previews"],
        check=False,
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return project / "build", result.stdout + result.stderr


def test_viz_build_shows_every_pipeline_and_the_report(viz_build: tuple[Path, str]):
    site, output = viz_build
    # kedro-viz 12.5 prints "ERROR: Failed to build/deploy ..." and still exits 0: look for its success line.
    assert "Success!" in output, output[-4000:]
    bootstrap_project(PROJECT_PATH)
    main = json.loads((site / "api" / "main").read_text())
    assert {p["id"] for p in main["pipelines"]} == set(pipelines)
    for name in pipelines:
        assert (site / "api" / "pipelines" / name).is_file(), name
    assert (site / "index.html").is_file()

    # kedro-viz silently drops every layer when the layers form a cycle (e.g. a reporting dataset feeding a
    # model_output one); it only logs a warning, so check that the layers survived.
    assert "reporting" in main["layers"] and "raw" in main["layers"], main["layers"]

    data = {n["name"]: n for n in main["nodes"] if n["type"] == "data"}
    assert REPORT_DATASETS <= set(data)
    assert {data[name]["layer"] for name in REPORT_DATASETS} == {"reporting"}
    persisted = {name: n for name, n in data.items() if "MemoryDataset" not in (n["dataset_type"] or "")}
    assert all(n["layer"] for n in persisted.values()), [n for n in persisted if not persisted[n]["layer"]]
    tasks = [n for n in main["nodes"] if n["type"] == "task"]
    assert all(n["name"].endswith("_node") for n in tasks), [n["name"] for n in tasks]
    reporting = [n for n in tasks if "reporting" in n["pipelines"]]
    assert len(reporting) == 8 and all("reporting" in n["tags"] for n in reporting)

    figure = json.loads((site / "api" / "nodes" / data["forecast_vs_actual"]["id"]).read_text())
    assert figure["preview_type"] == "PlotlyPreview"
    assert [t["name"] for t in figure["preview"]["data"][:4]] == ["p90", "p10-p90", "forecast p50", "actual"]
    table = json.loads((site / "api" / "nodes" / data["at_risk_servers"]["id"]).read_text())
    assert table["preview_type"] == "TablePreview" and table["preview"]["columns"][:2] == [
        "rank",
        "server_id",
    ]
