"""CloudWatch ingestion (``kedro cloud pull-metrics``) against moto's EC2 and CloudWatch; botocore's Stubber
for what moto cannot answer (percentile statistics, NextToken pages, throttling)."""

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import boto3
import pandas as pd
import pytest
import requests
import s3fs
from botocore.stub import Stubber
from click.testing import CliRunner
from kedro.runner import SequentialRunner

from capacity_forecaster.cloud.cli import cloud
from capacity_forecaster.cloud.cloudwatch import (
    MAX_DATAPOINTS_PER_REQUEST,
    MAX_QUERIES_PER_REQUEST,
    MetricQuery,
    PullMetricsError,
    check_window,
    get_metric_data,
    make_clients,
    parse_tags,
    plan_batches,
    pull_metrics,
)
from capacity_forecaster.cloud.prices import load_price_table
from capacity_forecaster.schema import METRICS
from tests.cloud.conftest import object_keys
from tests.conftest import PROJECT_PATH

END = datetime(2026, 11, 20, tzinfo=UTC)
DAYS = 40
# m5.4xlarge per DescribeInstanceTypes: EBS baseline 593.75 MB/s, network baseline 5 Gbps; basic monitoring
# publishes byte counters per 300 s sample.
EBS_BYTES_10_PCT = 0.10 * 593.75e6 * 300
NET_BYTES_25_PCT = 0.25 * 5e9 / 8 * 300


def _run(ec2, tags: dict[str, str], count: int = 1, instance_type: str = "m5.4xlarge") -> list[str]:
    # An image of its own: listing moto's 1,300 stock images to take one costs 3 s a call.
    ami = ec2.register_image(Name="cf-test-image")["ImageId"]
    out = ec2.run_instances(
        ImageId=ami,
        MinCount=count,
        MaxCount=count,
        InstanceType=instance_type,
        Placement={"AvailabilityZone": "us-east-1b"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    return [i["InstanceId"] for i in out["Instances"]]


def _put(cw, namespace: str, name: str, dims: dict[str, str], values: dict[datetime, float]) -> None:
    data = [
        {
            "MetricName": name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
            "Timestamp": ts,
            "Value": value,
        }
        for ts, value in values.items()
    ]
    for start in range(0, len(data), 1000):
        cw.put_metric_data(Namespace=namespace, MetricData=data[start : start + 1000])


def _hours(end: datetime, days: int) -> list[datetime]:
    return [end - timedelta(hours=h) for h in range(days * 24, 0, -1)]


@pytest.fixture
def fleet(aws):
    """Two web instances and a db instance. The first web instance has ``DAYS`` days of hourly data for
    every metric, its CloudWatch agent publishing memory; the second, stopped, only cpu; db two days of cpu.

    moto answers Maximum and Average, not percentiles (a 500 that botocore retries): p95 is Stubber's."""

    def make(end: datetime = END, margin: bool = False) -> SimpleNamespace:
        ec2, cw = make_clients("us-east-1")
        with_agent, without_agent = _run(ec2, {"team": "web", "Name": "web-1", "Role": "frontend"}, 2)
        ec2.stop_instances(InstanceIds=[without_agent])
        (db,) = _run(ec2, {"team": "db"})
        hours = _hours(end, DAYS)
        if margin:  # the CLI ends its window at the current hour: full either side of an hour's turn
            hours = [hours[0] - timedelta(hours=1), *hours, end]
        cpu = {ts: float(10 + ts.hour) for ts in hours}
        own = {"InstanceId": with_agent}
        _put(cw, "AWS/EC2", "CPUUtilization", own, cpu)
        _put(cw, "AWS/EC2", "EBSReadBytes", own, dict.fromkeys(hours, EBS_BYTES_10_PCT))
        _put(cw, "AWS/EC2", "EBSWriteBytes", own, dict.fromkeys(hours, EBS_BYTES_10_PCT))
        _put(cw, "AWS/EC2", "NetworkIn", own, dict.fromkeys(hours, NET_BYTES_25_PCT))
        _put(cw, "AWS/EC2", "NetworkOut", own, dict.fromkeys(hours, NET_BYTES_25_PCT / 5))
        # The agent appends InstanceType to InstanceId (as its default append_dimensions do).
        memory = {ts: 50.0 + ts.day % 7 for ts in hours}
        _put(
            cw,
            "CWAgent",
            "mem_used_percent",
            {"InstanceId": with_agent, "InstanceType": "m5.4xlarge"},
            memory,
        )
        _put(cw, "AWS/EC2", "CPUUtilization", {"InstanceId": without_agent}, dict.fromkeys(hours, 30.0))
        _put(cw, "AWS/EC2", "CPUUtilization", {"InstanceId": db}, dict.fromkeys(_hours(end, 2), 5.0))
        return SimpleNamespace(
            ec2=ec2, cw=cw, with_agent=with_agent, without_agent=without_agent, db=db, cpu=cpu, memory=memory
        )

    return make


def test_pull_reads_tagged_instances_into_the_contract_schema(fleet):
    f = fleet()
    result = pull_metrics(
        f.ec2,
        f.cw,
        days=DAYS,
        period=3600,
        statistic="Maximum",
        prices=load_price_table(),
        region="us-east-1",
        tags={"team": ["web"]},
        archetype_tag="Role",
        end=END,
    )
    raw, inventory = result.raw_server_metrics, result.server_inventory
    assert sorted(inventory["server_id"]) == sorted([f.with_agent, f.without_agent])  # not the db instance
    assert list(raw.columns) == ["timestamp", "server_id", *METRICS]
    assert len(raw) == 2 * DAYS * 24
    agent = raw[raw["server_id"] == f.with_agent]
    assert agent["timestamp"].tolist() == [ts.strftime("%Y-%m-%dT%H:%M:%SZ") for ts in sorted(f.cpu)]
    assert agent["cpu_p95"].tolist() == [f.cpu[ts] for ts in sorted(f.cpu)]
    assert agent["memory_p95"].tolist() == [f.memory[ts] for ts in sorted(f.memory)]
    assert agent["disk_io_p95"].eq(20.0).all()  # read 10 % + write 10 % of the EBS baseline
    assert agent["network_p95"].eq(25.0).all()  # max(in, out) against the 5 Gbps baseline
    assert raw["timestamp"].iloc[0] == "2026-10-11T00:00:00Z"  # 40 days before END, hour by hour

    # The stopped instance without the agent (and without EBS or network data): reported, never filled in.
    stopped = raw[raw["server_id"] == f.without_agent]
    assert stopped["cpu_p95"].eq(30.0).all()
    assert stopped[["memory_p95", "disk_io_p95", "network_p95"]].isna().all().all()
    missing = result.missing.set_index("metric")
    assert missing["server_id"].eq(f.without_agent).all()
    assert sorted(missing.index) == ["disk_io_p95", "memory_p95", "network_p95"]
    assert "CloudWatch agent does not publish memory" in missing.loc["memory_p95", "reason"]

    row = inventory.set_index("server_id").loc[f.with_agent]
    assert row[
        ["instance_type", "vcpus", "memory_gb", "hourly_cost_usd", "datacenter", "archetype"]
    ].tolist() == ["m5.4xlarge", 16, 64.0, 0.768, "us-east-1b", "frontend"]
    assert inventory.set_index("server_id").loc[f.without_agent, "state"] == "stopped"


def test_instance_ids_narrow_the_selection(fleet):
    f = fleet()
    result = pull_metrics(
        f.ec2,
        f.cw,
        days=2,
        period=3600,
        statistic="Average",
        prices=load_price_table(),
        region="us-east-1",
        instance_ids=[f.db],
        end=END,
    )
    assert result.server_inventory["server_id"].tolist() == [f.db]
    assert result.raw_server_metrics["cpu_p95"].notna().sum() == 2 * 24


def test_no_matching_instance_is_an_error(aws):
    ec2, cw = make_clients("us-east-1")
    with pytest.raises(ValueError, match=r"no running or stopped EC2 instance in us-east-1 matches tags"):
        pull_metrics(
            ec2,
            cw,
            days=1,
            period=3600,
            statistic="Maximum",
            prices=load_price_table(),
            region="us-east-1",
            tags={"team": ["nobody"]},
        )


def test_requests_stay_within_get_metric_data_limits(aws):
    ec2, cw = make_clients("us-east-1")
    _run(ec2, {"team": "big"}, count=84)  # 84 x 6 = 504 queries
    sizes: list[int] = []
    cw.meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData",
        lambda params, **_: sizes.append(len(params["MetricDataQueries"])),
    )
    prices = load_price_table()
    result = pull_metrics(
        ec2,
        cw,
        days=1,
        period=3600,
        statistic="Maximum",
        prices=prices,
        region="us-east-1",
        tags={"team": ["big"]},
        end=END,
    )
    assert sizes == [MAX_QUERIES_PER_REQUEST, 4] and result.requests == 2

    sizes.clear()  # 40 days hourly = 960 points per query: 105 queries per request keep under 100,800
    pull_metrics(
        ec2,
        cw,
        days=DAYS,
        period=3600,
        statistic="Maximum",
        prices=prices,
        region="us-east-1",
        tags={"team": ["big"]},
        end=END,
    )
    assert sizes == [105, 105, 105, 105, 84]
    assert max(sizes) * DAYS * 24 <= MAX_DATAPOINTS_PER_REQUEST


def test_plan_batches_and_retention_limits():
    assert [len(b) for b in plan_batches(1001, 1, 3600)] == [500, 500, 1]
    assert [len(b) for b in plan_batches(3, 455, 60)] == [1, 1, 1]  # one query alone exceeds: NextToken pages
    check_window(455, 3600)
    with pytest.raises(ValueError, match="keeps 300-second data for 63 days; use --period 3600"):
        check_window(90, 300)
    with pytest.raises(ValueError, match="multiple of 60"):
        check_window(1, 90)
    assert parse_tags(["team=web", "team=api", "env=prod"]) == {"team": ["web", "api"], "env": ["prod"]}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_tags(["team"])


CPU = MetricQuery("i-0abc", "cpu", "AWS/EC2", "CPUUtilization", (("InstanceId", "i-0abc"),))


def _request(stat: str, token: str | None = None) -> dict:
    params = {
        "MetricDataQueries": [
            {
                "Id": "q0",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/EC2",
                        "MetricName": "CPUUtilization",
                        "Dimensions": [{"Name": "InstanceId", "Value": "i-0abc"}],
                    },
                    "Period": 3600,
                    "Stat": stat,
                },
                "ReturnData": True,
            }
        ],
        "StartTime": END - timedelta(days=1),
        "EndTime": END,
        "ScanBy": "TimestampAscending",
        "MaxDatapoints": MAX_DATAPOINTS_PER_REQUEST,
    }
    return {**params, "NextToken": token} if token else params


def _page(hours: list[int], values: list[float], token: str | None = None) -> dict:
    page = {
        "MetricDataResults": [
            {
                "Id": "q0",
                "Label": "CPUUtilization",
                "Timestamps": [END - timedelta(hours=h) for h in hours],
                "Values": values,
                "StatusCode": "PartialData" if token else "Complete",
            }
        ]
    }
    return {**page, "NextToken": token} if token else page


def test_p95_pages_and_throttling_with_stubber():
    cw = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    waits: list[float] = []
    with Stubber(cw) as stub:
        stub.add_client_error(
            "get_metric_data", "Throttling", "Rate exceeded", 400, expected_params=_request("p95")
        )
        stub.add_response("get_metric_data", _page([3, 2], [41.5, 47.25], token="t1"), _request("p95"))
        stub.add_response("get_metric_data", _page([1], [52.0]), _request("p95", "t1"))
        series, requests = get_metric_data(
            cw, [CPU], END - timedelta(days=1), END, 3600, "p95", sleep=waits.append
        )
        stub.assert_no_pending_responses()
    assert waits == [1.0] and requests == 2
    assert series[0].tolist() == [41.5, 47.25, 52.0]
    assert series[0].index[-1] == pd.Timestamp("2026-11-19 23:00")


def test_throttling_that_outlasts_retries_names_the_reason():
    cw = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(cw) as stub:
        for _ in range(6):
            stub.add_client_error("get_metric_data", "Throttling", "Rate exceeded", 400)
        with pytest.raises(
            PullMetricsError, match="cloudwatch:GetMetricData failed: Throttling: Rate exceeded"
        ):
            get_metric_data(cw, [CPU], END - timedelta(days=1), END, 3600, "p95", sleep=lambda _: None)


def test_denied_call_names_the_policy():
    cw = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(cw) as stub:
        stub.add_client_error(
            "get_metric_data", "AccessDenied", "not authorized to perform GetMetricData", 403
        )
        with pytest.raises(PullMetricsError, match="AccessDenied: not authorized.*pull-metrics-policy.json"):
            get_metric_data(cw, [CPU], END - timedelta(days=1), END, 3600, "Maximum", sleep=lambda _: None)


@pytest.mark.slow
def test_pulled_datasets_load_through_the_cloud_catalog_and_etl_runs(bucket, fleet, kedro_session):
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    f = fleet(end=now, margin=True)
    result = CliRunner().invoke(
        cloud,
        ["pull-metrics", "--days", str(DAYS), "--tag", "team=web", "--statistic", "Maximum"],
        obj=SimpleNamespace(project_path=PROJECT_PATH),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert (
        f"missing memory_p95 for 1 instance(s) ({f.without_agent}): no CWAgent mem_used_percent"
        in result.output
    )
    assert f"s3://{bucket}/raw/server_metrics.csv.gz" in result.output

    catalog = kedro_session(env="cloud").load_context().catalog
    raw, inventory = catalog.load("raw_server_metrics"), catalog.load("server_inventory")
    assert len(raw) == 2 * DAYS * 24 and set(raw["server_id"]) == {f.with_agent, f.without_agent}
    assert sorted(inventory["server_id"]) == sorted([f.with_agent, f.without_agent])

    kedro_session(env="cloud").run(pipeline_names=["etl"], runner=SequentialRunner())
    clean = kedro_session(env="cloud").load_context().catalog.load("clean_server_metrics")
    cpu = clean[(clean["server_id"] == f.with_agent) & (clean["metric"] == "cpu_p95")]
    assert len(cpu) >= DAYS - 1
    # Daily P95 of the hourly maxima: hours 0..23 give 10..33, so the P95 is 10 + 0.95 x 23.
    assert cpu["value"].iloc[1:-1].round(2).eq(round(10 + 0.95 * 23, 2)).all()


def test_local_flag_writes_data_01_raw(fleet, data_root):
    f = fleet(end=datetime.now(UTC).replace(minute=0, second=0, microsecond=0), margin=True)
    result = CliRunner().invoke(
        cloud,
        ["pull-metrics", "--days", "2", "--instance-ids", f.db, "--statistic", "Average", "--local"],
        obj=SimpleNamespace(project_path=PROJECT_PATH),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    inventory = pd.read_csv(data_root / "01_raw" / "server_inventory.csv")
    assert inventory["server_id"].tolist() == [f.db]
    raw = pd.read_csv(data_root / "01_raw" / "server_metrics.csv.gz")
    assert set(raw["server_id"]) == {f.db} and raw["cpu_p95"].notna().all()


def _user_with_policy(name: str, document: dict) -> dict[str, str]:
    iam = boto3.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="pull-metrics", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.mark.slow
def test_documented_iam_policy_allows_pull_metrics_and_nothing_is_missing(bucket, fleet, monkeypatch, aws):
    """docs/iam/pull-metrics-policy.json loaded into moto with IAM checks on. moto checks EC2 and CloudWatch
    actions against resource "*" (their statements already use "*") and ignores conditions; S3 statements are
    checked against their real resources. moto names CloudWatch actions by the endpoint prefix
    (``monitoring:ListMetrics``) where IAM uses ``cloudwatch:ListMetrics``: the test adds those aliases."""
    f = fleet(end=datetime.now(UTC).replace(minute=0, second=0, microsecond=0), margin=True)
    monkeypatch.setenv("CF_PREFIX", "team-a")
    text = (PROJECT_PATH / "docs" / "iam" / "pull-metrics-policy.json").read_text()
    for placeholder, value in {"${BUCKET}": bucket, "${PREFIX}": "team-a", "${REGION}": "us-east-1"}.items():
        text = text.replace(placeholder, value)
    policy = json.loads(text)
    for statement in policy["Statement"]:
        statement["Action"] += [
            a.replace("cloudwatch:", "monitoring:") for a in statement["Action"] if "cloudwatch:" in a
        ]
    allowed = _user_with_policy("puller", policy)
    without_metrics = _user_with_policy(
        "no-metrics", dict(policy, Statement=[s for s in policy["Statement"] if s["Sid"] != "ReadMetrics"])
    )
    args = ["pull-metrics", "--days", "2", "--tag", "team=web", "--statistic", "Maximum"]
    requests.post(f"{aws}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        for name, value in without_metrics.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        denied = CliRunner().invoke(cloud, args, obj=SimpleNamespace(project_path=PROJECT_PATH))
        for name, value in allowed.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        result = CliRunner().invoke(
            cloud, args, obj=SimpleNamespace(project_path=PROJECT_PATH), catch_exceptions=False
        )
    finally:
        requests.post(f"{aws}/moto-api/reset-auth", data=b"inf", timeout=10)
    assert denied.exit_code == 1 and "cloudwatch:ListMetrics failed" in denied.output
    assert "pull-metrics-policy.json" in denied.output
    assert result.exit_code == 0, result.output
    assert set(object_keys(bucket)) == {"team-a/raw/server_metrics.csv.gz", "team-a/raw/server_inventory.csv"}
    assert f"missing memory_p95 for 1 instance(s) ({f.without_agent})" in result.output
