"""Benchmark of the data_generation pipeline: the nodes, and writing the outputs as the catalog does.

Runs the pipeline's node functions in order on the project parameters (conf/base), for a 120-server and a
10,000-server fleet (4 years of history + the 90-day horizon), then saves the four outputs through the
catalog entries of conf/base/catalog_data_generation.yml into a temp dir (gzip CSV for raw_server_metrics,
CSV for the inventory, Parquet for the others) and reads raw_server_metrics back through its catalog entry.
For the raw gzip CSV it also times faster writers side by side and checks that the catalog entry reads their
files back: pandas with gzip level 1, and pyarrow.csv.write_csv into a gzip stream.

Usage: python benchmarks/data_generation.py [--servers 120 10000] [--no-alternatives]
The machine is shared and has 2 cores: compare the figures with each other rather than as absolutes.
"""

import argparse
import gzip
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import yaml
from kedro.io import DataCatalog

from capacity_forecaster.pipelines.data_generation import nodes

PROJECT = Path(__file__).resolve().parents[1]
CONF = PROJECT / "conf" / "base"
OUTPUTS = ("raw_server_metrics", "server_inventory", "future_metrics", "server_truth")


def _parameters() -> tuple[dict[str, Any], dict[str, Any]]:
    shared = yaml.safe_load((CONF / "parameters.yml").read_text())
    own = yaml.safe_load((CONF / "parameters_data_generation.yml").read_text())["data_generation"]
    return shared, own


def _catalog(data_root: Path) -> DataCatalog:
    text = (CONF / "catalog_data_generation.yml").read_text().replace("${globals:data_root}", str(data_root))
    config = {name: entry for name, entry in yaml.safe_load(text).items() if name in OUTPUTS}
    return DataCatalog.from_config(config)


def _timed(label: str, timings: dict[str, float], func: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    result = func(*args)
    timings[label] = time.perf_counter() - start
    return result


def run_nodes(n_servers: int, timings: dict[str, float]) -> dict[str, pd.DataFrame]:
    """Runs the pipeline's nodes in order, as the pipeline wires them."""
    shared, p = _parameters()
    cal = shared["calendar"]
    inventory = _timed(
        "generate_server_inventory",
        timings,
        nodes.generate_server_inventory,
        n_servers,
        p["archetype_mix"],
        p["archetypes"],
        p["instance_families"],
        p["datacenters"],
        p["random_seed"],
    )
    profiles = _timed(
        "draw_server_profiles",
        timings,
        nodes.draw_server_profiles,
        inventory,
        p["archetypes"],
        p["history_days"],
        p["grower_share"],
        p["grower_target"],
        p["grower_ramp_days"],
        p["level_shift_share"],
        p["level_shift_size"],
        p["random_seed"],
    )
    simulated = _timed(
        "simulate_utilisation",
        timings,
        nodes.simulate_utilisation,
        profiles,
        p["archetypes"],
        p["history_start"],
        p["history_days"],
        shared["horizon"],
        p["grower_secondary_weight"],
        cal["country"],
        cal["month_end_business_days"],
        cal["quarter_end_business_days"],
        p["random_seed"],
    )
    history, future = _timed(
        "split_history_and_future", timings, nodes.split_history_and_future, simulated, shared["horizon"]
    )
    del simulated
    raw = _timed(
        "add_monitoring_dirt",
        timings,
        nodes.add_monitoring_dirt,
        history,
        p["missing_day_share"],
        p["gap_server_share"],
        p["gap_days"],
        p["duplicate_share"],
        p["spike_share"],
        p["spike_out_of_range_share"],
        p["random_seed"],
    )
    del history
    truth = _timed("build_server_truth", timings, nodes.build_server_truth, future)
    return {
        "raw_server_metrics": raw,
        "server_inventory": inventory,
        "future_metrics": future,
        "server_truth": truth,
    }


def _pandas_gzip_level1(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, compression={"method": "gzip", "compresslevel": 1})


def _arrow_csv_arrow_gzip(frame: pd.DataFrame, path: Path) -> None:
    with pa.CompressedOutputStream(str(path), "gzip") as stream:  # Arrow's own gzip (its default level)
        pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), stream)


def _arrow_csv_python_gzip_level1(frame: pd.DataFrame, path: Path) -> None:
    with gzip.open(path, "wb", compresslevel=1) as stream:  # Arrow formats, zlib level 1 compresses
        pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), stream)


def bench(n_servers: int, alternatives: bool) -> None:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    outputs = run_nodes(n_servers, timings)
    nodes_s = time.perf_counter() - start
    raw = outputs["raw_server_metrics"]

    with tempfile.TemporaryDirectory() as tmp:
        catalog = _catalog(Path(tmp))
        for name, frame in outputs.items():
            _timed(f"save {name}", timings, catalog.save, name, frame)
        save_s = sum(v for k, v in timings.items() if k.startswith("save "))
        raw_path = Path(tmp) / "01_raw" / "server_metrics.csv.gz"
        sizes = {"raw gzip CSV (catalog)": raw_path.stat().st_size}
        reread = _timed("load raw_server_metrics (catalog)", timings, catalog.load, "raw_server_metrics")
        assert len(reread) == len(raw), "raw_server_metrics did not read back whole"

        lines = [
            f"\n== {n_servers:,} servers: {len(raw):,} raw rows, "
            f"{len(outputs['future_metrics']):,} future rows ==",
            *(f"  {k:<42} {v:8.2f} s" for k, v in timings.items()),
            f"  {'nodes total':<42} {nodes_s:8.2f} s",
            f"  {'saving the four outputs (catalog)':<42} {save_s:8.2f} s",
            f"  {'pipeline total (nodes + saves)':<42} {nodes_s + save_s:8.2f} s",
        ]
        if alternatives:
            for label, writer in (
                ("raw: pandas to_csv, gzip level 1", _pandas_gzip_level1),
                ("raw: pyarrow write_csv, arrow gzip", _arrow_csv_arrow_gzip),
                ("raw: pyarrow write_csv, gzip level 1", _arrow_csv_python_gzip_level1),
            ):
                raw_path.unlink()
                seconds = _time_call(writer, raw, raw_path)
                back = catalog.load("raw_server_metrics")
                same = back.shape == raw.shape and back.columns.tolist() == raw.columns.tolist()
                sizes[label] = raw_path.stat().st_size
                lines.append(
                    f"  {label:<42} {seconds:8.2f} s  (catalog reads it back: {'yes' if same else 'NO'})"
                )
                other_saves = save_s - timings["save raw_server_metrics"]
                lines.append(
                    f"    -> pipeline total with this raw writer {nodes_s + other_saves + seconds:11.2f} s"
                )
        lines += [f"  size {k:<37} {v / 2**20:8.1f} MiB" for k, v in sizes.items()]
        print("\n".join(lines), flush=True)


def _time_call(func: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, nargs="+", default=[120, 10_000])
    parser.add_argument("--no-alternatives", action="store_true", help="skip the faster raw CSV writers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("data_generation benchmark (2-core shared machine: figures are noisy, compare side by side)")
    for n in args.servers:
        bench(n, alternatives=not args.no_alternatives)


if __name__ == "__main__":
    main()
