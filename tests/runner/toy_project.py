"""A throwaway Kedro project (package ``cf_toy``) written under a temp dir, for end-to-end runner tests.

Pipelines: ``prep`` (make_numbers -> raw_numbers (memory, stays inside the job) -> scale -> scaled),
``stats`` (summarise scaled) and ``plot`` (bin scaled), each namespaced by its name; so ``stats`` and ``plot``
depend on ``prep`` and are independent of each other. The cloud catalog keeps the crossing datasets on S3.

Pipeline ``sharded``: ``split`` (scaled -> numbers_by_shard partitions + shard_plan), ``square`` (tagged
``sharded``: squares the partition of ``params:modelling.shard``, or every partition when it is null; fails
for a shard listed in ``broken_shards``) and ``totals`` (the merge: sums all partitions). ``basic`` is the
first three pipelines; ``__default__`` holds every node, as a job's ``--nodes`` are looked up there.
"""

import inspect
import math
from pathlib import Path
from textwrap import dedent

from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.json import JSONDataset
from kedro_datasets.partitions import PartitionedDataset

FILES = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "cf_toy"
        version = "0.1.0"
        requires-python = ">=3.11"
        dependencies = ["kedro>=1.7", "kedro-datasets[json-jsondataset]>=9"]

        [tool.setuptools.packages.find]
        where = ["src"]

        [tool.kedro]
        package_name = "cf_toy"
        project_name = "toy"
        kedro_init_version = "1.7.0"
        source_dir = "src"
    """,
    "README.md": "toy\n",
    ".telemetry": "consent: false\n",
    "src/cf_toy/__init__.py": '__version__ = "0.1.0"\n',
    "src/cf_toy/__main__.py": """
        import sys
        from pathlib import Path

        from kedro.framework.cli.utils import find_run_command
        from kedro.framework.project import configure_project


        def main(*args, **kwargs):
            configure_project(Path(__file__).parent.name)
            kwargs["standalone_mode"] = not hasattr(sys, "ps1")
            return find_run_command(Path(__file__).parent.name)(*args, **kwargs)


        if __name__ == "__main__":
            main()
    """,
    "src/cf_toy/settings.py": """
        from kedro.config import OmegaConfigLoader
        from omegaconf.resolvers import oc

        CONFIG_LOADER_CLASS = OmegaConfigLoader
        CONFIG_LOADER_ARGS = {
            "base_env": "base", "default_run_env": "local", "custom_resolvers": {"oc.env": oc.env}
        }
    """,
    "conf/base/parameters.yml": "n: 12\nfactor: 1.5\nmodelling: {shards: auto, shard: null, per_shard: 5}\n",
    "conf/base/catalog.yml": """
        summary:
          type: json.JSONDataset
          filepath: data/summary.json
    """,
    "conf/local/.gitkeep": "",
    "conf/local/credentials.yml": "secret: do-not-ship\n",
    "conf/cloud/catalog.yml": """
        "{name}":
          type: json.JSONDataset
          filepath: s3://${oc.env:CF_BUCKET}/${oc.env:CF_PREFIX,toy}/{name}.json
        raw_numbers:
          type: MemoryDataset
        summary:
          type: json.JSONDataset
          filepath: s3://${oc.env:CF_BUCKET}/${oc.env:CF_PREFIX,toy}/summary.json
        numbers_by_shard:
          type: partitions.PartitionedDataset
          path: s3://${oc.env:CF_BUCKET}/${oc.env:CF_PREFIX,toy}/numbers_by_shard
          dataset: json.JSONDataset
          filename_suffix: .json
        squares:
          type: partitions.PartitionedDataset
          path: s3://${oc.env:CF_BUCKET}/${oc.env:CF_PREFIX,toy}/squares
          dataset: json.JSONDataset
          filename_suffix: .json
    """,
    "conf/cloud/sagemaker.yml": """
        sagemaker:
          role_arn: arn:aws:iam::123456789012:role/toy-sagemaker
          s3_prefix: s3://${oc.env:CF_BUCKET}/sagemaker
          region: us-east-1
          poll_interval_s: 0
          poll_max_interval_s: 0
          max_runtime_s: 120
          backend: local
          max_concurrent_jobs: 2
    """,
}


def make_numbers(n: int) -> list[int]:
    return list(range(1, n + 1))


def scale(numbers: list[int], factor: float) -> list[float]:
    return [x * factor for x in numbers]


def summarise(values: list[float]) -> dict:
    return {"count": len(values), "total": sum(values), "max": max(values)}


def bin_values(values: list[float]) -> dict:
    return {"low": sum(v < 10 for v in values), "high": sum(v >= 10 for v in values)}


def split_by_shard(values: list[float], shards, per_shard: int) -> tuple[dict, dict]:
    count = math.ceil(len(values) / per_shard) if shards == "auto" else shards
    parts = {f"shard-{i}-of-{count}": values[i - 1 :: count] for i in range(1, count + 1)}
    return parts, {"shards": count, "servers": {name: len(part) for name, part in parts.items()}}


def square_shard(parts: dict, plan: dict, shard, broken: list) -> dict:
    names = [f"shard-{shard}-of-{plan['shards']}"] if shard else sorted(parts)
    if shard in broken:
        raise RuntimeError(f"shard {shard} is listed in broken_shards")
    return {name: [v * v for v in parts[name]()] for name in names}


def total_squares(squares: dict, plan: dict) -> dict:
    names = [f"shard-{i}-of-{plan['shards']}" for i in range(1, plan["shards"] + 1)]
    return {"total": sum(sum(squares[name]()) for name in names), "shards": len(names)}


def _ns(name, *nodes):
    return Pipeline(list(nodes), namespace=name, prefix_datasets_with_namespace=False)


def toy_pipelines() -> dict:
    prep = _ns(
        "prep",
        Node(make_numbers, "params:n", "raw_numbers", name="make_numbers_node"),
        Node(scale, ["raw_numbers", "params:factor"], "scaled", name="scale_node"),
    )
    stats = _ns("stats", Node(summarise, "scaled", "summary", name="summarise_node"))
    plot = _ns("plot", Node(bin_values, "scaled", "bins", name="bin_values_node"))
    split = _ns(
        "split",
        Node(
            split_by_shard,
            ["scaled", "params:modelling.shards", "params:modelling.per_shard"],
            ["numbers_by_shard", "shard_plan"],
            name="split_node",
        ),
    )
    square = _ns(
        "square",
        Node(
            square_shard,
            ["numbers_by_shard", "shard_plan", "params:modelling.shard", "broken_shards"],
            "squares",
            name="square_node",
            tags=["sharded"],
        ),
    )
    totals = _ns("totals", Node(total_squares, ["squares", "shard_plan"], "total", name="total_node"))
    return {
        "prep": prep,
        "stats": stats,
        "plot": plot,
        "basic": prep + stats + plot,
        "sharded": prep + split + square + totals,
        "__default__": prep + stats + plot + split + square + totals,  # a job's --nodes are looked up here
    }


TOY = toy_pipelines()["basic"]
"""The toy pipeline in this process (same functions and node names as the cf_toy package)."""
TOY_SHARDED = toy_pipelines()["sharded"]


def toy_catalog(prefix: str = "s3://cf-test/toy", scaled_in_memory: bool = False) -> DataCatalog:
    """An in-process catalog like the toy's cloud catalog (``scaled`` optionally in memory)."""
    catalog = DataCatalog(
        {name: JSONDataset(filepath=f"{prefix}/{name}.json") for name in ("scaled", "summary", "bins")}
    )
    catalog["raw_numbers"] = MemoryDataset()
    if scaled_in_memory:
        catalog["scaled"] = MemoryDataset()
    catalog["params:n"] = 12
    catalog["params:factor"] = 1.5
    return catalog


def toy_sharded_catalog(prefix: str = "s3://cf-test/toy", **modelling) -> DataCatalog:
    """An in-process catalog like the toy's cloud catalog for pipeline ``sharded``; ``modelling`` overrides
    the parameters (``shards``, ``shard``)."""
    catalog = toy_catalog(prefix)
    for name in ("shard_plan", "broken_shards", "total"):
        catalog[name] = JSONDataset(filepath=f"{prefix}/{name}.json")
    for name in ("numbers_by_shard", "squares"):
        catalog[name] = PartitionedDataset(
            path=f"{prefix}/{name}", dataset="json.JSONDataset", filename_suffix=".json"
        )
    params = {"shards": "auto", "shard": None, "per_shard": 5, **modelling}
    catalog["params:modelling"] = params
    for key, value in params.items():
        catalog[f"params:modelling.{key}"] = value
    return catalog


def _registry_source() -> str:
    """cf_toy/pipeline_registry.py: the functions above, verbatim, and ``register_pipelines``."""
    functions = (make_numbers, scale, summarise, bin_values, split_by_shard, square_shard, total_squares, _ns)
    parts = [inspect.getsource(f) for f in (*functions, toy_pipelines)]
    return (
        "import math\n\nfrom kedro.pipeline import Node, Pipeline\n\n\n"
        + "\n\n".join(parts)
        + ("\n\ndef register_pipelines():\n    return toy_pipelines()\n")
    )


def write_toy_project(root: Path) -> Path:
    """Writes the toy project into ``root`` and returns ``root``."""
    (root / "src/cf_toy").mkdir(parents=True, exist_ok=True)
    (root / "src/cf_toy/pipeline_registry.py").write_text(_registry_source())
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text).lstrip("\n"))
    return root
