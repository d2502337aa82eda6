"""Typed settings of the SageMaker runner, read once from ``conf/<env>/sagemaker.yml`` and checked there.

``--runner-params key=value`` overrides any key for one run (e.g. ``dry_run=true,backend=local``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException, OmegaConfigLoader

from capacity_forecaster import settings as project_settings
from capacity_forecaster.runner.constants import PRICE_PER_HOUR_USD

GROUPINGS = ("namespace", "per_node")
BACKENDS = ("sagemaker", "local")
_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/.+$")
RESOURCE_KEYS = ("instance_type", "instance_count", "volume_size_gb", "max_runtime_s")
IMAGE_COMMANDS = "kedro cloud image build && kedro cloud image push"
NO_IMAGE = "<no image: run `kedro cloud image push` and set CF_SAGEMAKER_IMAGE_URI>"
"""``ImageUri`` shown by a dry run when no image is configured (a real submission is refused instead)."""
NO_ROLE = "<no role: run `kedro cloud setup-role` and set CF_SAGEMAKER_ROLE_ARN>"


class ConfigError(ValueError):
    """Raised when ``sagemaker.yml`` (or a runner override) is missing a value or has a wrong one."""


@dataclass(frozen=True)
class JobResources:
    """Compute of one Processing job: ``ClusterConfig`` and ``StoppingCondition``."""

    instance_type: str
    instance_count: int
    volume_size_gb: int
    max_runtime_s: int

    def problems(self, where: str) -> list[str]:
        """What breaks SageMaker's limits or the project's rules (empty when nothing does)."""
        found = []
        for name in ("instance_count", "volume_size_gb", "max_runtime_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                found.append(f"{where}{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_runtime_s, int) and not 1 <= self.max_runtime_s <= 432000:
            found.append(f"{where}max_runtime_s must be between 1 and 432000 (SageMaker's limit)")
        if not re.match(r"^ml\.[a-z0-9]+\.[a-z0-9]+$", str(self.instance_type)):
            found.append(
                f"{where}instance_type must look like ml.<family>.<size>, got {self.instance_type!r}"
            )
        return found

    def with_runtime(self, seconds: int) -> JobResources:
        return dataclasses.replace(self, max_runtime_s=int(seconds))


@dataclass(frozen=True)
class SageMakerSettings:
    """Everything the runner needs to turn a pipeline into Processing jobs.

    Attributes:
        role_arn: IAM role the jobs run as (needs S3 access to the data and artefact prefixes); only required
            when jobs are really submitted (not for ``dry_run`` or the ``local`` backend).
        s3_prefix: ``s3://bucket/prefix`` under which each run keeps ``runs/<run_id>/`` (code, job reports).
        region: AWS region of the jobs, the image and the bucket.
        image_uri: Container image built from the project's Dockerfile (``kedro cloud image build|push``);
            required to submit jobs (not for ``dry_run`` or the ``local`` backend).
        instance_type: Processing instance type of every job without an entry in ``resources``.
        instance_count: Instances per job; only 1 is accepted: every instance would run the same nodes on
            the same inputs. Work is split into shard *jobs* instead (nodes tagged ``sharded``).
        volume_size_gb: EBS volume per instance.
        max_runtime_s: ``StoppingCondition.MaxRuntimeInSeconds`` of every job.
        resources: Per job group or node tag, any of ``instance_type``, ``instance_count``,
            ``volume_size_gb``, ``max_runtime_s`` over the values above (a group name wins over a tag).
        quota_retry_wait_s: Wait before resubmitting a job refused with ResourceLimitExceeded (quota).
        quota_max_wait_s: Give up resubmitting after this long.
        tags: Extra tags for every job (``project`` and ``run_id`` are always added).
        max_concurrent_jobs: Jobs running at the same time (independent groups and shard jobs alike).
        shard_retries: A shard job that ends Failed is resubmitted alone this many times (other shards and
            finished jobs are not rerun) before the run fails.
        shards: Shard count a dry run assumes when ``modelling.shards`` is ``auto`` (0: unknown, plans 1);
            a real run reads the count from the ``shard_plan`` dataset instead.
        poll_interval_s: First wait between two status checks; grows by ``poll_backoff`` up to
            ``poll_max_interval_s``.
        poll_backoff: Factor applied to the wait while a job's status does not change.
        poll_max_interval_s: Longest wait between two status checks.
        wait_timeout_s: Give up waiting (and stop the job) after this long; 0 means ``max_runtime_s + 600``.
        grouping: ``namespace`` (one job per top-level namespace) or ``per_node`` (one job per node).
        backend: ``sagemaker`` (real Processing jobs) or ``local`` (same job specs as local subprocesses).
        dry_run: Log the job specs and submit nothing.
        log_tail_lines: CloudWatch lines quoted when a job fails.
        kedro_env: Kedro environment the jobs run in.
    """

    role_arn: str
    s3_prefix: str
    region: str = "us-east-1"
    image_uri: str = ""
    instance_type: str = "ml.t3.medium"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 600
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    quota_retry_wait_s: float = 300.0
    quota_max_wait_s: float = 3600.0
    tags: dict[str, str] = field(default_factory=dict)
    max_concurrent_jobs: int = 4
    shard_retries: int = 1
    shards: int = 0
    poll_interval_s: float = 15.0
    poll_backoff: float = 1.5
    poll_max_interval_s: float = 60.0
    wait_timeout_s: float = 0.0
    grouping: str = "namespace"
    backend: str = "sagemaker"
    dry_run: bool = False
    log_tail_lines: int = 30
    kedro_env: str = "cloud"

    def __post_init__(self) -> None:
        problems = []
        role_needed = self.backend == "sagemaker" and not self.dry_run
        if (role_needed or self.role_arn) and not _ROLE_ARN.match(self.role_arn or ""):
            problems.append(
                "role_arn must look like arn:aws:iam::<12 digits>:role/<name> (set CF_SAGEMAKER_ROLE_ARN), "
                f"got {self.role_arn!r}"
            )
        if not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", self.s3_prefix or ""):
            problems.append(
                f"s3_prefix must be s3://<bucket>[/<prefix>] (is CF_BUCKET set?), got {self.s3_prefix!r}"
            )
        if not isinstance(self.max_concurrent_jobs, int) or self.max_concurrent_jobs < 1:
            problems.append(
                f"max_concurrent_jobs must be a positive integer, got {self.max_concurrent_jobs!r}"
            )
        for name in ("shard_retries", "shards"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be an integer >= 0, got {value!r}")
        problems += self._resource_problems()
        if self.quota_retry_wait_s < 0 or self.quota_max_wait_s < 0:
            problems.append("quota_retry_wait_s and quota_max_wait_s must be >= 0")
        if (
            self.poll_interval_s < 0
            or self.poll_max_interval_s < self.poll_interval_s
            or self.poll_backoff < 1
        ):
            problems.append("need 0 <= poll_interval_s <= poll_max_interval_s and poll_backoff >= 1")
        if self.grouping not in GROUPINGS:
            problems.append(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "sagemaker" and not self.dry_run and not self.image_uri:
            problems.append(
                "no container image configured: build and push the project's image with "
                f"`{IMAGE_COMMANDS}`, then export CF_SAGEMAKER_IMAGE_URI=<the URI it prints> "
                "(or check the run first with --runner-params dry_run=true or backend=local)"
            )
        if not isinstance(self.tags, dict) or not all(isinstance(v, str) for v in self.tags.values()):
            problems.append("tags must be a mapping of strings")
        if problems:
            raise ConfigError("Invalid SageMaker runner settings:\n  - " + "\n  - ".join(problems))

    def _resource_problems(self) -> list[str]:
        problems = self.default_resources.problems("")
        for key, values in (self.resources or {}).items():
            unknown = sorted(set(values or {}) - set(RESOURCE_KEYS))
            if unknown:
                problems.append(f"resources.{key}: unknown key(s) {unknown}; known: {list(RESOURCE_KEYS)}")
            else:
                problems += self.resources_for(key, ()).problems(f"resources.{key}.")
        return problems

    @property
    def image(self) -> str:
        """The configured image (a placeholder in a dry run without one)."""
        return self.image_uri or NO_IMAGE

    @property
    def default_resources(self) -> JobResources:
        return JobResources(self.instance_type, self.instance_count, self.volume_size_gb, self.max_runtime_s)

    def resources_for(self, group: str, tags: Iterable[str]) -> JobResources:
        """Resources of a job group: the defaults, then each matching tag's entry, then the group's entry.

        Tags apply in the order of ``resources`` in ``sagemaker.yml``.
        """
        values = dataclasses.asdict(self.default_resources)
        tags = set(tags)
        for key, entry in (self.resources or {}).items():
            if key in tags:
                values.update(entry or {})
        values.update((self.resources or {}).get(group) or {})
        return JobResources(**values)

    def price_per_hour(self, instance_type: str | None = None) -> float | None:
        """USD per instance-hour from the price table, ``None`` for an unknown type."""
        return PRICE_PER_HOUR_USD.get(instance_type or self.instance_type)

    @property
    def role(self) -> str:
        """The configured role (a placeholder in a dry run without one)."""
        return self.role_arn or NO_ROLE

    def wait_timeout_for(self, resources: JobResources) -> float:
        """How long to wait for a job: ``wait_timeout_s``, or its ``max_runtime_s`` + 600 s when that is 0."""
        return self.wait_timeout_s or resources.max_runtime_s + 600.0

    def run_uri(self, run_id: str) -> str:
        """``s3://.../runs/<run_id>`` (no trailing slash)."""
        return f"{self.s3_prefix.rstrip('/')}/runs/{run_id}"

    def estimate_cost(self, seconds: float, resources: JobResources | None = None) -> float | None:
        """Estimated USD for ``seconds`` of one job (all its instances; default resources unless given)."""
        resources = resources or self.default_resources
        price = self.price_per_hour(resources.instance_type)
        return None if price is None else price * resources.instance_count * max(seconds, 0.0) / 3600.0

    @classmethod
    def from_mapping(
        cls, values: dict[str, Any], overrides: dict[str, Any] | None = None
    ) -> SageMakerSettings:
        """Builds settings from the ``sagemaker`` mapping of the config, with per-run overrides on top.

        Raises:
            ConfigError: On unknown keys, missing required keys or invalid values.
        """
        merged = {**(values or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise ConfigError(f"Unknown SageMaker runner setting(s) {unknown}; known: {sorted(known)}")
        missing = [
            n
            for n, f in known.items()
            if n not in merged
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"Missing SageMaker runner setting(s) {missing} (conf/<env>/sagemaker.yml)")
        converted = {name: _convert(name, value, known[name].type) for name, value in merged.items()}
        return cls(**converted)


def _convert(name: str, value: Any, type_name: Any) -> Any:  # noqa: PLR0911
    """Coerces YAML/CLI values (``"600"`` -> 600) so that a typo fails here rather than at submit time."""
    if name == "resources":
        return {str(k): _convert_resources(str(k), v) for k, v in dict(value or {}).items()}
    try:
        if type_name == "int" and not isinstance(value, bool):
            return int(value)
        if type_name == "float" and not isinstance(value, bool):
            return float(value)
        if type_name == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                return value.lower() == "true"
            return bool(value)
        if type_name == "str":
            return "" if value is None else str(value)
        if type_name.startswith("dict"):
            return {str(k): str(v) for k, v in dict(value or {}).items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"SageMaker runner setting {name}={value!r} is not a valid {type_name}") from exc
    return value


def _convert_resources(key: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"resources.{key} must be a mapping of {list(RESOURCE_KEYS)}, got {entry!r}")
    types = {"instance_type": "str", "instance_count": "int", "volume_size_gb": "int", "max_runtime_s": "int"}
    return {k: _convert(f"resources.{key}.{k}", v, types[k]) if k in types else v for k, v in entry.items()}


def load_settings(
    conf_source: str | Path, env: str, overrides: dict[str, Any] | None = None
) -> SageMakerSettings:
    """Reads ``sagemaker*.yml`` of ``env`` (over ``base``) with the project's config loader settings.

    Args:
        conf_source: The project's conf folder (or archive).
        env: Kedro environment holding ``sagemaker.yml`` (``cloud``).
        overrides: Per-run values from ``--runner-params``.
    """
    loader_args = dict(getattr(project_settings, "CONFIG_LOADER_ARGS", {}) or {})
    patterns = dict(loader_args.pop("config_patterns", {}) or {})
    patterns["sagemaker"] = ["sagemaker*", "sagemaker*/**"]
    loader = OmegaConfigLoader(conf_source=str(conf_source), env=env, config_patterns=patterns, **loader_args)
    try:
        values = loader["sagemaker"]
    except (KeyError, MissingConfigException):
        values = {}
    if not values and not overrides:
        raise ConfigError(f"No SageMaker runner settings found: expected {conf_source}/{env}/sagemaker.yml")
    values = dict(values.get("sagemaker", values))
    values.setdefault("kedro_env", env)
    return SageMakerSettings.from_mapping(values, overrides)
