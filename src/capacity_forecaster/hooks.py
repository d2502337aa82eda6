"""A summary after every ``kedro run``: what ran, how long it took, where the results are, and the headline.

Printed to stdout at the end of a successful run (a terminal, CI or a SageMaker job log alike), unless the run
says ``--params quiet=true``. The headline (servers per risk tier, the top at-risk servers with their breach
dates, the consolidation savings) comes from ``risk_summary``, read through the catalog, when this run wrote
it; the report and the at-risk CSV are listed with their local path or ``s3://`` URI, marked when an earlier
run wrote them. A summary that cannot be built is logged as a warning and never fails the run.
"""

import logging
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registered_pipelines
from kedro.pipeline import Pipeline

from capacity_forecaster.cloud.hooks import s3_uri
from capacity_forecaster.progress import format_seconds

logger = logging.getLogger(__name__)

RESULT_FILES = {"capacity_report": "Report", "at_risk_servers": "At-risk CSV"}
AT_RISK_TIERS = ("very_high", "high")
HEADLINE_DATASET = "risk_summary"
TOP_SERVERS = 5


def pipelines_that_ran(pipeline: Pipeline, requested: list[str] | None) -> list[str]:
    """Registered pipelines (``__default__`` aside) with a node in the pipeline that ran, else the request."""
    ran = set(pipeline.nodes)
    names = sorted(
        name for name, registered in registered_pipelines.items()
        if name != "__default__" and ran & set(registered.nodes)
    )  # fmt: skip
    return names or list(requested or ["__default__"])


def location(dataset: Any) -> str | None:
    """``s3://`` URI or local path (relative to the working directory when below it) of a file-backed
    dataset; None for any other dataset."""
    uri = s3_uri(dataset)
    if uri is not None:
        return uri
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None:
        return None
    path = Path(str(filepath))
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _exists(dataset: Any) -> bool:
    try:
        return bool(dataset.exists())
    except Exception:  # noqa: BLE001 - an unreachable store only means "not known to exist"
        return False


def _breach(server: dict[str, Any]) -> str:
    dates = [
        f"{level} % on {server[f'first_date_above_{level}']}"
        for level in (80, 90)
        if server.get(f"first_date_above_{level}")
    ]
    return ", ".join(dates) if dates else "no breach date in the horizon"


def headline(summary: dict[str, Any], top: int = TOP_SERVERS) -> list[str]:
    """Lines of the risk headline from ``risk_summary``: tiers, top at-risk servers, savings."""
    tiers = summary.get("server_tiers", {})
    fleet = (
        f"{summary.get('servers', sum(tiers.values()))} servers, analysis date {summary.get('analysis_date')}"
    )
    lines = [f"Servers per tier: {', '.join(f'{tier} {count}' for tier, count in tiers.items())} ({fleet})"]
    at_risk = sum(tiers.get(tier, 0) for tier in AT_RISK_TIERS)
    servers = summary.get("top_at_risk_servers", [])[:top]
    if servers:
        lines.append(f"Top at-risk servers ({len(servers)} of {at_risk}, most severe and soonest first):")
        width = max(len(s["server_id"]) for s in servers)
        lines += [
            f"  {s['server_id']:<{width}}  {s['risk_level']:<9}  {s['metric']:<11}  {_breach(s)}"
            for s in servers
        ]
    else:
        lines.append("No server is at risk within the horizon.")
    savings = summary.get("savings") or {}
    if savings.get("monthly_savings_usd") is not None:
        share = savings.get("savings_share")
        share_text = f" ({100 * share:.1f} % of the fleet's cost)" if share is not None else ""
        lines.append(
            f"Monthly savings: {savings['monthly_savings_usd']:,.0f} USD{share_text}, "
            f"{savings.get('servers_moved', 0)} servers moved onto {savings.get('hosts_receiving', 0)} hosts"
        )
    return lines


class RunSummaryHooks:
    """Prints the run summary after a successful ``kedro run`` (``--params quiet=true`` silences it)."""

    def __init__(self) -> None:
        self._started: float | None = None

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started = time.perf_counter()

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        if _quiet(run_params, catalog):
            return
        seconds = time.perf_counter() - self._started if self._started is not None else 0.0
        try:
            text = self.summary(run_params, pipeline, catalog, seconds)
        except Exception as exc:  # noqa: BLE001 - the run itself succeeded; the summary is a courtesy
            logger.warning("No run summary: %s: %s", type(exc).__name__, exc)
            return
        print(text, flush=True)

    @staticmethod
    def summary(run_params: dict[str, Any], pipeline: Pipeline, catalog: Any, seconds: float) -> str:
        """The summary text of one run."""
        names = pipelines_that_ran(pipeline, run_params.get("pipeline_names"))
        env = run_params.get("env") or "local"
        lines = [f"Run summary: {', '.join(names)} (env {env}) in {format_seconds(seconds)}"]
        written = pipeline.all_outputs()
        for name, label in RESULT_FILES.items():
            if name not in catalog:
                continue
            dataset = catalog.get(name)
            where = location(dataset)
            if where is None:
                continue
            if _exists(dataset):  # a dry run (SageMakerRunner dry_run=true) writes nothing
                lines.append(f"{label}: {where}" + ("" if name in written else " (from an earlier run)"))
        if HEADLINE_DATASET in written and _exists(catalog.get(HEADLINE_DATASET)):
            lines += headline(catalog.load(HEADLINE_DATASET))
        return "\n".join(lines)


def _quiet(run_params: dict[str, Any], catalog: Any) -> bool:
    """``quiet`` from ``--params quiet=true`` or from the parameters files."""
    runtime = run_params.get("runtime_params") or {}
    if "quiet" in runtime:
        value = runtime["quiet"]
    elif "params:quiet" in catalog:
        value = catalog.load("params:quiet")
    else:
        return False
    return str(value).strip().lower() in ("true", "1", "yes")
