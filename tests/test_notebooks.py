"""Every notebook in notebooks/ runs top to bottom under the Kedro IPython extension on a small fleet.

The pipelines the notebooks read from run once, through a KedroSession, into a temp data root (CF_DATA_ROOT,
which the notebook kernels inherit). A notebook names the pipelines it needs in its metadata
(``capacity_forecaster.requires_pipelines``; all of them when absent); it is skipped, saying why, while one of
them is not in the tree.
"""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.runner import SequentialRunner

from tests.conftest import PROJECT_PATH

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((PROJECT_PATH / "notebooks").glob("*.ipynb"))
SMALL_FLEET = {
    "data_generation": {"n_servers": 12, "history_days": 800},
    "modelling": {
        "backtest": {"n_origins": 2},
        "prophet": {"enabled": False},
        "random_forest": {"enabled": False},
        "gradient_boosting": {"enabled": False},
        "quantile_gbm": {"hyperparameters": {"max_iter": 30, "max_train_rows": 5000}},
    },
}
"""Runtime parameters that keep the pipelines fast: 12 servers, a little over two years of history, and the
two fast models (seasonal naive and the global quantile model) with two backtest origins."""


def _requires(path: Path, registered: set[str]) -> set[str]:
    """The pipelines a notebook reads from (its metadata), or every registered pipeline if it does not say."""
    metadata = nbformat.read(path, as_version=4).metadata.get("capacity_forecaster", {})
    return set(metadata.get("requires_pipelines", registered))


@pytest.fixture(scope="module")
def prepared() -> Iterator[tuple[Path, set[str]]]:
    """Runs, into a temp data root, every pipeline that a notebook needs when all it needs is in the tree."""
    bootstrap_project(PROJECT_PATH)
    registered = set(pipelines) - {"__default__"}
    needed = [_requires(path, registered) for path in NOTEBOOKS]
    to_run = sorted(set().union(*(names for names in needed if names <= registered)))
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CF_DATA_ROOT", tmp)
        patch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
        if to_run:  # kedro orders the nodes of the summed pipelines by their dependencies
            with KedroSession.create(project_path=PROJECT_PATH, runtime_params=SMALL_FLEET) as session:
                session.run(pipeline_names=to_run, runner=SequentialRunner())
        yield Path(tmp), registered


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")  # one worker prepares the pipelines' outputs, once
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, prepared: tuple[Path, set[str]]):
    data_root, registered = prepared
    missing = sorted(_requires(path, registered) - registered)
    if missing:
        pytest.skip(f"{path.name} needs pipeline(s) {missing}, not in the tree yet")
    assert os.environ["CF_DATA_ROOT"] == str(data_root)  # the kernel inherits it
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [o for cell in book.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
