"""``SageMakerRunner``: runs a Kedro pipeline as SageMaker Processing jobs, one job per group of nodes.

``kedro run --env cloud`` picks it (see ``cli.DEFAULT_RUNNERS``); ``--runner SequentialRunner`` still runs
in-process. ``only_missing_outputs`` and ``--from-nodes``/``--to-nodes``/``--nodes`` keep working because
Kedro filters the pipeline before ``_run`` sees it.

A job group whose nodes all carry the tag ``sharded`` runs as K jobs ``<group>-shard-<i>-of-<K>``, each with
``--params modelling.shard=<i>``; K is ``modelling.shards``, or for ``auto`` the ``shards`` of the
``shard_plan`` dataset, read once the job writing it has finished. A shard job that fails is resubmitted alone
(``shard_retries``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from kedro.io import MemoryDataset, SharedMemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner.runner import AbstractRunner

from capacity_forecaster import settings as project_settings
from capacity_forecaster.canvas.requests import autopilot_wait_s, planned_requests, settings_from_params
from capacity_forecaster.runner.backends import Backend, JobResult, LocalBackend, SageMakerBackend
from capacity_forecaster.runner.bundle import build_bundle, find_project_root, package_name
from capacity_forecaster.runner.config import JobResources, SageMakerSettings, load_settings
from capacity_forecaster.runner.constants import (
    ENV_ROLE_ARN,
    FORWARDED_ENV,
    SHARD_PARAM,
    SHARD_PLAN_DATASET,
    SHARD_TAG,
    SHARDS_PARAM,
)
from capacity_forecaster.runner.jobs import (
    CodeBundle,
    JobGroup,
    JobSpec,
    JobSpecError,
    build_job_specs,
    check_persisted,
    crossing_datasets,
    expand_shards,
    flatten_params,
    group_pipeline,
    is_parameter,
    retry_spec,
    sanitize,
    with_param,
)
from capacity_forecaster.runner.sagemaker_client import S3Store, SageMakerClient, create_request, make_clients

log = logging.getLogger(__name__)
CANVAS_TAG = "canvas"
"""Node tag of the canvas pipeline: its job waits for Autopilot, so its runtime grows by Autopilot's caps."""


class SageMakerRunner(AbstractRunner):
    """Executes each job group of the pipeline as a SageMaker Processing job (or a local stand-in).

    Args:
        is_async: Accepted because the Kedro CLI always passes it; loading happens inside the jobs.
        env: Kedro environment with ``sagemaker.yml``; jobs run in ``settings.kedro_env`` (default: ``env``).
        conf_source: The project's conf folder (default ``<project>/conf``).
        runtime_params: The run's ``--params``; forwarded to every job.
        project_path: Project folder to package (default: found from the current directory).
        settings: Ready settings (skips reading ``sagemaker.yml``; ``overrides`` still apply).
        job_backend: A ready backend object (tests); default: built from ``settings.backend``.
        wheel: A ready-built wheel to ship instead of building one.
        **overrides: Any ``SageMakerSettings`` field, e.g. ``--runner-params dry_run=true,backend=local``.
    """

    def __init__(
        self,
        is_async: bool = False,
        *,
        env: str | None = None,
        conf_source: str | None = None,
        runtime_params: dict[str, Any] | None = None,
        project_path: str | Path | None = None,
        settings: SageMakerSettings | None = None,
        job_backend: Backend | None = None,
        wheel: str | Path | None = None,
        **overrides: Any,
    ):
        super().__init__(is_async=is_async)
        self._env = env or os.getenv("KEDRO_ENV") or "cloud"
        self._project_path = Path(project_path) if project_path else None
        self._conf_source = conf_source
        if settings is None:
            settings = load_settings(self._conf_dir(), self._env, overrides)
        elif overrides:
            settings = SageMakerSettings.from_mapping(dataclasses.asdict(settings), overrides)
        self.settings = settings
        self._runtime_params = dict(runtime_params or {})
        self._backend = job_backend
        self._wheel = Path(wheel) if wheel else None
        self.job_specs: list[JobSpec] = []
        self._canvas_groups: set[str] = set()
        self.results: list[JobResult] = []
        self._groups: list[JobGroup] = []
        self._shards: int | None = 0  # 0: no sharded group; None: auto, read once shard_plan is written
        self._shard_only: int | None = None

    # project paths ------------------------------------------------------------------------------------------
    def _project_root(self) -> Path:
        if self._project_path is None:
            self._project_path = find_project_root()
        return self._project_path

    def _conf_dir(self) -> Path:
        if self._conf_source:
            return Path(self._conf_source)
        return self._project_root() / getattr(project_settings, "CONF_SOURCE", "conf")

    # AbstractRunner API -------------------------------------------------------------------------------------
    def _get_executor(self, max_workers: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sagemaker-job")

    def _get_required_workers_count(self, pipeline: Pipeline) -> int:
        return self.settings.max_concurrent_jobs

    def _run(
        self, pipeline: Pipeline, catalog: Any, hook_manager: Any = None, run_id: str | None = None
    ) -> None:
        s = self.settings
        run_id = sanitize(str(self._runtime_params.get("run_id") or run_id or time.strftime("%Y%m%dT%H%M%S")))
        groups = group_pipeline(pipeline, s.grouping)
        check_persisted(crossing_datasets(pipeline, groups), lambda ds: _in_memory(catalog, ds))
        lost = sorted(ds for ds in pipeline.outputs() if not is_parameter(ds) and _in_memory(catalog, ds))
        if lost:
            log.warning(
                "Pipeline outputs %s are in memory: they exist only inside their job and are discarded", lost
            )

        run_uri = s.run_uri(run_id)
        package = package_name(self._project_root())
        if self._wheel:
            wheel_name = self._wheel.name
        else:
            version = getattr(importlib.import_module(package), "__version__", "0.0.0")
            wheel_name = f"{package}-{version}-py3-none-any.whl"
        bundle = CodeBundle(
            s3_uri=f"{run_uri}/code", package=package, wheel=wheel_name, conf=f"conf-{package}.tar.gz"
        )
        environment = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
        environment.setdefault("AWS_REGION", s.region)
        if s.role_arn:  # the canvas node hands the jobs' role to Autopilot (params canvas.role_arn reads it)
            environment[ENV_ROLE_ARN] = s.role_arn
        canvas = _canvas_params(catalog)
        self._canvas_groups = {g.name for g in groups if CANVAS_TAG in g.tags}
        self._pipeline, self._groups, self._canvas = pipeline, groups, canvas
        self._plan_args = {
            "run_id": run_id,
            "run_uri": run_uri,
            "bundle": bundle,
            "kedro_env": s.kedro_env,
            "runtime_params": self._runtime_params,
            "environment": environment,
            "tags": s.tags,
        }
        sharding = _param(catalog, "modelling", {}) or {}
        self._shard_only = sharding.get("shard")
        self._shards = (
            self._shard_count(pipeline, catalog, sharding.get("shards", 1)) if self._sharded() else 0
        )
        self.job_specs = self._plan()
        log.info(
            "Run %s: %d node(s) in %d SageMaker job(s) (%s grouping, %s backend) under %s",
            run_id,
            len(pipeline.nodes),
            len(self.job_specs),
            s.grouping,
            s.backend,
            run_uri,
        )
        if self._shards != 0:
            log.info(
                "Sharded job group(s) %s: %s",
                ", ".join(g.name for g in groups if g.sharded),
                f"one job per shard, {self._shards} shards"
                if self._shards
                else f"the shard count is read from {SHARD_PLAN_DATASET} once the job writing it finished",
            )
        if s.dry_run:
            requests = self.planned_requests(canvas)
            log.info("dry run: %d request(s) planned, nothing submitted", len(requests))
            print(json.dumps(requests, indent=2))  # noqa: T201 (CLI output)
            return

        backend = self._backend or self._make_backend()
        self._ship_code(bundle)
        self._execute(pipeline, catalog, backend)

    # shards -------------------------------------------------------------------------------------------------
    def _sharded(self) -> bool:
        """Whether a job group of the run is sharded (all its nodes tagged ``sharded``); warns about groups
        with only some nodes tagged, which run as one job processing every shard."""
        for group in self._groups:
            if not group.sharded and SHARD_TAG in group.tags:
                log.warning(
                    "Job group %s runs as one job: only some of its nodes are tagged %r (all must be, for "
                    "one job per shard)",
                    group.name,
                    SHARD_TAG,
                )
        return any(group.sharded for group in self._groups)

    def _shard_count(self, pipeline: Pipeline, catalog: Any, value: Any) -> int | None:
        """K from ``modelling.shards``; ``None`` when it is ``auto`` and the job writing ``shard_plan`` is
        part of this run (K is read once that job has finished).

        Raises:
            JobSpecError: For a value that is neither a positive integer nor ``auto``, or an unreadable plan.
        """
        s = self.settings
        if value == "auto":
            if s.dry_run:
                if s.shards:
                    log.info(
                        "dry run: %s is auto; planning %d shards (--runner-params shards)",
                        SHARDS_PARAM,
                        s.shards,
                    )
                    return s.shards
                log.warning(
                    "dry run: %s is auto, and the shard count is only known once the job writing %s has run; "
                    "planning 1 shard (pass --runner-params shards=K to plan K)",
                    SHARDS_PARAM,
                    SHARD_PLAN_DATASET,
                )
                return 1
            if s.shards:
                log.warning(
                    "--runner-params shards=%d ignored: a real run reads %s", s.shards, SHARD_PLAN_DATASET
                )
            if not any(SHARD_PLAN_DATASET in n.outputs for n in pipeline.nodes):
                return _load_shard_count(catalog)
            if _in_memory(catalog, SHARD_PLAN_DATASET):
                raise JobSpecError(
                    f"{SHARDS_PARAM} is auto, but dataset {SHARD_PLAN_DATASET} is in memory: the runner "
                    "reads it once the job writing it has finished, so declare it in conf/<env>/catalog.yml "
                    f"with an S3 filepath (or set {SHARDS_PARAM} to an integer). Nothing was submitted."
                )
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise JobSpecError(
                f"Parameter {SHARDS_PARAM} must be a positive integer or 'auto', got {value!r} "
                f"(conf/base/parameters_modelling.yml, or --params {SHARDS_PARAM}=K)"
            )
        if s.shards and s.shards != value:
            log.warning("--runner-params shards=%d ignored: %s is %d", s.shards, SHARDS_PARAM, value)
        return value

    def _plan(self) -> list[JobSpec]:
        """Job specs of the run's groups, sharded groups expanded when K is known (one placeholder job per
        sharded group while it is not: it is never submitted, ``_execute`` replans first)."""
        groups = self._groups
        if self._shards:
            groups = expand_shards(groups, self._shards, self._shard_only)
        return build_job_specs(
            groups,
            **self._plan_args,
            resources={g.name: self._resources(g, self._canvas) for g in groups},
        )

    def _placeholder(self, spec: JobSpec) -> bool:
        return self._shards is None and any(g.sharded and g.name == spec.group for g in self._groups)

    def _plan_written(self, done: set[str]) -> bool:
        """Whether the job writing ``shard_plan`` has finished (K can be read)."""
        writers = {n.name for n in self._pipeline.nodes if SHARD_PLAN_DATASET in n.outputs}
        return all(spec.name in done for spec in self.job_specs if writers & set(spec.nodes))

    # steps --------------------------------------------------------------------------------------------------
    def _resources(self, group: JobGroup, canvas: dict[str, Any] | None) -> JobResources:
        """The group's resources from ``sagemaker.yml``; a group running canvas with Autopilot on also gets
        Autopilot's own time caps on top of its runtime, so the job outlives the AutoML and transform jobs."""
        resources = self.settings.resources_for(group.origin, group.tags)  # every shard gets its group's
        if canvas and canvas.get("enabled") and CANVAS_TAG in group.tags:
            wait = autopilot_wait_s(
                float(canvas["max_runtime_s"]),
                float(canvas["wait_grace_s"]),
                float(canvas["transform_timeout_s"]),
                float(canvas["poll_max_interval_s"]),
            )
            resources = resources.with_runtime(resources.max_runtime_s + wait)
            log.info(
                "Job group %s runs canvas with Autopilot: MaxRuntimeInSeconds %d (%d s of Autopilot caps)",
                group.name,
                resources.max_runtime_s,
                wait,
            )
        return resources

    def planned_requests(self, canvas: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """What a run would send: every CreateProcessingJob request in submission order, then the canvas
        job's Autopilot requests when canvas is enabled (names there carry the current time)."""
        planned: list[dict[str, Any]] = [
            {
                "operation": "CreateProcessingJob",
                "group": spec.group,
                "depends_on": list(spec.depends_on),
                "request": create_request(spec, self.settings),
            }
            for spec in self.job_specs
        ]
        canvas_groups = [spec.group for spec in self.job_specs if spec.group in self._canvas_groups]
        if canvas and canvas.get("enabled") and canvas_groups:
            autopilot = settings_from_params(canvas, canvas["horizon"], canvas["country"], self.settings.role)
            planned += [
                {"operation": operation, "group": canvas_groups[0], "request": request}
                for operation, request in planned_requests(autopilot)
            ]
        return planned

    def _make_backend(self) -> Backend:
        clients = make_clients(self.settings.region)
        if self.settings.backend == "local":
            return LocalBackend(S3Store(clients["s3"]), self.settings)
        client = SageMakerClient(
            clients["sagemaker"],
            clients["logs"],
            quota_retry_wait_s=self.settings.quota_retry_wait_s,
            quota_max_wait_s=self.settings.quota_max_wait_s,
        )
        return SageMakerBackend(client, self.settings)

    def _ship_code(self, bundle: CodeBundle) -> None:
        with tempfile.TemporaryDirectory(prefix="cf-bundle-") as tmp:
            local = build_bundle(self._project_root(), self._conf_dir(), Path(tmp), wheel=self._wheel)
            if local.wheel != bundle.wheel:
                raise RuntimeError(f"Built {local.wheel}, expected {bundle.wheel} (version mismatch)")
            keys = S3Store(make_clients(self.settings.region)["s3"]).upload_dir(local.folder, bundle.s3_uri)
        log.info("Uploaded %d code file(s) to %s/", len(keys), bundle.s3_uri)

    def _execute(self, pipeline: Pipeline, catalog: Any, backend: Backend) -> None:  # noqa: C901, PLR0912, PLR0915
        """Submits every job once its dependencies are done, up to ``max_concurrent_jobs`` at a time.

        A shard job that ends Failed is resubmitted alone, under a new name, up to ``shard_retries`` times.
        After a job fails for good no further job starts, except the failed shard's sibling shards (so
        that only it needs a rerun) until a second shard fails; running jobs are waited for, then the first
        error is raised with the commands that resume the run.
        """
        s = self.settings
        pending = list(self.job_specs)
        running: dict[Future, tuple[JobSpec, JobSpec]] = {}  # -> (job as planned, the attempt submitted)
        handed: list[JobSpec] = []  # recorded before the pool sees them, so Ctrl-C can never miss one
        done: set[str] = set()
        attempts: dict[str, int] = {}
        failed: list[JobSpec] = []
        failure: BaseException | None = None
        self.results = []

        def allowed(spec: JobSpec) -> bool:
            if failure is None:
                return True
            siblings = {f.origin for f in failed if f.shard}
            return len(failed) == 1 and bool(spec.shard) and spec.origin in siblings

        def submit(spec: JobSpec, attempt: JobSpec) -> None:
            handed.append(attempt)
            running[pool.submit(backend.run, attempt)] = (spec, attempt)

        pool = self._get_executor(s.max_concurrent_jobs)
        try:
            while pending or running:
                ready = [p for p in pending if all(d in done for d in p.depends_on) and allowed(p)]
                if any(self._placeholder(p) for p in ready) and self._plan_written(done):
                    try:
                        self._shards = _load_shard_count(catalog)
                        self.job_specs = self._plan()
                    except JobSpecError as exc:
                        log.error("%s", exc)
                        failure, pending = exc, []
                        continue
                    started = done | {spec.name for spec, _ in running.values()}
                    pending = [spec for spec in self.job_specs if spec.name not in started]
                    log.info("%s is %d; %d job(s) to go", SHARDS_PARAM, self._shards, len(pending))
                    continue
                for spec in ready:
                    if len(running) >= s.max_concurrent_jobs:
                        break
                    if self._placeholder(spec):
                        continue
                    pending.remove(spec)
                    attempts[spec.name] = 1
                    submit(spec, spec)
                if not running:
                    break
                finished, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec, attempt = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # noqa: BLE001 - kept, re-raised once running jobs end
                        retry = attempts[spec.name] <= s.shard_retries and failure is None
                        if spec.shard and retry and getattr(exc, "status", "") == "Failed":
                            again = retry_spec(spec, attempts[spec.name])
                            log.warning(
                                "Shard %d of %d of job group %s failed (%s); resubmitting it alone as %s "
                                "(retry %d of %d)",
                                spec.shard,
                                spec.shards,
                                spec.origin,
                                getattr(exc, "reason", exc),
                                again.name,
                                attempts[spec.name],
                                s.shard_retries,
                            )
                            attempts[spec.name] += 1
                            submit(spec, again)
                            continue
                        log.error("Job %s failed: %s", attempt.name, exc)
                        failed.append(spec)
                        if failure is None and running:
                            but = " (but the failed shard's siblings)" if spec.shard else ""
                            log.warning(
                                "Submitting no more jobs%s; waiting for %d running job(s)", but, len(running)
                            )
                        failure = failure or exc
                        continue
                    done.add(spec.name)
                    self.results.append(result)
                    log.info(
                        "Job %s %s in %.1f s (%s); %d of %d jobs done",
                        result.name,
                        result.status,
                        result.duration_s,
                        _describe_cost(result),
                        len(done),
                        len(self.job_specs),
                    )
        except KeyboardInterrupt:
            _stop_all([spec for spec in handed if spec.name not in done], backend)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if failure is None and pending:  # cannot happen with topologically ordered specs; never pass silently
            raise RuntimeError(f"Jobs never became ready: {[spec.name for spec in pending]}")
        total = sum(r.cost_usd or 0.0 for r in self.results)
        if any(r.cost_usd is not None for r in self.results):
            log.info("Estimated compute cost of this run: ~$%.4f", total)
        if failure is not None:
            shards = [spec for spec in failed if spec.shard]
            params = with_param(self._runtime_params, "run_id", None)
            hint = resume_hint(
                pipeline, self.job_specs, done, failed_shards=shards, env=self._env, params=params
            )
            log.warning(hint)
            failure.resume_hint = hint
            failure.args = (f"{failure}\n{hint}",)  # the hint is part of the error's message
            raise failure


MAX_SHARD_COMMANDS = 10
"""Unfinished shards listed one rerun command each; more are resumed with ``--from-nodes`` (all shards)."""


def resume_hint(
    pipeline: Pipeline,
    specs: list[JobSpec],
    done: set[str],
    *,
    failed_shards: list[JobSpec] | None = None,
    env: str = "cloud",
    params: dict[str, Any] | None = None,
) -> str:
    """How to resume a run after a job failed: ``--from-nodes`` with the first nodes of every job that did
    not finish although all jobs it depends on did (their inputs are persisted, see ``check_persisted``).
    Everything downstream of those nodes runs again; finished jobs do not.

    When shards failed, each unfinished shard of their groups gets its own command first (``--nodes <its
    nodes> --params ...,modelling.shard=<i>``: the run's other parameters except ``run_id``, so that the new
    jobs get new names), and ``--from-nodes`` covers the jobs after them (more than ``MAX_SHARD_COMMANDS``
    such shards are left to ``--from-nodes``, which reruns every shard of their group).
    """
    if not done and not failed_shards:
        return "No job finished: once the cause is fixed, run the same command again."
    ready = [s for s in specs if s.name not in done and all(d in done for d in s.depends_on)]
    failed_groups = {s.origin for s in failed_shards or []}
    rerun = [s for s in ready if s.shard and s.origin in failed_groups]
    if len(rerun) > MAX_SHARD_COMMANDS:
        rerun = []
    covered = done | {s.name for s in rerun}
    first = _first_nodes(
        pipeline, [s for s in specs if s.name not in covered and all(d in covered for d in s.depends_on)]
    )
    unfinished = sum(len(s.nodes) for s in specs if s.name not in done)
    head = f"{len(done)} of {len(specs)} job(s) finished; {unfinished} node(s) have not run."
    if failed_shards:
        named = (f"shard {s.shard} of {s.shards} of job group {s.origin}" for s in failed_shards)
        head += f" Failed: {', '.join(named)}."
    from_nodes = f'--from-nodes "{",".join(sorted(first))}"'
    if not rerun:
        return (
            f"{head} To resume once the cause is fixed, add (or replace) this argument in your previous "
            f"command: {from_nodes}"
        )
    lines = [f"{head} To resume once the cause is fixed, rerun each unfinished shard alone:"]
    for spec in rerun:
        items = ",".join(flatten_params(with_param(params, SHARD_PARAM, spec.shard)))
        lines.append(f'  kedro run --env {env} --nodes "{",".join(spec.nodes)}" --params "{items}"')
    if first:
        lines.append(f"then add (or replace) this argument in your previous command: {from_nodes}")
    return "\n".join(lines)


def _first_nodes(pipeline: Pipeline, specs: list[JobSpec]) -> set[str]:
    """Nodes of the given jobs that read nothing their own job writes (where each job starts)."""
    by_name = {node.name: node for node in pipeline.nodes}
    first: set[str] = set()
    for spec in specs:
        group = Pipeline([by_name[name] for name in spec.nodes if name in by_name])
        inner = group.all_outputs()
        first |= {n.name for n in group.nodes if not set(n.inputs) & inner}
    return first


def _stop_all(specs: list[JobSpec], backend: Backend) -> None:
    """Ctrl-C: stops every job handed to the pool and not finished (one not yet submitted never will be)."""
    log.warning("Interrupted: stopping %d running job(s)", len(specs))
    for spec in specs:
        backend.stop(spec)


def _describe_cost(result: JobResult) -> str:
    if result.arn.startswith("local:"):
        return "local run, not billed"
    return "cost unknown" if result.cost_usd is None else f"~${result.cost_usd:.4f} estimated"


def _param(catalog: Any, name: str, default: Any = None) -> Any:
    """``params:<name>`` of the run (the --params given on top), or ``default`` when it has none."""
    registered = set(catalog.keys())  # not `in catalog`: that also matches dataset factory patterns
    return catalog.load(f"params:{name}") if f"params:{name}" in registered else default


def _load_shard_count(catalog: Any) -> int:
    """K of ``modelling.shards: auto``: ``shards`` of the ``shard_plan`` dataset (loaded through the catalog).

    Raises:
        JobSpecError: When the dataset cannot be loaded or holds no positive integer ``shards``.
    """
    try:
        plan = catalog.load(SHARD_PLAN_DATASET)
    except Exception as exc:  # noqa: BLE001 - any load error gets the same advice
        raise JobSpecError(
            f"{SHARDS_PARAM} is auto, but dataset {SHARD_PLAN_DATASET} could not be loaded ({exc}). Run the "
            f"model_input job first (it writes {SHARD_PLAN_DATASET}), or set {SHARDS_PARAM} to an integer."
        ) from exc
    shards = plan.get("shards") if isinstance(plan, dict) else None
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise JobSpecError(
            f"Dataset {SHARD_PLAN_DATASET} holds no positive integer 'shards' (got {plan!r}): rerun the "
            f"model_input job, or set {SHARDS_PARAM} to an integer."
        )
    log.info("%s is auto: %d shard(s), from dataset %s", SHARDS_PARAM, shards, SHARD_PLAN_DATASET)
    return shards


def _canvas_params(catalog: Any) -> dict[str, Any] | None:
    """``params:canvas`` plus ``horizon`` and the holiday ``country``; ``None`` when the run has no canvas."""
    registered = set(catalog.keys())  # not `in catalog`: that also matches dataset factory patterns
    if "params:canvas" not in registered:
        return None
    calendar = catalog.load("params:calendar") if "params:calendar" in registered else {}
    horizon = catalog.load("params:horizon") if "params:horizon" in registered else 0
    return {**catalog.load("params:canvas"), "horizon": horizon, "country": calendar.get("country", "")}


def _in_memory(catalog: Any, name: str) -> bool:
    """True when the run's catalog would keep ``name`` only in this process's memory."""
    dataset = catalog.get(name, fallback_to_runtime_pattern=True)
    return dataset is None or isinstance(dataset, MemoryDataset | SharedMemoryDataset)
