"""Fleet-scale benchmark: 1,000 and 10,000 servers end to end here; 100,000 servers as a SageMaker plan.

Usage (from the project root; everything is written under --work-dir, never data/):

    python benchmarks/fleet_scale.py                              # (a) 120 + 1,000 + 10,000, then (b) plan
    python benchmarks/fleet_scale.py --servers 1000 --skip-plan   # (a) only, 120 (reference) and 1,000
    python benchmarks/fleet_scale.py --plan-only --shards 10      # (b) only: dry run, one shard timed, cost
    python benchmarks/fleet_scale.py --skip-run                   # (b), reusing (a)'s figures in --work-dir
    python benchmarks/fleet_scale.py --params modelling.prophet.enabled=false   # extra --params for every run

(a) End to end on this machine. For each fleet size (and the 120-server reference, for accuracy) every
pipeline runs as its own ``kedro run --pipelines X --params data_generation.n_servers=N`` subprocess on a
data root of its own (``CF_DATA_ROOT``). Per stage: wall time and peak RSS of the child (``os.wait4``: the
largest single process, the kedro run or a worker it spawned; parallel workers' sum is not measured); per
node: wall time from the run's log (a plain log format with milliseconds, ``KEDRO_LOGGING_CONFIG``). Then the
selected forecasts' backtest MASE (``model_leaderboard``, model ``selected``) beside the 120-server run's, and
the issue's targets (10,000 servers < 15 min and < 8 GB, 1,000 servers < 6 min, MASE within 3 %).

(b) 100,000 servers as a plan on K shards (``--shards``, ``--plan-servers``):
  1. the SageMaker runner's dry run (``kedro run --env cloud --runner-params dry_run=true --params
     modelling.shards=K``) against a local moto server (fake credentials and bucket; nothing leaves the
     machine): the job list with dependencies. Shard jobs are the groups named ``<group>-shard-<i>-of-<K>``
     (the per-model namespaces, tag ``sharded``); the ``modelling`` merge and other stages are one job each;
  2. one shard of 100,000/K servers timed here, every stage (or (a)'s run of that size, reused);
  3. the projected wall time and cost on K instances of ``--instance-type`` (price table below): a sharded
     group's job runs one shard (the shard's time of its nodes); any other job runs the whole fleet (the
     shard's time x K, linear in servers: the risk, canvas and reporting stages are linear); each job pays
     ``--job-overhead-s`` of start-up; jobs run at most ``--max-concurrent`` at a time (the runner's
     ``max_concurrent_jobs``) in dependency order. Times here are scaled by (cores here / instance vCPUs):
     optimistic for single-threaded nodes, so the unscaled (1:1) projection is printed beside it.

The machine may be shared: compare figures with each other and with the targets, and rerun when in doubt.
"""

import argparse
import heapq
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
KEDRO = (sys.executable, "-m", "kedro")  # this interpreter's kedro, whatever is first on PATH
STAGES = ("data_generation", "etl", "modelling", "risk_analysis", "canvas", "reporting")
REFERENCE_SERVERS = 120
TARGETS = {10_000: (15 * 60, 8.0), 1_000: (6 * 60, None)}  # servers: (wall s, peak GB)
MASE_TOLERANCE = 0.03

PRICE_DATE = "2025-01"
SAGEMAKER_PROCESSING_PRICES = {  # instance type: (vCPUs, memory GiB, USD per hour), us-east-1, on-demand
    "ml.t3.medium": (2, 4, 0.05),
    "ml.m5.large": (2, 8, 0.115),
    "ml.m5.xlarge": (4, 16, 0.23),
    "ml.m5.2xlarge": (8, 32, 0.461),
    "ml.m5.4xlarge": (16, 64, 0.922),
    "ml.c5.2xlarge": (8, 16, 0.408),
    "ml.c5.4xlarge": (16, 32, 0.816),
    "ml.r5.2xlarge": (8, 64, 0.605),
    "ml.r5.4xlarge": (16, 128, 1.21),
}
"""SageMaker Processing list prices as of PRICE_DATE (transcribed, not fetched: check current prices)."""

_LOGGING = """version: 1
disable_existing_loggers: False
formatters:
  timed: {format: "%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s", datefmt: "%Y-%m-%dT%H:%M:%S"}
handlers:
  console: {class: logging.StreamHandler, level: INFO, formatter: timed, stream: ext://sys.stdout}
loggers:
  kedro: {level: INFO}
root: {handlers: [console], level: INFO}
"""
_FAKE_CLIENT = {"region_name": "us-east-1", "aws_access_key_id": "plan", "aws_secret_access_key": "plan"}
_NODE_EVENT = re.compile(r"^(\S+) \S+ INFO (Running|Completed) node: ([\w.]+)")
_SHARD_GROUP = re.compile(r"^(?P<group>.+)-shard-(?P<i>\d+)-of-(?P<k>\d+)$")


def _yes(passed: bool) -> str:
    return "yes" if passed else "NO"


# (a) running stages ----------------------------------------------------------------------------------------
def _environment(data_root: Path, work_dir: Path) -> dict[str, str]:
    logging_config = work_dir / "logging.yml"
    logging_config.write_text(_LOGGING)
    return {
        **os.environ,
        "CF_DATA_ROOT": str(data_root),
        "KEDRO_DISABLE_TELEMETRY": "true",
        "KEDRO_LOGGING_CONFIG": str(logging_config),
        "PYTHONPATH": os.pathsep.join([str(PROJECT / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def node_seconds(log: str) -> dict[str, float]:
    """Wall seconds per node from the timed log lines ``Running node: x`` ... ``Completed node: ns.x``.

    Kedro logs the start with the node's own name and the end with its namespaced name; nodes run one at a
    time (the default sequential runner), so the last start of that own name is the one that completed.
    """
    started, seconds = {}, {}
    for line in log.splitlines():
        match = _NODE_EVENT.match(line)
        if not match:
            continue
        stamp, event, node = match.groups()
        moment = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:] or 0)
        own_name = node.rsplit(".", 1)[-1]
        if event == "Running":
            started[own_name] = moment
        elif own_name in started:
            seconds[node] = round(moment - started.pop(own_name), 2)
    return seconds


def run_stage(stage: str, servers: int, data_root: Path, work_dir: Path, params: str) -> dict:
    """One ``kedro run --pipelines stage`` child: wall s, peak RSS GB (os.wait4), per-node s, exit code."""
    log_path = work_dir / f"n{servers}-{stage}.log"
    all_params = ",".join(p for p in (f"data_generation.n_servers={servers}", params) if p)
    command = [*KEDRO, "run", "--pipelines", stage, "--params", all_params]
    start = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            command, cwd=PROJECT, env=_environment(data_root, work_dir), stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    result = {
        "stage": stage,
        "servers": servers,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),  # ru_maxrss is in KiB on Linux
        "exit_code": child.returncode,
        "nodes": node_seconds(text),
        "log": str(log_path),
    }
    state = "ok" if child.returncode == 0 else f"FAILED (exit {child.returncode}, see {log_path})"
    print(f"  {stage:16s} {wall:8.1f} s  {result['peak_rss_gb']:6.2f} GB  {state}", flush=True)
    return result


def selected_mase(data_root: Path) -> float | None:
    """Backtest MASE of the selected forecasts (``model_leaderboard``, model ``selected``), None if absent."""
    path = data_root / "08_reporting" / "model_leaderboard.json"
    if not path.exists():
        return None
    board = json.loads(path.read_text())
    rows = board.get("models", []) if isinstance(board, dict) else board
    return next((float(r["mase"]) for r in rows if r.get("model") == "selected" and "mase" in r), None)


def run_fleet(servers: int, work_dir: Path, params: str) -> dict:
    """Every stage in order on a fleet of ``servers``; stops at the first failed stage."""
    data_root = work_dir / f"n{servers}" / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    print(f"\n{servers:,} servers (data under {data_root})", flush=True)
    stages = []
    for stage in STAGES:
        stages.append(run_stage(stage, servers, data_root, work_dir, params))
        if stages[-1]["exit_code"] != 0:
            break
    return {"servers": servers, "params": params, "stages": stages, "mase": selected_mase(data_root)}


def _fleet_line(label: str, runs: list[dict], cell) -> str:
    return f"{label:22s}" + "".join(f"{cell(run):>22s}" for run in runs)


def print_runs(runs: list[dict]) -> None:
    """Per stage (rows) and fleet (columns): wall s and peak RSS GB; totals, targets, MASE, slowest nodes."""
    print(f"\n(a) End to end on this machine ({os.cpu_count()} cores): wall s / peak RSS GB per stage")
    print(_fleet_line("stage", runs, lambda r: f"{r['servers']:,} servers"))
    for stage in STAGES:

        def cell(run: dict, stage: str = stage) -> str:
            found = [s for s in run["stages"] if s["stage"] == stage]
            if not found:
                return "not run"
            s = found[0]
            mark = "" if s["exit_code"] == 0 else " FAIL"
            return f"{s['wall_s']:.0f} s / {s['peak_rss_gb']:.2f} GB{mark}"

        print(_fleet_line(stage, runs, cell))
    print(
        _fleet_line(
            "total (peak)",
            runs,
            lambda r: (
                f"{sum(s['wall_s'] for s in r['stages']):.0f} s / "
                f"{max((s['peak_rss_gb'] for s in r['stages']), default=0):.2f} GB"
            ),
        )
    )
    reference = next((r["mase"] for r in runs if r["servers"] == REFERENCE_SERVERS), None)

    def mase_cell(run: dict) -> str:
        if run["mase"] is None:
            return "n/a"
        if not reference or run["servers"] == REFERENCE_SERVERS:
            return f"{run['mase']:.4f}"
        return f"{run['mase']:.4f} ({run['mase'] / reference - 1:+.1%})"

    print(_fleet_line("selected MASE", runs, mase_cell))
    for run in runs:
        complete = len(run["stages"]) == len(STAGES) and all(s["exit_code"] == 0 for s in run["stages"])
        wall = sum(s["wall_s"] for s in run["stages"])
        peak = max((s["peak_rss_gb"] for s in run["stages"]), default=0.0)
        if run["servers"] in TARGETS:
            wall_target, memory_target = TARGETS[run["servers"]]
            checks = [f"wall {wall:.0f} s < {wall_target} s: {_yes(complete and wall < wall_target)}"]
            if memory_target:
                checks.append(f"peak {peak:.2f} GB < {memory_target} GB: {_yes(peak < memory_target)}")
            if reference and run["mase"] is not None:
                ratio = run["mase"] / reference - 1
                checks.append(f"MASE within 3 % of 120: {_yes(abs(ratio) <= MASE_TOLERANCE)}")
            print(f"targets at {run['servers']:,} servers: " + "; ".join(checks))
    largest = max(runs, key=lambda r: r["servers"])
    nodes = sorted(
        ((seconds, node) for s in largest["stages"] for node, seconds in s["nodes"].items()), reverse=True
    )
    print(f"\nslowest nodes at {largest['servers']:,} servers (wall s):")
    for seconds, node in nodes[:15]:
        print(f"  {seconds:8.1f}  {node}")


# (b) the plan ----------------------------------------------------------------------------------------------
def dry_run_jobs(shards: int, servers: int, instance_type: str, params: str, work_dir: Path) -> list[dict]:
    """The SageMaker runner's dry-run request list, run against a local moto server (fake account)."""
    import boto3  # noqa: PLC0415 - only part (b) needs AWS libraries
    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint, bucket = f"http://{host}:{port}", "cf-fleet-scale-plan"
        s3 = boto3.client("s3", endpoint_url=endpoint, **_FAKE_CLIENT)
        s3.create_bucket(Bucket=bucket)
        env = {
            **_environment(work_dir / "plan-data", work_dir),
            "AWS_ACCESS_KEY_ID": "plan",
            "AWS_SECRET_ACCESS_KEY": "plan",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "CF_BUCKET": bucket,
            "CF_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/cf-plan",
            "CF_SAGEMAKER_IMAGE_URI": "123456789012.dkr.ecr.us-east-1.amazonaws.com/capacity-forecaster:plan",
        }
        env.pop("AWS_PROFILE", None)
        run_params = [f"modelling.shards={shards}", f"data_generation.n_servers={servers}", params]
        command = [
            *KEDRO,
            *("run", "--env", "cloud"),
            *("--runner-params", f"dry_run=true,instance_type={instance_type}"),
            *("--params", ",".join(p for p in run_params if p)),
        ]
        done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, check=False)
    finally:
        server.stop()
    (work_dir / "plan-dry-run.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or "[\n  {" not in done.stdout:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"dry run failed (exit {done.returncode}): {' | '.join(tail)}")
    planned, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("[\n  {") :])
    return [p for p in planned if p["operation"] == "CreateProcessingJob"]


def job_groups(planned: list[dict]) -> list[dict]:
    """Group, base group (shard suffix removed), shard, instance and dependencies (as groups) of each job."""
    names = {p["request"]["ProcessingJobName"]: p["group"] for p in planned}
    jobs = []
    for p in planned:
        cluster = p["request"]["ProcessingResources"]["ClusterConfig"]
        match = _SHARD_GROUP.match(p["group"])
        jobs.append(
            {
                "group": p["group"],
                "base": match["group"] if match else p["group"],
                "sharded": bool(match),
                "instance_type": cluster["InstanceType"],
                "instance_count": int(cluster["InstanceCount"]),
                "depends_on": [names.get(d, d) for d in p.get("depends_on", [])],
            }
        )
    return jobs


def group_seconds(run: dict) -> dict[str, float]:
    """Seconds per job group (node namespace; the stage name for nodes without one) in one fleet run."""
    seconds: dict[str, float] = {}
    for stage in run["stages"]:
        nodes = stage["nodes"] or {stage["stage"]: stage["wall_s"]}
        for node, value in nodes.items():
            group = node.split(".", 1)[0] if "." in node else stage["stage"]
            seconds[group] = seconds.get(group, 0.0) + value
    return seconds


def schedule(durations: list[float], depends: list[list[int]], max_concurrent: int) -> float:
    """Makespan of jobs started in list order as soon as their dependencies finished, at most N at a time."""
    finish = [math.inf] * len(durations)
    done, running, clock, started = set(), [], 0.0, set()
    while len(done) < len(durations):
        for j in range(len(durations)):
            ready = j not in started and all(d in done for d in depends[j])
            if ready and len(running) < max_concurrent:
                started.add(j)
                heapq.heappush(running, (clock + durations[j], j))
        clock, j = heapq.heappop(running)
        finish[j] = clock
        done.add(j)
    return max(finish, default=0.0)


def project(jobs: list[dict], shard_run: dict, shards: int, args: argparse.Namespace) -> None:
    """Prints each job's projected runtime with the arithmetic, then wall time and cost on the instances."""
    vcpus, memory_gib, price = SAGEMAKER_PROCESSING_PRICES[args.instance_type]
    here = os.cpu_count() or 1
    measured = group_seconds(shard_run)
    peak_by_stage = {s["stage"]: s["peak_rss_gb"] for s in shard_run["stages"]}
    print(
        f"\nProjection on {args.instance_type} ({vcpus} vCPU, {memory_gib} GiB, ${price}/h, prices of "
        f"{PRICE_DATE}); cores ratio here/instance = {here}/{vcpus} = {here / vcpus:.3f}; "
        f"start-up {args.job_overhead_s:.0f} s per job; at most {args.max_concurrent} jobs at a time"
    )
    index = {job["group"]: i for i, job in enumerate(jobs)}
    depends = [[index[d] for d in job["depends_on"] if d in index] for job in jobs]
    shown = set()
    runtimes = {"scaled": [], "1:1": []}
    for job in jobs:
        base = job["base"]
        shard_seconds = measured.get(base, 0.0)
        factor = 1 if job["sharded"] else shards
        work = shard_seconds * factor
        runtimes["scaled"].append(work * here / vcpus + args.job_overhead_s)
        runtimes["1:1"].append(work + args.job_overhead_s)
        if base in shown:
            continue
        shown.add(base)
        what = (
            f"one shard: {shard_seconds:.1f} s here"
            if job["sharded"]
            else f"whole fleet: {shard_seconds:.1f} s here x {shards} (linear in servers)"
        )
        count = sum(j["base"] == base for j in jobs)
        print(
            f"  {base:24s} x{count:<3d} {what} -> x {here}/{vcpus} = {work * here / vcpus:.1f} s"
            f" (1:1 {work:.1f} s) + {args.job_overhead_s:.0f} s start-up"
        )
    for stage, peak in peak_by_stage.items():
        whole = peak * (1 if stage == "modelling" else shards)
        if whole > memory_gib:
            print(
                f"  memory: {stage} peaked at {peak:.2f} GB on one shard; as one job on the whole fleet "
                f"~{whole:.1f} GB > {memory_gib} GiB: it needs sharding or a bigger instance"
            )
    for label, durations in runtimes.items():
        wall = schedule(durations, depends, args.max_concurrent)
        instance_hours = sum(d * j["instance_count"] for d, j in zip(durations, jobs, strict=True)) / 3600
        print(
            f"  {label:6s}: wall {wall / 60:.1f} min (dependency order, {args.max_concurrent} at a time); "
            f"{len(jobs)} jobs, {instance_hours:.2f} instance-hours x ${price}/h = "
            f"${instance_hours * price:.2f}"
        )


def run_plan(args: argparse.Namespace, runs: list[dict], work_dir: Path) -> dict:
    """(b): the dry-run job list for K shards, one shard timed here, the projection."""
    shards, servers = args.shards, args.plan_servers
    per_shard = math.ceil(servers / shards)
    print(f"\n(b) {servers:,} servers on {shards} shards of ~{per_shard:,} servers")
    jobs = job_groups(dry_run_jobs(shards, servers, args.instance_type, args.params, work_dir))
    if not any(job["sharded"] for job in jobs):
        raise SystemExit(f"the dry run planned no `-shard-<i>-of-{shards}` jobs: nothing to project")
    print(f"  dry run: {len(jobs)} Processing jobs (group <- dependencies):")
    for job in jobs:
        needs = ", ".join(job["depends_on"]) or "-"
        print(f"    {job['group']:36s} {job['instance_type']} x{job['instance_count']}  <- {needs}")
    shard_run = next((r for r in runs if r["servers"] == per_shard and r["params"] == args.params), None)
    if shard_run:
        print(f"  one shard: reusing the {per_shard:,}-server run of (a)")
    else:
        shard_run = run_fleet(per_shard, work_dir, args.params)
        runs.append(shard_run)
    project(jobs, shard_run, shards, args)
    return {"shards": shards, "servers": servers, "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="1000,10000", help="fleet sizes of (a), comma-separated")
    parser.add_argument("--no-reference", action="store_true", help="skip the 120-server accuracy reference")
    parser.add_argument("--skip-run", action="store_true", help="skip (a); (b) reuses its saved figures")
    parser.add_argument("--skip-plan", action="store_true", help="skip (b)")
    parser.add_argument("--plan-only", action="store_true", help="same as --skip-run")
    parser.add_argument("--shards", type=int, default=10, help="K of the 100,000-server plan")
    parser.add_argument("--plan-servers", type=int, default=100_000)
    parser.add_argument(
        "--instance-type", default="ml.m5.2xlarge", choices=sorted(SAGEMAKER_PROCESSING_PRICES)
    )
    parser.add_argument("--max-concurrent", type=int, default=None, help="default: shards + 2")
    parser.add_argument("--job-overhead-s", type=float, default=180.0, help="start-up per Processing job")
    parser.add_argument("--params", default="", help="extra kedro --params for every run (k=v,k2=v2)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "cf-fleet-scale")
    args = parser.parse_args()
    args.max_concurrent = args.max_concurrent or args.shards + 2
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    results_path = work_dir / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    runs: list[dict] = saved["runs"]
    if not (args.skip_run or args.plan_only):
        sizes = [int(n) for n in args.servers.split(",") if n.strip()]
        if not args.no_reference and REFERENCE_SERVERS not in sizes:
            sizes = [REFERENCE_SERVERS, *sizes]
        fresh = [run_fleet(n, work_dir, args.params) for n in sizes]
        rerun = {(n, args.params) for n in sizes}
        runs = [r for r in runs if (r["servers"], r["params"]) not in rerun] + fresh
        results_path.write_text(json.dumps({"runs": runs}, indent=2))
        print_runs(sorted(fresh, key=lambda r: r["servers"]))
    if not args.skip_plan:
        saved_plan = run_plan(args, runs, work_dir)
        results_path.write_text(json.dumps({"runs": runs, "plan": saved_plan}, indent=2))
    print(f"\nfigures: {results_path}")


if __name__ == "__main__":
    sys.exit(main())
