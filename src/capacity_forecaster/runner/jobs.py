"""Pure translation of a Kedro pipeline into SageMaker Processing job specs (no AWS imports).

A *group* is a set of nodes that runs in one job: by default a top-level namespace (every pipeline of the
project is namespaced by its own name, so ``risk_analysis`` is one job), or one node per job (``per_node``).
A group whose nodes all carry the tag ``sharded`` becomes one group per shard (``expand_shards``):
``prophet-shard-3-of-8`` runs the same nodes with ``--params modelling.shard=3``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kedro.pipeline import Pipeline

from capacity_forecaster.runner.config import JobResources
from capacity_forecaster.runner.constants import (
    CODE_DIR,
    CONTAINER_ARG_MAX_LEN,
    CONTAINER_ARGS_MAX,
    CONTAINER_ROOT,
    ENTRYPOINT_FILE,
    ENV_ENTRIES_MAX,
    ENV_JOB_NAME,
    ENV_PYTHONPATH,
    ENV_RUN_ID,
    ENV_TELEMETRY,
    ENV_VALUE_MAX_LEN,
    JOB_NAME_MAX,
    META_DIR,
    SHARD_PARAM,
    SHARD_TAG,
    SITE_DIR,
    TAG_VALUE_MAX_LEN,
)
from capacity_forecaster.sharding import shard_name

PROJECT_TAG = "capacity-forecaster"
_SHARD_SUFFIX = re.compile(r"(?P<head>.*?)(?P<suffix>-shard-\d+-of-\d+(-retry-\d+)?)?")


def _split_shard_suffix(name: str) -> tuple[str, str]:
    """``name`` without and with only its ``-shard-<i>-of-<K>[-retry-<n>]`` ending ("" when it has none)."""
    match = _SHARD_SUFFIX.fullmatch(name)
    return match["head"], match["suffix"] or ""


class GroupingError(ValueError):
    """Raised when the job groups cannot be ordered (a cycle between namespaces)."""


class NonPersistedDatasetError(ValueError):
    """Raised before anything is submitted when an in-memory dataset would have to cross a job boundary."""


class JobSpecError(ValueError):
    """Raised when a job spec would break a SageMaker API limit."""


@dataclass(frozen=True)
class JobGroup:
    """Nodes that run together in one job, and the groups whose outputs they need.

    ``sharded``: every node carries the tag ``sharded`` (the group is expanded into shard groups);
    ``shard``/``shards``: this group is shard ``shard`` of ``shards`` (0 for a group that is not a shard).
    """

    name: str
    nodes: tuple[str, ...]
    depends_on: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    sharded: bool = False
    shard: int = 0
    shards: int = 0

    @property
    def origin(self) -> str:
        """The group a shard group was expanded from (its own name for any other group)."""
        return self.name.removesuffix(f"-{shard_name(self.shard, self.shards)}") if self.shard else self.name


@dataclass(frozen=True)
class JobInput:
    """An S3 prefix copied into the container before the command starts."""

    name: str
    s3_uri: str
    local_path: str


@dataclass(frozen=True)
class JobOutput:
    """A container folder uploaded to S3 when the command ends."""

    name: str
    local_path: str
    s3_uri: str


@dataclass(frozen=True)
class JobSpec:
    """One Processing job: what both backends execute, word for word."""

    name: str
    group: str
    nodes: tuple[str, ...]
    depends_on: tuple[str, ...]
    command: tuple[str, ...]
    environment: dict[str, str]
    inputs: tuple[JobInput, ...]
    outputs: tuple[JobOutput, ...]
    tags: dict[str, str] = field(default_factory=dict)
    resources: JobResources = JobResources("ml.t3.medium", 1, 30, 600)
    shard: int = 0
    shards: int = 0

    @property
    def origin(self) -> str:
        """The group a shard job was expanded from (its own group for any other job)."""
        return (
            self.group.removesuffix(f"-{shard_name(self.shard, self.shards)}") if self.shard else self.group
        )


@dataclass(frozen=True)
class CodeBundle:
    """File names of the shipped code, all in one S3 folder that becomes ``CODE_DIR`` in the container."""

    s3_uri: str
    package: str
    wheel: str
    conf: str
    entrypoint: str = ENTRYPOINT_FILE


# Names ------------------------------------------------------------------------------------------------------
def sanitize(text: str) -> str:
    """Every character outside ``[a-zA-Z0-9-]`` becomes a hyphen; no leading or trailing hyphen."""
    return re.sub(r"[^a-zA-Z0-9-]", "-", text).strip("-")


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _fit_name(head: str, suffix: str, key: str, force_hash: bool = False) -> str:
    """``head + suffix`` within SageMaker's 63 characters: a head too long (or ``force_hash``) is cut and ends
    with a hash of ``key``; the suffix (``-shard-<i>-of-<K>``) is always kept whole."""
    if force_hash or len(head) + len(suffix) > JOB_NAME_MAX:
        head = f"{head[: JOB_NAME_MAX - len(suffix) - 9].rstrip('-')}-{_short_hash(key)}"
    return head + suffix


def job_name(run_id: str, group: str, force_hash: bool = False) -> str:
    """``cf-<run_id>-<group>``, valid for SageMaker: ``[a-zA-Z0-9-]``, at most 63 characters.

    A name that is too long is cut and ends with a hash of the full name, so it stays unique; a shard
    group's ``-shard-<i>-of-<K>`` survives the cut (the hash comes before it).
    """
    origin, suffix = _split_shard_suffix(group)
    return _fit_name(sanitize(f"cf-{run_id}-{origin}"), suffix, f"{run_id}/{origin}", force_hash)


def job_names(run_id: str, groups: Iterable[str]) -> dict[str, str]:
    """Job name per group, made unique when two groups sanitise to the same name (``a.b`` and ``a_b``)."""
    groups = list(groups)
    names = {g: job_name(run_id, g) for g in groups}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    for group, name in names.items():
        if counts[name] > 1:
            names[group] = job_name(run_id, group, force_hash=True)
    return names


def retry_job_name(name: str, attempt: int) -> str:
    """The name of a shard job's ``attempt``-th retry (SageMaker never reuses a name):
    ``<name>-retry-<attempt>``, cut like ``job_name`` so that the shard part stays."""
    head, suffix = _split_shard_suffix(name)
    return _fit_name(head, re.sub(r"-retry-\d+$", "", suffix) + f"-retry-{attempt}", name)


# Grouping ---------------------------------------------------------------------------------------------------
def group_pipeline(pipeline: Pipeline, grouping: str = "namespace") -> list[JobGroup]:
    """Splits the pipeline into job groups, in an order where every group comes after the groups it needs.

    ``namespace`` groups are Kedro's ``pipeline.group_nodes_by("namespace")`` (top-level namespace; a node
    without one is its own group), except that a namespace whose nodes sit on both sides of another group
    (``modelling`` preparing inputs for ``prophet`` and then evaluating its forecasts) is split into
    consecutive stages ``modelling``, ``modelling-2``, ... so that the jobs can run in order. When Kedro's
    groups already form no cycle, the result is exactly Kedro's grouping.

    Args:
        pipeline: The (already filtered) pipeline of the run.
        grouping: ``namespace`` or ``per_node`` (one job per node).

    Raises:
        GroupingError: For an unknown grouping.
    """
    if grouping == "per_node":
        groups = [
            JobGroup(g.name, tuple(g.nodes), tuple(sorted(set(g.dependencies))))
            for g in pipeline.group_nodes_by("none")
        ]
    elif grouping == "namespace":
        groups = _namespace_stages(pipeline)
    else:
        raise GroupingError(f"Unknown grouping {grouping!r}; use 'namespace' or 'per_node'")
    node_tags = {n.name: n.tags for n in pipeline.nodes}
    return topological_order(
        dataclasses.replace(
            g,
            tags=tuple(sorted(set().union(*(node_tags[n] for n in g.nodes)))),
            sharded=all(SHARD_TAG in node_tags[n] for n in g.nodes),
        )
        for g in groups
    )


def expand_shards(groups: list[JobGroup], shards: int, only: int | None = None) -> list[JobGroup]:
    """Replaces every sharded group by its shard groups ``<group>-shard-<i>-of-<shards>``.

    A shard group has the nodes and dependencies of its group; a group that depended on a sharded group
    depends on all its shard groups. Order is kept (shards in index order where the group was).

    Args:
        groups: Ordered job groups (``group_pipeline``).
        shards: The shard count K.
        only: Expand into this one shard only (a run with ``modelling.shard=i``: rerunning one shard).

    Raises:
        JobSpecError: For a count below 1 or a selected shard outside 1..K.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise JobSpecError(f"The shard count must be a positive integer, got {shards!r}")
    if only is not None and not 1 <= only <= shards:
        raise JobSpecError(f"{SHARD_PARAM}={only} is outside 1..{shards} (the run's shard count)")
    indices = [only] if only is not None else range(1, shards + 1)
    replaced: dict[str, tuple[str, ...]] = {}
    expanded: list[JobGroup] = []
    for group in groups:
        depends_on = tuple(d for dep in group.depends_on for d in replaced.get(dep, (dep,)))
        if not group.sharded:
            expanded.append(dataclasses.replace(group, depends_on=depends_on))
            continue
        shard_groups = [
            dataclasses.replace(
                group,
                name=f"{group.name}-{shard_name(i, shards)}",
                depends_on=depends_on,
                shard=i,
                shards=shards,
            )
            for i in indices
        ]
        replaced[group.name] = tuple(g.name for g in shard_groups)
        expanded.extend(shard_groups)
    return expanded


def _namespace_stages(pipeline: Pipeline) -> list[JobGroup]:
    """Namespace groups, each split into as few consecutive stages as keep the group graph acyclic.

    Nodes are visited in topological order. A node joins the latest stage of its namespace unless a path
    leads from that stage to the node through another group (joining would close a cycle); then it opens the
    next stage. ``reach[n]`` holds the groups with a path to node ``n``; ``detour[n]`` those whose path to
    ``n`` leaves the group on the way.
    """
    parents = pipeline.node_dependencies
    group_of: dict[str, str] = {}
    latest: dict[str, str] = {}
    stages: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    reach: dict[str, set[str]] = {}
    detour: dict[str, set[str]] = {}
    for node in pipeline.nodes:
        key = node.namespace.split(".")[0] if node.namespace else node.name
        node_detour: set[str] = set()
        node_reach: set[str] = set()
        for parent in parents[node]:
            node_detour |= detour[parent.name] | (reach[parent.name] - {group_of[parent.name]})
            node_reach |= reach[parent.name]
        group = latest.get(key)
        if group is None or group in node_detour:
            stages[key] = stages.get(key, 0) + 1
            group = key if stages[key] == 1 else f"{key}-{stages[key]}"
            latest[key] = group
            members[group] = []
        members[group].append(node.name)
        group_of[node.name] = group
        reach[node.name] = node_reach | {group}
        detour[node.name] = node_detour
    depends: dict[str, set[str]] = {g: set() for g in members}
    for node in pipeline.nodes:
        for parent in parents[node]:
            if group_of[parent.name] != group_of[node.name]:
                depends[group_of[node.name]].add(group_of[parent.name])
    return [JobGroup(g, tuple(nodes), tuple(sorted(depends[g]))) for g, nodes in members.items()]


def topological_order(groups: Iterable[JobGroup]) -> list[JobGroup]:
    """Orders groups so dependencies come first (stable: otherwise the input order is kept).

    Raises:
        GroupingError: On a cycle, naming the groups in it.
    """
    groups = list(groups)
    by_name = {g.name: g for g in groups}
    done: list[JobGroup] = []
    placed: set[str] = set()
    remaining = list(groups)
    while remaining:
        ready = [g for g in remaining if all(d in placed or d not in by_name for d in g.depends_on)]
        if not ready:
            stuck = sorted(g.name for g in remaining)
            raise GroupingError(
                f"Job groups depend on each other in a cycle: {stuck}. A namespace's nodes must be able to "
                "run "
                "in one job; move the node that closes the loop, or use grouping=per_node."
            )
        for g in ready:
            done.append(g)
            placed.add(g.name)
        remaining = [g for g in remaining if g.name not in placed]
    return done


# Dataset checks ---------------------------------------------------------------------------------------------
def is_parameter(dataset: str) -> bool:
    return dataset == "parameters" or dataset.startswith("params:")


def crossing_datasets(pipeline: Pipeline, groups: Iterable[JobGroup]) -> dict[str, set[str]]:
    """Datasets a job reads but another job (or the submitting process) provides.

    Returns:
        ``{dataset: groups that read it}`` for every non-parameter dataset crossing a job boundary, including
        the pipeline's free inputs (which no job produces).
    """
    group_of = {node: g.name for g in groups for node in g.nodes}
    producer = {out: group_of[n.name] for n in pipeline.nodes for out in n.outputs}
    crossing: dict[str, set[str]] = {}
    for node in pipeline.nodes:
        for ds in node.inputs:
            if is_parameter(ds):
                continue
            if producer.get(ds) != group_of[node.name]:
                crossing.setdefault(ds, set()).add(group_of[node.name])
    return crossing


def check_persisted(crossing: Mapping[str, set[str]], is_in_memory: Callable[[str], bool]) -> None:
    """Refuses in-memory datasets that would cross a job boundary.

    Args:
        crossing: Result of ``crossing_datasets``.
        is_in_memory: Tells whether the run's catalog holds a dataset only in memory.

    Raises:
        NonPersistedDatasetError: Listing every such dataset and the groups reading it.
    """
    bad = {ds: groups for ds, groups in crossing.items() if is_in_memory(ds)}
    if bad:
        lines = "\n".join(
            f"  - {ds} (read by job group(s) {', '.join(sorted(g))})" for ds, g in sorted(bad.items())
        )
        raise NonPersistedDatasetError(
            "These datasets are in memory but cross a job boundary, so the reading job would not find them:\n"
            f"{lines}\nDeclare them in conf/<env>/catalog.yml with an S3 filepath, or run the producing and "
            "reading nodes in one namespace. Nothing was submitted."
        )


# Job specs --------------------------------------------------------------------------------------------------
def with_param(params: Mapping[str, Any] | None, dotted: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``params`` with ``dotted`` (``a.b``) set to ``value``; a flat ``"a.b"`` key that
    would repeat it on the command line is dropped (``value=None`` just removes it)."""
    copy: dict[str, Any] = {k: v for k, v in (params or {}).items() if k != dotted}
    head, _, rest = dotted.partition(".")
    if rest:
        inner = copy.get(head)
        inner = with_param(inner if isinstance(inner, Mapping) else {}, rest, value)
        if inner:
            copy[head] = inner
        else:
            copy.pop(head, None)
    elif value is not None:
        copy[head] = value
    return copy


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}, "c": "x"}`` -> ``["a.b=1", "c=x"]`` for ``kedro run --params``.

    Raises:
        JobSpecError: If a value contains a comma (``--params`` splits on commas).
    """
    items: list[str] = []
    for key, value in (params or {}).items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(flatten_params(value, f"{full}."))
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "," in text:
            raise JobSpecError(f"Runtime parameter {full}={text!r} contains a comma and cannot be forwarded")
        items.append(f"{full}={text}")
    return items


def build_job_specs(
    groups: list[JobGroup],
    *,
    run_id: str,
    run_uri: str,
    bundle: CodeBundle,
    kedro_env: str,
    runtime_params: Mapping[str, Any] | None = None,
    environment: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    resources: Mapping[str, JobResources] | None = None,
) -> list[JobSpec]:
    """One ``JobSpec`` per group, in the groups' order.

    Args:
        groups: Ordered job groups (``group_pipeline``).
        run_id: Run id (already sanitised) used in names, tags, paths and ``--params run_id=...``.
        run_uri: ``s3://.../runs/<run_id>``.
        bundle: Where the wheel, conf tarball and entrypoint are.
        kedro_env: Environment the jobs run in.
        runtime_params: The run's ``--params``, forwarded to every job (a shard job gets
            ``modelling.shard=<i>`` on top).
        environment: Extra environment (e.g. ``CF_BUCKET``), forwarded to every job.
        tags: Extra tags.
        resources: Instance type, count, volume and runtime per group name
            (``SageMakerSettings.resources_for``); a group without an entry gets ``JobSpec``'s default.

    Raises:
        JobSpecError: If an argument, environment value or tag breaks a SageMaker limit, or a group asks for
            more than one instance.
    """
    names = job_names(run_id, [g.name for g in groups])
    params = {"run_id": run_id, **(runtime_params or {})}  # a run_id given by the user is forwarded as given
    specs = []
    for group in groups:
        name = names[group.name]
        param_args = flatten_params(with_param(params, SHARD_PARAM, group.shard) if group.shard else params)
        command = [
            "python3",
            f"{CODE_DIR}/{bundle.entrypoint}",
            "--wheel",
            f"{CODE_DIR}/{bundle.wheel}",
            "--site",
            SITE_DIR,
            "--report",
            f"{META_DIR}/{name}.json",
            "--",
            "--package",
            bundle.package,
            "--env",
            kedro_env,
            "--conf-source",
            f"{CODE_DIR}/{bundle.conf}",
            "--runner",
            "SequentialRunner",
        ]
        for node in group.nodes:
            command += ["--node", node]
        for item in param_args:
            command += ["--param", item]
        env = {
            **(environment or {}),
            ENV_PYTHONPATH: SITE_DIR,
            ENV_TELEMETRY: "true",
            ENV_RUN_ID: run_id,
            ENV_JOB_NAME: name,
        }
        job_tags = {**(tags or {}), "project": PROJECT_TAG, "run_id": run_id, "group": group.name}
        spec = JobSpec(
            name=name,
            group=group.name,
            nodes=group.nodes,
            depends_on=tuple(names[d] for d in group.depends_on if d in names),
            command=tuple(command),
            environment=env,
            inputs=(JobInput("code", f"{bundle.s3_uri.rstrip('/')}/", CODE_DIR),),
            outputs=(JobOutput("meta", META_DIR, f"{run_uri}/jobs/"),),
            tags=job_tags,
            **({"resources": resources[group.name]} if resources and group.name in resources else {}),
            shard=group.shard,
            shards=group.shards,
        )
        validate_spec(spec)
        specs.append(spec)
    return specs


def validate_spec(spec: JobSpec) -> None:
    """Checks the limits botocore does not check client side (lengths, counts).

    Raises:
        JobSpecError: Naming the offending value.
    """
    if len(spec.command) > CONTAINER_ARGS_MAX:
        raise JobSpecError(
            f"Job {spec.name} needs {len(spec.command)} container arguments (SageMaker allows "
            f"{CONTAINER_ARGS_MAX}): too many nodes in group {spec.group!r}; use grouping=per_node"
        )
    for arg in spec.command:
        if len(arg) > CONTAINER_ARG_MAX_LEN:
            raise JobSpecError(
                f"Job {spec.name}: argument longer than {CONTAINER_ARG_MAX_LEN} chars: {arg[:60]}..."
            )
    if len(spec.environment) > ENV_ENTRIES_MAX:
        raise JobSpecError(f"Job {spec.name}: more than {ENV_ENTRIES_MAX} environment variables")
    for key, value in spec.environment.items():
        if len(value) > ENV_VALUE_MAX_LEN:
            raise JobSpecError(
                f"Job {spec.name}: environment value of {key} longer than {ENV_VALUE_MAX_LEN} chars"
            )
    for key, value in spec.tags.items():
        if len(value) > TAG_VALUE_MAX_LEN:
            raise JobSpecError(f"Job {spec.name}: tag {key} longer than {TAG_VALUE_MAX_LEN} chars")
    if spec.resources.instance_count > 1:
        raise JobSpecError(
            f"Job group {spec.group!r} asks for instance_count={spec.resources.instance_count}: every "
            "instance would run the same nodes on the same (FullyReplicated) inputs and overwrite the same "
            "S3 keys, at N times the cost. Set instance_count: 1 in conf/cloud/sagemaker.yml. Shards are "
            "separate jobs, not instances: nodes tagged `sharded` run as one job per shard "
            "(`modelling.shards: K`, up to max_concurrent_jobs at once); a bigger instance_type speeds up "
            "one job."
        )
    if not spec.inputs[0].local_path.startswith(CONTAINER_ROOT):
        raise JobSpecError(f"Job {spec.name}: inputs must live under {CONTAINER_ROOT}")


def retry_spec(spec: JobSpec, attempt: int) -> JobSpec:
    """The same job under its retry name (``retry_job_name``): same nodes, parameters and resources."""
    name = retry_job_name(spec.name, attempt)
    command = tuple(arg.replace(f"/{spec.name}.json", f"/{name}.json") for arg in spec.command)
    return dataclasses.replace(
        spec, name=name, command=command, environment={**spec.environment, ENV_JOB_NAME: name}
    )
