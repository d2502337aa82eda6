"""Benchmark of sharding by server: the modelling pipeline's wall time with K shards, side by side.

Generates a fleet (``data_generation,etl``) once into a temp data root (never data/), then runs
``kedro run --pipelines modelling`` with each shard count and prints wall time, the ratio to the first run,
the shard plan and the selected forecasts' backtest MASE (the leaderboard's ``selected`` row).

    python benchmarks/modelling_shards.py                                   # 120 servers, K = 1
    python benchmarks/modelling_shards.py --servers 1000 --shards 1,2 \\
        --params "modelling.prophet.enabled=false,modelling.random_forest.enabled=false"
    python benchmarks/modelling_shards.py --project /path/to/other/checkout  # the same fleet, other code

Figures are wall-clock on whatever machine runs this; on a shared machine compare ratios in one sitting.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def _kedro(project: Path, data_root: Path, pipelines: str, params: str) -> float:
    env = {**os.environ, "CF_DATA_ROOT": str(data_root), "KEDRO_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(project / "src")}  # fmt: skip
    command = ["kedro", "run", "--pipelines", pipelines] + (["--params", params] if params else [])
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--servers", type=int, default=120)
    parser.add_argument("--shards", default="1", help="comma-separated shard counts, e.g. 1,2")
    parser.add_argument("--params", default="", help="extra --params for the modelling runs")
    parser.add_argument("--project", type=Path, default=PROJECT, help="checkout whose code runs modelling")
    parser.add_argument("--data-root", type=Path, help="reuse a data root that already holds the fleet")
    args = parser.parse_args()

    data_root = args.data_root or Path(tempfile.mkdtemp(prefix="cf-shards-"))
    if not (data_root / "03_primary").exists():
        seconds = _kedro(
            PROJECT, data_root, "data_generation,etl", f"data_generation.n_servers={args.servers}"
        )
        print(f"fleet: {args.servers} servers in {data_root} (data_generation + etl {seconds:.0f} s)")
    first = None
    print(f"{'shards':>6} {'modelling s':>11} {'ratio':>6} {'selected MASE':>13}  servers per shard")
    for shards in args.shards.split(","):
        params = ",".join(p for p in (f"modelling.shards={shards}", args.params) if p)
        if args.project != PROJECT and shards == "1":
            params = args.params  # another checkout may not know modelling.shards
        seconds = _kedro(args.project, data_root, "modelling", params)
        board = json.loads((data_root / "08_reporting" / "model_leaderboard.json").read_text())
        selected = next((r["mase"] for r in board["models"] if r["model"] == "selected"), float("nan"))
        plan = board.get("shards", {}).get("servers", "-")
        first = first or seconds
        print(f"{shards:>6} {seconds:>11.0f} {seconds / first:>6.2f} {selected:>13.4f}  {plan}", flush=True)


if __name__ == "__main__":
    main()
