"""Sharding by server in the modelling pipeline: stable shards, K-way runs equal to the unsharded run, empty
shards, one-shard jobs writing only their partition, and partitions of another K ignored by the merge."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset
from kedro_datasets.partitions import PartitionedDataset
from kedro_datasets.pickle import PickleDataset

from capacity_forecaster import sharding
from capacity_forecaster.pipelines.modelling.nodes import prepare_model_input, split_model_input
from capacity_forecaster.pipelines.modelling.pipeline import MODELS, create_pipeline
from capacity_forecaster.sharding import shard_of
from tests.conftest import PROJECT_PATH
from tests.models.sample_series import clean_tables

H = 14
PER_SERIES = ("seasonal_naive", "changepoint_regression")
"""Models whose forecast of a series depends on that series only: the shard count cannot change them."""
PARAMS = {
    "horizon": H,
    "modelling": {
        "backtest": {"n_origins": 3, "holdout_share": 0.3},
        "ensemble_members": list(PER_SERIES),
        "seasonal_naive": {"hyperparameters": {"residual_window": 70}},
        "changepoint_regression": {"hyperparameters": {"window_days": 150}},
        **{m: {"enabled": False} for m in MODELS if m not in PER_SERIES},
    },
}
OUTPUTS = {"backtest": "parquet", "backtest_stats": "pkl", "fit_summary": "pkl", "forecaster": "pkl",
           "forecast": "parquet"}  # fmt: skip
"""Each model's partitioned outputs and their file suffix (as in conf/cloud/catalog.yml)."""


def _fleet(n_servers: int, shards: int, empty_shard: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``clean_server_metrics`` and ``server_inventory`` of ``n_servers`` servers, none of them in
    ``empty_shard`` of a ``shards``-way split."""
    candidates = [f"host-{i:03d}" for i in range(200)]
    ids = [s for s, k in zip(candidates, shard_of(candidates, shards), strict=True) if k != empty_shard]
    clean, inventory = clean_tables(n_servers=n_servers, days=150)
    rename = dict(zip(inventory["server_id"], ids[:n_servers], strict=False))
    return clean.replace({"server_id": rename}), inventory.replace({"server_id": rename})


def _catalog(kedro_session, shards: int, clean: pd.DataFrame, inventory: pd.DataFrame):
    params = {**PARAMS, "modelling": {**PARAMS["modelling"], "shards": shards}}
    catalog = kedro_session(runtime_params=params).load_context().catalog
    catalog["clean_server_metrics"] = clean
    catalog["server_inventory"] = inventory
    return catalog


def _run(catalog, namespaces: list[str] | None = None) -> None:
    pipeline = create_pipeline()
    SequentialRunner().run(
        pipeline.only_nodes_with_namespaces(namespaces) if namespaces else pipeline, catalog
    )


def _partitioned(catalog, root: Path) -> dict[str, Path]:
    """Persists what crosses the modelling jobs as the cloud env does on S3 (every per-model output and
    ``model_input_shards`` in PartitionedDatasets) under ``root``; returns the partitioned folders."""
    folders = {}
    for model in MODELS:
        for output, suffix in OUTPUTS.items():
            name = f"{model}_{output}"
            kind = "pandas.ParquetDataset" if suffix == "parquet" else "pickle.PickleDataset"
            folders[name] = root / name
            catalog[name] = PartitionedDataset(
                path=str(root / name), dataset=kind, filename_suffix=f".{suffix}"
            )
    catalog["model_input"] = ParquetDataset(filepath=str(root / "model_input.parquet"))
    catalog["backtest_plan"] = PickleDataset(filepath=str(root / "backtest_plan.pkl"))
    catalog["shard_plan"] = JSONDataset(filepath=str(root / "shard_plan.json"))
    folders["model_input_shards"] = root / "model_input_shards"
    catalog["model_input_shards"] = PartitionedDataset(
        path=str(folders["model_input_shards"]), dataset="pandas.ParquetDataset", filename_suffix=".parquet"
    )
    return folders


def test_a_server_keeps_its_shard_across_processes_and_fleets():
    ids = [f"srv-{i:05d}" for i in range(500)] + ["db-eu-1", "web 7", "ünïcode"]
    here = {k: shard_of(ids, k).tolist() for k in (1, 2, 4, 7)}
    code = (
        "import json, sys; from capacity_forecaster.sharding import shard_of; ids = json.loads(sys.argv[1]); "
        "print(json.dumps({k: shard_of(ids, k).tolist() for k in (1, 2, 4, 7)}))"
    )
    source = str(Path(sharding.__file__).parents[1])  # this checkout's package, with another hash seed
    other = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ids)], check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": source, "PYTHONHASHSEED": "12345"},
    )  # fmt: skip
    assert {int(k): v for k, v in json.loads(other.stdout).items()} == here
    assert here[1] == [1] * len(ids) and all(set(v) == set(range(1, k + 1)) for k, v in here.items())
    # a server's shard depends on its id only, not on the other servers of the fleet
    assert shard_of(ids[::-1][:40], 7).tolist() == here[7][::-1][:40]


def test_split_resolves_auto_and_keeps_one_shard_uncopied():
    clean, inventory = _fleet(n_servers=5, shards=1)
    model_input = prepare_model_input(clean, inventory)
    parts, plan = split_model_input(model_input, "auto", 2)
    assert plan == {"shards": 3, "servers": {n: parts[n]["server_id"].nunique() for n in parts}}
    assert sum(plan["servers"].values()) == 5 and sum(len(p) for p in parts.values()) == len(model_input)
    for name, part in parts.items():
        assert set(shard_of(part["server_id"], 3)) <= {int(name.split("-")[1])}
    one, one_plan = split_model_input(model_input, 1, 2)
    assert one["shard-1-of-1"] is model_input and one_plan == {"shards": 1, "servers": {"shard-1-of-1": 5}}


def test_workers_stay_within_the_cores_models_leave_free(monkeypatch):
    monkeypatch.setattr(sharding, "cpu_count", lambda: 2)
    assert sharding.worker_count(4, cores_per_shard=1) == 2  # two single-core shards at once
    assert sharding.worker_count(4, cores_per_shard=2) == 1  # prophet n_jobs 2: one shard after another
    assert sharding.worker_count(1, cores_per_shard=1) == 1  # never more workers than shards
    assert sharding.worker_count(4, cores_per_shard=1, limit=1) == 1


def test_a_shard_job_takes_its_partition_or_says_which_is_missing():
    partitions = {"shard-1-of-2.parquet": "a", "shard-2-of-2.parquet": "b", "shard-1-of-3.parquet": "old"}
    assert sharding.partitions_to_run(partitions, 2, 2) == {"shard-2-of-2": "b"}
    assert sharding.partitions_to_run(partitions, 2, None) == {"shard-1-of-2": "a", "shard-2-of-2": "b"}
    with pytest.raises(ValueError, match="outside 1..2"):
        sharding.partitions_to_run(partitions, 2, 3)
    with pytest.raises(ValueError, match="missing input partition shard-2-of-3"):
        sharding.partitions_to_run(partitions, 3, 2)


@pytest.fixture(scope="module")
def one_and_four_shards(tmp_path_factory) -> dict[int, dict]:
    """The modelling pipeline on 6 servers (none in shard 4 of 4) with K = 1 and K = 4."""
    clean, inventory = _fleet(n_servers=6, shards=4, empty_shard=4)
    bootstrap_project(PROJECT_PATH)
    results, sessions = {}, []

    def make_session(runtime_params: dict) -> KedroSession:
        sessions.append(KedroSession.create(project_path=PROJECT_PATH, runtime_params=runtime_params))
        return sessions[-1]

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
        for shards in (1, 4):
            monkeypatch.setenv("CF_DATA_ROOT", str(tmp_path_factory.mktemp(f"k{shards}")))
            catalog = _catalog(make_session, shards, clean, inventory)
            _run(catalog)
            results[shards] = {
                name: catalog.load(name) for name in ("forecasts", "model_selection", "model_leaderboard")
            }
    for session in sessions:
        session.close()
    return results | {"servers": sorted(inventory["server_id"])}


@pytest.mark.slow
@pytest.mark.xdist_group("one_and_four_shards")  # one worker runs the fixture
def test_four_shards_select_and_forecast_like_one(one_and_four_shards):
    one, four = one_and_four_shards[1], one_and_four_shards[4]
    assert one["model_leaderboard"]["shards"] == {"shards": 1, "servers": {"shard-1-of-1": 6}}
    assert four["model_leaderboard"]["shards"]["shards"] == 4
    assert one["model_selection"]["model"].nunique() > 1  # a real choice between the models
    pd.testing.assert_frame_equal(four["model_selection"], one["model_selection"])
    assert set(one["forecasts"]["model"]) == {*PER_SERIES, "ensemble"}
    pd.testing.assert_frame_equal(four["forecasts"], one["forecasts"])
    for key in ("models", "by_metric", "by_archetype"):  # scores alike; fit times are measurements
        pd.testing.assert_frame_equal(
            _scores(four["model_leaderboard"][key]), _scores(one["model_leaderboard"][key])
        )


def _scores(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    return frame.drop(columns=[c for c in frame.columns if c.endswith(("_seconds", "_per_second"))])


@pytest.mark.slow
@pytest.mark.xdist_group("one_and_four_shards")  # one worker runs the fixture
def test_the_merge_is_complete_with_an_empty_shard(one_and_four_shards):
    four = one_and_four_shards[4]
    servers = four["model_leaderboard"]["shards"]["servers"]
    assert servers["shard-4-of-4"] == 0 and sum(servers.values()) == 6
    selected = four["forecasts"][four["forecasts"]["is_selected"]]
    assert sorted(selected["server_id"].unique()) == one_and_four_shards["servers"]
    assert (selected.groupby(["server_id", "metric"]).size() == H).all() and len(
        selected.groupby(["server_id", "metric"])
    ) == 6 * 4


@pytest.mark.slow
def test_shard_jobs_write_their_partition_only_and_the_merge_ignores_another_k(kedro_session, tmp_path):
    clean, inventory = _fleet(n_servers=5, shards=3)
    catalog = _catalog(kedro_session, 3, clean, inventory)
    folders = _partitioned(catalog, tmp_path / "shards")
    _run(catalog, ["model_input"])  # writes model_input_shards (K = 3), shard_plan, backtest_plan
    stale_input = catalog.load("model_input").assign(
        server_id="stale-server", unique_id="stale-server|cpu_p95"
    )
    stale_input.to_parquet(folders["model_input_shards"] / "shard-2-of-2.parquet")  # an older run with K = 2
    for model in MODELS:
        folders[f"{model}_forecast"].mkdir()
        forecast = pd.DataFrame(
            {
                "server_id": ["stale-server"],
                "metric": ["cpu_p95"],
                "model": [model],
                "date": [pd.Timestamp("2030-01-01")],
                "p10": [1.0],
                "p50": [2.0],
                "p90": [3.0],
            }
        )
        forecast.to_parquet(folders[f"{model}_forecast"] / "shard-1-of-2.parquet")  # fmt: skip

    for shard in (2, 1, 3):
        catalog["params:modelling.shard"] = shard
        _run(catalog, list(MODELS))
        if shard == 2:  # the first job: only its own partition (beside the stale one of K = 2)
            for name, folder in folders.items():
                if name != "model_input_shards":
                    files = {p.relative_to(folder).parts[0] for p in folder.iterdir()}
                    assert {f.split(".")[0] for f in files} - {"shard-1-of-2"} == {"shard-2-of-3"}, name

    catalog["params:modelling.shard"] = None
    _run(catalog, ["modelling"])
    forecasts = catalog.load("forecasts")
    assert "stale-server" not in set(forecasts["server_id"])
    assert sorted(forecasts["server_id"].unique()) == sorted(inventory["server_id"])
    leaderboard = catalog.load("model_leaderboard")
    assert leaderboard["shards"]["shards"] == 3 and sum(leaderboard["shards"]["servers"].values()) == 5

    unsharded = _catalog(kedro_session, 1, clean, inventory)
    _run(unsharded)
    pd.testing.assert_frame_equal(forecasts, unsharded.load("forecasts"))


@pytest.mark.slow
def test_the_merge_names_missing_shards(kedro_session, tmp_path):
    clean, inventory = _fleet(n_servers=3, shards=2)
    catalog = _catalog(kedro_session, 2, clean, inventory)
    _partitioned(catalog, tmp_path / "shards")
    _run(catalog, ["model_input"])
    catalog["params:modelling.shard"] = 1
    _run(catalog, list(MODELS))
    catalog["params:modelling.shard"] = None
    with pytest.raises(ValueError, match=r"missing shard outputs \['shard-2-of-2'\]"):
        _run(catalog, ["modelling"])
