"""Pure translation: job names, grouping, dataset checks and job specs (no AWS at all)."""

import re

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.json import JSONDataset

from capacity_forecaster.runner.config import JobResources
from capacity_forecaster.runner.constants import CONTAINER_ROOT, JOB_NAME_MAX, JOB_NAME_PATTERN
from capacity_forecaster.runner.jobs import (
    CodeBundle,
    GroupingError,
    JobGroup,
    JobSpecError,
    NonPersistedDatasetError,
    build_job_specs,
    check_persisted,
    crossing_datasets,
    flatten_params,
    group_pipeline,
    job_name,
    job_names,
    sanitize,
    topological_order,
)


def identity(*args):
    return args[0]


def _ns(namespace: str, *nodes: Node) -> Pipeline:
    return Pipeline(list(nodes), namespace=namespace, prefix_datasets_with_namespace=False)


@pytest.fixture
def three_groups() -> Pipeline:
    """etl (2 nodes, memory inside) -> modelling and reporting (independent of each other)."""
    etl = _ns(
        "etl", Node(identity, "raw", "tmp", name="a_node"), Node(identity, "tmp", "clean", name="b_node")
    )
    modelling = _ns("modelling", Node(identity, "clean", "forecasts", name="fit_node"))
    reporting = _ns(
        "reporting", Node(identity, ["clean", "params:report.title"], "report", name="report_node")
    )
    return etl + modelling + reporting


BUNDLE = CodeBundle(
    s3_uri="s3://b/sagemaker/runs/r1/code",
    package="capacity_forecaster",
    wheel="capacity_forecaster-0.1.0-py3-none-any.whl",
    conf="conf-capacity_forecaster.tar.gz",
)


# names ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run_id", "group", "expected"),
    [
        ("2026-11-23T08.04.17.775Z", "risk_analysis", "cf-2026-11-23T08-04-17-775Z-risk-analysis"),
        ("r1", "modelling.prophet", "cf-r1-modelling-prophet"),
        ("r1", "_private_", "cf-r1--private"),
    ],
)
def test_job_name_is_sanitised(run_id, group, expected):
    assert job_name(run_id, group) == expected
    assert re.match(JOB_NAME_PATTERN, expected)


def test_long_names_are_cut_to_63_chars_and_stay_unique():
    run_id = "2026-11-23T08.04.17.775Z"
    a = job_name(run_id, "risk_analysis.score_capacity_risk_for_every_server_node")
    b = job_name(run_id, "risk_analysis.score_capacity_risk_for_every_server_nodf")
    assert len(a) == len(b) == JOB_NAME_MAX
    assert a != b
    assert re.match(JOB_NAME_PATTERN, a) and re.match(JOB_NAME_PATTERN, b)


def test_groups_that_sanitise_alike_get_distinct_names():
    names = job_names("r1", ["a.b", "a_b", "c"])
    assert len(set(names.values())) == 3
    assert names["c"] == "cf-r1-c"
    assert all(re.match(JOB_NAME_PATTERN, n) for n in names.values())


def test_sanitize_keeps_only_letters_digits_hyphens():
    assert sanitize("x.y_z/ü 1") == "x-y-z---1"


# grouping ---------------------------------------------------------------------------------------------------
def test_namespace_grouping_makes_one_group_per_namespace(three_groups):
    groups = group_pipeline(three_groups)
    assert [g.name for g in groups] == ["etl", "modelling", "reporting"]
    assert groups[0].nodes == ("etl.a_node", "etl.b_node")
    assert groups[1].depends_on == ("etl",) and groups[2].depends_on == ("etl",)


def test_per_node_grouping_makes_one_group_per_node(three_groups):
    groups = group_pipeline(three_groups, "per_node")
    assert len(groups) == 4
    assert {g.name: g.depends_on for g in groups}["etl.b_node"] == ("etl.a_node",)


def test_unknown_grouping_is_refused(three_groups):
    with pytest.raises(GroupingError, match="Unknown grouping 'tags'"):
        group_pipeline(three_groups, "tags")


@pytest.mark.filterwarnings("ignore:Namespace 'modelling' is interrupted")
def test_a_namespace_on_both_sides_of_another_is_split_into_stages():
    """modelling prepares model_input, prophet forecasts, modelling evaluates: 3 jobs, in order, no cycle."""
    prep = _ns("modelling", Node(identity, "features", "model_input", name="prepare_node"))
    variant = _ns("prophet", Node(identity, "model_input", "prophet_forecast", name="fit_node"))
    evaluate = _ns("modelling", Node(identity, "prophet_forecast", "leaderboard", name="evaluate_node"))
    report = _ns("reporting", Node(identity, "leaderboard", "report", name="report_node"))
    groups = group_pipeline(prep + variant + evaluate + report)
    assert [(g.name, g.nodes, g.depends_on) for g in groups] == [
        ("modelling", ("modelling.prepare_node",), ()),
        ("prophet", ("prophet.fit_node",), ("modelling",)),
        ("modelling-2", ("modelling.evaluate_node",), ("prophet",)),
        ("reporting", ("reporting.report_node",), ("modelling-2",)),
    ]


def test_namespace_grouping_equals_kedros_when_there_is_no_cycle(three_groups):
    kedro = {g.name: (tuple(g.nodes), tuple(sorted(g.dependencies))) for g in three_groups.group_nodes_by()}
    assert {g.name: (g.nodes, g.depends_on) for g in group_pipeline(three_groups)} == kedro


def test_topological_order_puts_dependencies_first():
    groups = [JobGroup("c", ("c",), ("b",)), JobGroup("b", ("b",), ("a",)), JobGroup("a", ("a",))]
    assert [g.name for g in topological_order(groups)] == ["a", "b", "c"]


# dataset checks ---------------------------------------------------------------------------------------------
def test_crossing_datasets_skip_params_and_in_group_intermediates(three_groups):
    crossing = crossing_datasets(three_groups, group_pipeline(three_groups))
    assert crossing == {"raw": {"etl"}, "clean": {"modelling", "reporting"}}


def test_memory_datasets_crossing_jobs_are_listed(three_groups):
    catalog = DataCatalog({"raw": JSONDataset(filepath="s3://b/raw.json"), "clean": MemoryDataset()})
    crossing = crossing_datasets(three_groups, group_pipeline(three_groups))
    with pytest.raises(
        NonPersistedDatasetError, match=r"clean \(read by job group\(s\) modelling, reporting\)"
    ):
        check_persisted(crossing, lambda ds: not isinstance(catalog.get(ds), JSONDataset))


def test_persisted_crossing_datasets_pass(three_groups):
    crossing = crossing_datasets(three_groups, group_pipeline(three_groups))
    check_persisted(crossing, lambda ds: False)


# job specs --------------------------------------------------------------------------------------------------
def test_job_specs_carry_command_environment_and_tags(three_groups):
    specs = build_job_specs(
        group_pipeline(three_groups),
        run_id="r1",
        run_uri="s3://b/sagemaker/runs/r1",
        bundle=BUNDLE,
        kedro_env="cloud",
        runtime_params={"etl": {"min_days": 3}, "flag": True},
        environment={"CF_BUCKET": "b"},
        tags={"owner": "me"},
    )
    etl, modelling, _ = specs
    assert etl.name == "cf-r1-etl" and modelling.depends_on == ("cf-r1-etl",)
    cmd = list(etl.command)
    assert cmd[:2] == ["python3", f"{CONTAINER_ROOT}/input/code/cf_entrypoint.py"]
    assert cmd[cmd.index("--runner") + 1] == "SequentialRunner"  # never recurses into SageMakerRunner
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--node"] == ["etl.a_node", "etl.b_node"]
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--param"] == [
        "run_id=r1",
        "etl.min_days=3",
        "flag=true",
    ]
    assert etl.environment["KEDRO_DISABLE_TELEMETRY"] == "true"
    assert etl.environment["PYTHONPATH"].startswith(CONTAINER_ROOT)
    assert etl.environment["CF_BUCKET"] == "b"
    assert etl.tags == {"owner": "me", "project": "capacity-forecaster", "run_id": "r1", "group": "etl"}
    assert etl.inputs[0].s3_uri == "s3://b/sagemaker/runs/r1/code/"
    assert etl.outputs[0].s3_uri == "s3://b/sagemaker/runs/r1/jobs/"


def test_params_with_commas_cannot_be_forwarded():
    with pytest.raises(JobSpecError, match="contains a comma"):
        flatten_params({"servers": "a,b"})


def test_a_group_too_big_for_sagemakers_argument_limit_is_refused():
    big = _ns("big", *[Node(identity, f"d{i}", f"d{i + 1}", name=f"n{i}") for i in range(60)])
    with pytest.raises(JobSpecError, match="container arguments.*per_node"):
        build_job_specs(group_pipeline(big), run_id="r", run_uri="s3://b/r", bundle=BUNDLE, kedro_env="cloud")


def test_topological_order_refuses_a_cycle():
    with pytest.raises(GroupingError, match=r"cycle: \['a', 'b'\]"):
        topological_order([JobGroup("a", ("a",), ("b",)), JobGroup("b", ("b",), ("a",))])


def test_more_than_one_instance_is_refused(three_groups):
    groups = group_pipeline(three_groups)
    with pytest.raises(JobSpecError, match=r"instance_count=2.*Shards are separate jobs, not instances"):
        build_job_specs(
            groups,
            run_id="r1",
            run_uri="s3://b/runs/r1",
            bundle=BUNDLE,
            kedro_env="cloud",
            resources={groups[0].name: JobResources("ml.m5.large", 2, 30, 600)},
        )


def test_groups_carry_their_nodes_tags():
    pipe = Pipeline(
        [
            Node(identity, "a", "b", name="n1", namespace="canvas", tags=["canvas", "aws"]),
            Node(identity, "b", "c", name="n2", namespace="canvas", tags=["canvas"]),
        ]
    )
    assert [g.tags for g in group_pipeline(pipe)] == [("aws", "canvas")]
