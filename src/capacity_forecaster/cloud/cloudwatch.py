"""An AWS fleet as the project's raw data: EC2 instances and their CloudWatch metrics in the contract schema
(``raw_server_metrics``, ``server_inventory``), for ``kedro cloud pull-metrics``.

- Instances: DescribeInstances (running or stopped, filtered by tags and/or ids); vCPUs, memory and the
  documented baseline network and EBS bandwidth: DescribeInstanceTypes; hourly price: the shipped price table.
- Metrics: GetMetricData, at most 500 queries and 100,800 data points per request (botocore's service model),
  ``NextToken`` pages followed, throttling retried (botocore adaptive retries, then our own backoff).

  ======================  =========================================================================
  cpu_p95                 AWS/EC2 CPUUtilization (%)
  memory_p95              CWAgent mem_used_percent (%), only when the CloudWatch agent publishes it
  disk_io_p95             AWS/EC2 EBSReadBytes + EBSWriteBytes per second, % of the EBS baseline
  network_p95             AWS/EC2 max(NetworkIn, NetworkOut) per second, % of the network baseline
  ======================  =========================================================================

  Byte counters are per sample (300 s with basic monitoring, 60 s with detailed monitoring), so the chosen
  statistic of a period divided by the sample length is a rate. A metric without data points stays empty and
  is reported per instance, never filled in.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
import pandas as pd
from botocore.config import Config
from botocore.exceptions import ClientError

from capacity_forecaster.schema import METRICS

logger = logging.getLogger(__name__)

MAX_QUERIES_PER_REQUEST = 500
"""GetMetricData: 'A single GetMetricData call can include as many as 500 MetricDataQuery structures.'"""
MAX_DATAPOINTS_PER_REQUEST = 100_800
"""GetMetricData: '... a total of as many as 100,800 data points' (also the default MaxDatapoints)."""
MAX_INSTANCE_TYPES_PER_REQUEST = 100
"""DescribeInstanceTypes accepts at most 100 instance types per call."""
STATISTICS: tuple[str, ...] = ("p95", "Maximum", "Average")
"""Statistics ``--statistic`` accepts."""
RETENTION_DAYS: dict[int, int] = {60: 15, 300: 63, 3600: 455}
"""Smallest period (s) -> days CloudWatch keeps data at that resolution (GetMetricData documentation)."""
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
    }
)
"""Error codes that mean 'slow down': retried with backoff after botocore's own retries."""
RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})
"""botocore retries for EC2 and CloudWatch: exponential backoff plus client-side rate limiting."""

_DETAILED_SAMPLE_S, _BASIC_SAMPLE_S = 60, 300
_AGENT_NAMESPACE, _AGENT_MEMORY = "CWAgent", "mem_used_percent"
# Query field -> (namespace, metric name); memory's dimensions come from ListMetrics (the agent may add some).
_FIELDS: dict[str, tuple[str, str]] = {
    "cpu": ("AWS/EC2", "CPUUtilization"),
    "memory": (_AGENT_NAMESPACE, _AGENT_MEMORY),
    "disk_read": ("AWS/EC2", "EBSReadBytes"),
    "disk_write": ("AWS/EC2", "EBSWriteBytes"),
    "network_in": ("AWS/EC2", "NetworkIn"),
    "network_out": ("AWS/EC2", "NetworkOut"),
}


class PullMetricsError(RuntimeError):
    """An EC2 or CloudWatch call failed: names the call, the service's code and reason, and what to do."""


@dataclass(frozen=True)
class Instance:
    """One EC2 instance from DescribeInstances."""

    instance_id: str
    instance_type: str
    availability_zone: str
    state: str
    detailed_monitoring: bool
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceType:
    """What DescribeInstanceTypes documents about a type (bandwidths are baselines; ``None`` when absent)."""

    name: str
    vcpus: int
    memory_gb: float
    network_baseline_gbps: float | None
    ebs_baseline_mbytes_per_s: float | None


@dataclass(frozen=True)
class MetricQuery:
    """One GetMetricData metric query: which instance and field it is for, and the metric to read."""

    instance_id: str
    field: str
    namespace: str
    metric_name: str
    dimensions: tuple[tuple[str, str], ...]


@dataclass
class PullResult:
    """What ``pull_metrics`` read: the two contract datasets and what is missing, per instance and metric."""

    raw_server_metrics: pd.DataFrame
    server_inventory: pd.DataFrame
    missing: pd.DataFrame
    requests: int


def make_clients(region: str | None) -> tuple[Any, Any]:
    """EC2 and CloudWatch clients for ``region`` (boto3's credential chain, ``AWS_ENDPOINT_URL`` honoured)."""
    session = boto3.session.Session()
    return (
        session.client("ec2", region_name=region, config=RETRY_CONFIG),
        session.client("cloudwatch", region_name=region, config=RETRY_CONFIG),
    )


def _service_error(call: str, exc: ClientError) -> PullMetricsError:
    error = exc.response.get("Error", {})
    code, reason = error.get("Code", "?"), error.get("Message", str(exc))
    hint = (
        "the identity in use lacks this permission: attach docs/iam/pull-metrics-policy.json"
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}
        else "retry later; if it persists, check the request in the AWS documentation for this call"
    )
    return PullMetricsError(f"{call} failed: {code}: {reason}. What to do: {hint}.")


def _call(
    call: str, func: Callable[..., dict], sleep: Callable[[float], None], retries: int = 5, **kwargs: Any
) -> dict:
    """Calls ``func(**kwargs)``; a throttling error left after botocore's own retries is retried up to
    ``retries`` more times with exponential backoff (1, 2, 4, ... s). Other service errors and throttling that
    outlasts the retries become a ``PullMetricsError`` with the service's reason."""
    attempt = 0
    while True:
        try:
            return func(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in THROTTLING_CODES or attempt >= retries:
                raise _service_error(call, exc) from exc
            wait = 2.0**attempt
            logger.warning("%s throttled (%s); retrying in %.0f s", call, code, wait)
            sleep(wait)
            attempt += 1


def parse_tags(pairs: Iterable[str]) -> dict[str, list[str]]:
    """``["team=web", "team=api", "env=prod"]`` -> ``{"team": ["web", "api"], "env": ["prod"]}``.

    Values of one key are alternatives; different keys must all match (as in EC2 filters).

    Raises:
        ValueError: If a pair is not ``KEY=VALUE``.
    """
    tags: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--tag {pair!r}: expected KEY=VALUE, e.g. --tag team=web")
        tags.setdefault(key.strip(), []).append(value.strip())
    return tags


def list_instances(
    ec2: Any,
    tags: dict[str, list[str]] | None = None,
    instance_ids: Sequence[str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Instance]:
    """Running and stopped instances matching every tag (and ``instance_ids`` when given), sorted by id."""
    filters = [{"Name": "instance-state-name", "Values": ["running", "stopped"]}]
    filters += [{"Name": f"tag:{key}", "Values": values} for key, values in sorted((tags or {}).items())]
    kwargs: dict[str, Any] = {"Filters": filters}
    if instance_ids:
        kwargs["InstanceIds"] = list(instance_ids)
    instances = []
    while True:
        page = _call("ec2:DescribeInstances", ec2.describe_instances, sleep, **kwargs)
        for reservation in page.get("Reservations", []):
            for item in reservation.get("Instances", []):
                instances.append(
                    Instance(
                        instance_id=item["InstanceId"],
                        instance_type=item["InstanceType"],
                        availability_zone=item.get("Placement", {}).get("AvailabilityZone", ""),
                        state=item.get("State", {}).get("Name", ""),
                        detailed_monitoring=item.get("Monitoring", {}).get("State") == "enabled",
                        tags={t["Key"]: t["Value"] for t in item.get("Tags", [])},
                    )
                )
        if not page.get("NextToken"):
            return sorted(instances, key=lambda i: i.instance_id)
        kwargs["NextToken"] = page["NextToken"]


def describe_instance_types(
    ec2: Any, names: Iterable[str], sleep: Callable[[float], None] = time.sleep
) -> dict[str, InstanceType]:
    """vCPUs, memory and baseline bandwidths of each type (up to 100 types per DescribeInstanceTypes call)."""
    wanted = sorted(set(names))
    types: dict[str, InstanceType] = {}
    for start in range(0, len(wanted), MAX_INSTANCE_TYPES_PER_REQUEST):
        kwargs: dict[str, Any] = {"InstanceTypes": wanted[start : start + MAX_INSTANCE_TYPES_PER_REQUEST]}
        while True:
            page = _call("ec2:DescribeInstanceTypes", ec2.describe_instance_types, sleep, **kwargs)
            for item in page.get("InstanceTypes", []):
                cards = item.get("NetworkInfo", {}).get("NetworkCards", [])
                network = sum(c.get("BaselineBandwidthInGbps") or 0.0 for c in cards) or None
                ebs = item.get("EbsInfo", {}).get("EbsOptimizedInfo", {}).get("BaselineThroughputInMBps")
                types[item["InstanceType"]] = InstanceType(
                    name=item["InstanceType"],
                    vcpus=int(item["VCpuInfo"]["DefaultVCpus"]),
                    memory_gb=item["MemoryInfo"]["SizeInMiB"] / 1024,
                    network_baseline_gbps=network,
                    ebs_baseline_mbytes_per_s=ebs,
                )
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
    return types


def find_memory_dimensions(
    cloudwatch: Any, instance_ids: Iterable[str], sleep: Callable[[float], None] = time.sleep
) -> dict[str, tuple[tuple[str, str], ...]]:
    """The dimensions under which the CloudWatch agent publishes ``mem_used_percent`` for each instance.

    The agent often appends ImageId, InstanceType or AutoScalingGroupName to InstanceId, and GetMetricData
    needs the exact set: ListMetrics tells which. Instances it does not list are left out (their memory query
    then uses InstanceId alone; ListMetrics only lists metrics with data in the past two weeks).
    """
    wanted = set(instance_ids)
    found: dict[str, tuple[tuple[str, str], ...]] = {}
    kwargs: dict[str, Any] = {
        "Namespace": _AGENT_NAMESPACE,
        "MetricName": _AGENT_MEMORY,
        "Dimensions": [{"Name": "InstanceId"}],
    }
    while True:
        page = _call("cloudwatch:ListMetrics", cloudwatch.list_metrics, sleep, **kwargs)
        for metric in page.get("Metrics", []):
            dims = tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions", [])))
            instance_id = dict(dims).get("InstanceId")
            if instance_id in wanted and (instance_id not in found or len(dims) < len(found[instance_id])):
                found[instance_id] = dims
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


def build_queries(
    instances: Sequence[Instance], memory_dimensions: dict[str, tuple[tuple[str, str], ...]]
) -> list[MetricQuery]:
    """Six queries per instance (cpu, memory, EBS read/write bytes, network in/out), in instance order."""
    queries = []
    for instance in instances:
        own = (("InstanceId", instance.instance_id),)
        for name, (namespace, metric) in _FIELDS.items():
            dims = memory_dimensions.get(instance.instance_id, own) if name == "memory" else own
            queries.append(MetricQuery(instance.instance_id, name, namespace, metric, dims))
    return queries


def check_window(days: int, period: int) -> None:
    """Checks ``days`` and ``period`` against what CloudWatch keeps.

    Raises:
        ValueError: Period not a positive multiple of 60, or older data than is retained at that period.
    """
    if period < 60 or period % 60:
        raise ValueError(f"--period {period}: must be a multiple of 60 seconds (60, 300, 3600, ...)")
    if days < 1:
        raise ValueError(f"--days {days}: must be at least 1")
    retained = max(d for p, d in RETENTION_DAYS.items() if p <= period)
    if days > retained:
        longer = [p for p, d in sorted(RETENTION_DAYS.items()) if d >= days]
        fix = f"use --period {longer[0]} or more" if longer else "CloudWatch keeps at most 455 days"
        raise ValueError(
            f"--days {days} with --period {period}: CloudWatch keeps {period}-second data for {retained} "
            f"days; {fix}"
        )


def plan_batches(n_queries: int, days: int, period: int) -> list[range]:
    """Splits query indices into GetMetricData requests within 500 queries and 100,800 data points each.

    A query returns up to ``days x 86400 / period`` points; when one query alone exceeds the point limit it
    gets a request of its own and the rest arrives through ``NextToken`` pages.
    """
    points = math.ceil(days * 86_400 / period)
    size = max(1, min(MAX_QUERIES_PER_REQUEST, MAX_DATAPOINTS_PER_REQUEST // points))
    return [range(start, min(start + size, n_queries)) for start in range(0, n_queries, size)]


def get_metric_data(  # noqa: PLR0917 - one argument per request setting
    cloudwatch: Any,
    queries: Sequence[MetricQuery],
    start: datetime,
    end: datetime,
    period: int,
    statistic: str,
    progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[pd.Series], int]:
    """Reads every query's data points, batch by batch (``plan_batches``), following ``NextToken`` pages.

    Args:
        cloudwatch: boto3 CloudWatch client.
        queries: What to read.
        start: Inclusive start (UTC).
        end: Exclusive end (UTC).
        period: Seconds per data point.
        statistic: ``p95``, ``Maximum`` or ``Average``.
        progress: Called with (batches done, batches in all) after each batch.
        sleep: Waits between throttled attempts (tests pass a no-op).

    Returns:
        One float Series per query (index: naive UTC timestamps, ascending; empty when no data), and the
        number of GetMetricData requests made.
    """
    days = max(1, math.ceil((end - start) / timedelta(days=1)))
    batches = plan_batches(len(queries), days, period)
    values: list[dict[datetime, float]] = [{} for _ in queries]
    requests = 0
    for done, batch in enumerate(batches, start=1):
        kwargs: dict[str, Any] = {
            "MetricDataQueries": [
                {
                    "Id": f"q{i}",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": queries[i].namespace,
                            "MetricName": queries[i].metric_name,
                            "Dimensions": [{"Name": n, "Value": v} for n, v in queries[i].dimensions],
                        },
                        "Period": period,
                        "Stat": statistic,
                    },
                    "ReturnData": True,
                }
                for i in batch
            ],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
            "MaxDatapoints": MAX_DATAPOINTS_PER_REQUEST,
        }
        while True:
            page = _call("cloudwatch:GetMetricData", cloudwatch.get_metric_data, sleep, **kwargs)
            requests += 1
            for result in page.get("MetricDataResults", []):
                if result.get("StatusCode") in {"Forbidden", "InternalError"}:
                    messages = "; ".join(m.get("Value", "") for m in result.get("Messages", []))
                    raise PullMetricsError(
                        f"cloudwatch:GetMetricData query {result['Id']} "
                        f"({queries[int(result['Id'][1:])].metric_name}): {result['StatusCode']}: {messages}"
                    )
                series = values[int(result["Id"][1:])]
                for stamp, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=True):
                    series[stamp.astimezone(UTC).replace(tzinfo=None)] = float(value)
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        if progress is not None:
            progress(done, len(batches))
    return [
        pd.Series(list(v.values()), index=pd.DatetimeIndex(list(v)), dtype="float64").sort_index()
        for v in values
    ], requests


def _share_of_baseline(
    bytes_per_sample: pd.Series,
    sample_s: float,
    baseline_bytes_per_s: float | None,
    no_baseline: str,
    no_data: str,
) -> tuple[pd.Series, str | None]:
    """Bytes moved per CloudWatch sample as % of a documented baseline rate (and ``None``), or an empty series
    and why (``no_baseline`` when the instance type documents none, ``no_data`` without data points)."""
    empty = pd.Series(dtype="float64", index=pd.DatetimeIndex([]))
    if baseline_bytes_per_s is None:
        return empty, no_baseline
    if bytes_per_sample.dropna().empty:
        return empty, no_data
    return bytes_per_sample / sample_s / baseline_bytes_per_s * 100.0, None


def _rates(
    instance: Instance, kind: InstanceType | None, data: dict[str, pd.Series]
) -> tuple[dict[str, pd.Series], dict[str, str]]:
    """The four contract metrics of one instance (%), and the reason for each one left empty."""
    sample_s = _DETAILED_SAMPLE_S if instance.detailed_monitoring else _BASIC_SAMPLE_S
    out: dict[str, pd.Series] = {"cpu_p95": data["cpu"]}
    missing: dict[str, str] = {}
    if data["cpu"].empty:
        missing["cpu_p95"] = "no AWS/EC2 CPUUtilization data points in the window"
    out["memory_p95"] = data["memory"]
    if data["memory"].empty:
        missing["memory_p95"] = (
            "no CWAgent mem_used_percent data points: the CloudWatch agent does not publish memory "
            "(install it with the mem_used_percent measurement)"
        )
    ebs = kind.ebs_baseline_mbytes_per_s if kind else None
    out["disk_io_p95"], disk_reason = _share_of_baseline(
        data["disk_read"].add(data["disk_write"]),  # NaN unless both were published at that time
        sample_s,
        None if ebs is None else ebs * 1e6,
        no_baseline=f"{instance.instance_type}: no documented EBS baseline throughput",
        no_data="no AWS/EC2 EBSReadBytes/EBSWriteBytes data points (not a Nitro instance?)",
    )
    network = kind.network_baseline_gbps if kind else None
    out["network_p95"], network_reason = _share_of_baseline(
        pd.concat([data["network_in"], data["network_out"]], axis=1).max(axis=1, skipna=False),
        sample_s,
        None if network is None else network * 1e9 / 8,
        no_baseline=f"{instance.instance_type}: no documented network baseline bandwidth",
        no_data="no AWS/EC2 NetworkIn/NetworkOut data points in the window",
    )
    reasons = {"disk_io_p95": disk_reason, "network_p95": network_reason}
    missing |= {metric: reason for metric, reason in reasons.items() if reason}
    return out, missing


def to_raw_metrics(
    instances: Sequence[Instance],
    types: dict[str, InstanceType],
    queries: Sequence[MetricQuery],
    series: Sequence[pd.Series],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The contract's ``raw_server_metrics`` (``timestamp`` ISO UTC, ``server_id`` = instance id, four metrics
    in %) and the missing metrics (``server_id, metric, reason``)."""
    by_instance: dict[str, dict[str, pd.Series]] = {}
    for query, data in zip(queries, series, strict=True):
        by_instance.setdefault(query.instance_id, {})[query.field] = data
    frames, missing = [], []
    for instance in instances:
        kind = types.get(instance.instance_type)
        metrics, reasons = _rates(instance, kind, by_instance[instance.instance_id])
        missing += [{"server_id": instance.instance_id, "metric": m, "reason": r} for m, r in reasons.items()]
        wide = pd.concat([metrics[m].rename(m) for m in METRICS], axis=1).dropna(how="all")
        if not wide.empty:
            frames.append(
                wide.sort_index()
                .rename_axis("timestamp")
                .reset_index()
                .assign(server_id=instance.instance_id)
            )
    columns = ["timestamp", "server_id", *METRICS]
    raw = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    raw["timestamp"] = pd.to_datetime(raw["timestamp"]).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for metric in METRICS:
        raw[metric] = raw[metric].astype("float64").round(3)
    return raw, pd.DataFrame(missing, columns=["server_id", "metric", "reason"])


def to_inventory(
    instances: Sequence[Instance],
    types: dict[str, InstanceType],
    prices: pd.DataFrame,
    region: str,
    archetype_tag: str | None = None,
) -> pd.DataFrame:
    """The contract's ``server_inventory``: one row per instance.

    Columns ``server_id`` (instance id), ``archetype`` (the ``archetype_tag`` tag's value, else the
    instance family), ``instance_family``, ``instance_type``, ``vcpus``, ``memory_gb``, ``hourly_cost_usd``
    (price table for ``region``; empty when the type is not in it), ``datacenter`` (availability zone),
    ``region``, ``name`` (Name tag) and ``state``.
    """
    price = prices.loc[prices["region"] == region].set_index("instance_type")["hourly_cost_usd"]
    rows = []
    for instance in instances:
        kind = types.get(instance.instance_type)
        family = instance.instance_type.split(".")[0]
        rows.append(
            {
                "server_id": instance.instance_id,
                "archetype": instance.tags.get(archetype_tag or "", "") or family,
                "instance_family": family,
                "instance_type": instance.instance_type,
                "vcpus": kind.vcpus if kind else np.nan,
                "memory_gb": kind.memory_gb if kind else np.nan,
                "hourly_cost_usd": float(price.get(instance.instance_type, np.nan)),
                "datacenter": instance.availability_zone,
                "region": region,
                "name": instance.tags.get("Name", ""),
                "state": instance.state,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "server_id",
            "archetype",
            "instance_family",
            "instance_type",
            "vcpus",
            "memory_gb",
            "hourly_cost_usd",
            "datacenter",
            "region",
            "name",
            "state",
        ],
    )


def pull_metrics(  # noqa: PLR0913
    ec2: Any,
    cloudwatch: Any,
    *,
    days: int,
    period: int,
    statistic: str,
    prices: pd.DataFrame,
    region: str,
    tags: dict[str, list[str]] | None = None,
    instance_ids: Sequence[str] | None = None,
    archetype_tag: str | None = None,
    end: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PullResult:
    """Lists the instances, reads ``days`` of their metrics ending at ``end`` (default: now, floored to the
    period) and returns them in the contract schema.

    Raises:
        ValueError: Bad statistic, period or days; no instance matched.
        PullMetricsError: An EC2 or CloudWatch call failed (with the service's reason).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"--statistic {statistic!r}: one of {list(STATISTICS)}")
    check_window(days, period)
    instances = list_instances(ec2, tags, instance_ids, sleep)
    if not instances:
        raise ValueError(
            f"no running or stopped EC2 instance in {region} matches tags {tags or {}} and ids "
            f"{list(instance_ids or []) or 'any'}"
        )
    types = describe_instance_types(ec2, (i.instance_type for i in instances), sleep)
    memory_dims = find_memory_dimensions(cloudwatch, (i.instance_id for i in instances), sleep)
    queries = build_queries(instances, memory_dims)
    now = end or datetime.now(UTC)
    stop = datetime.fromtimestamp(now.timestamp() // period * period, UTC)
    logger.info(
        "%d instance(s), %d metric queries, %d days at %d s (%s)",
        len(instances),
        len(queries),
        days,
        period,
        statistic,
    )
    series, requests = get_metric_data(
        cloudwatch, queries, stop - timedelta(days=days), stop, period, statistic, progress, sleep
    )
    raw, missing = to_raw_metrics(instances, types, queries, series)
    inventory = to_inventory(instances, types, prices, region, archetype_tag)
    return PullResult(raw, inventory, missing, requests)
