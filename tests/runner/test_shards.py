"""Sharded job groups in the SageMaker runner: one job per shard, the merge after all of them, the shard
count from ``modelling.shards`` or (``auto``) from ``shard_plan``, the concurrency bound, and a failed shard
retried alone. Jobs run on moto's server; moto completes every job at once, so Failed is set in moto's
in-process backend when a given job is created (``_fail_when_created``, as test_runner does)."""

import json
import re
import threading

import boto3
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.json import JSONDataset
from omegaconf import OmegaConf

from capacity_forecaster.runner import JobFailedError, JobSpecError, SageMakerRunner
from capacity_forecaster.runner.backends import LocalBackend, SageMakerBackend
from capacity_forecaster.runner.constants import JOB_NAME_MAX, JOB_NAME_PATTERN
from capacity_forecaster.runner.jobs import (
    CodeBundle,
    JobGroup,
    build_job_specs,
    expand_shards,
    group_pipeline,
    job_names,
    retry_job_name,
)
from capacity_forecaster.runner.sagemaker_client import S3Store, SageMakerClient
from capacity_forecaster.runner.sagemaker_runner import MAX_SHARD_COMMANDS, resume_hint
from tests.runner.test_runner import _fail_when_created, _printed_requests, _validate_with_stubber
from tests.runner.toy_project import TOY_SHARDED, toy_sharded_catalog

SHARD_NODES = ("square.fit_node", "square.predict_node")


def identity(*args):
    return args[0]


def _ns(namespace: str, *nodes: Node) -> Pipeline:
    return Pipeline(list(nodes), namespace=namespace, prefix_datasets_with_namespace=False)


def sharded_pipeline() -> Pipeline:
    """model_input (writes shard_plan) -> square (2 nodes) and cube (1 node), all tagged ``sharded`` ->
    merge."""
    model_input = _ns(
        "model_input",
        Node(identity, "params:n", "model_input_shards", name="split_node"),
        Node(identity, "model_input_shards", "shard_plan", name="plan_node"),
    )
    square = _ns(
        "square",
        Node(identity, ["model_input_shards", "params:modelling.shard"], "square_fits", name="fit_node"),
        Node(identity, "square_fits", "square_forecast", name="predict_node"),
    )
    cube = _ns("cube", Node(identity, "model_input_shards", "cube_forecast", name="cube_node"))
    merge = _ns("merge", Node(identity, ["square_forecast", "cube_forecast"], "forecasts", name="merge_node"))
    return model_input + Pipeline([square, cube], tags=["sharded"]) + merge


PIPE = sharded_pipeline()


def sharded_catalog(shards="3", shard=None) -> DataCatalog:
    """Crossing datasets on S3 (JSON), the in-group intermediate in memory, ``params:modelling``."""
    names = ("model_input_shards", "shard_plan", "square_forecast", "cube_forecast", "forecasts")
    catalog = DataCatalog({name: JSONDataset(filepath=f"s3://cf-test/toy/{name}.json") for name in names})
    catalog["square_fits"] = MemoryDataset()
    catalog["params:n"] = 12
    catalog["params:modelling"] = {"shards": int(shards) if shards != "auto" else shards, "shard": shard}
    catalog["params:modelling.shard"] = shard
    return catalog


@pytest.fixture
def runner_for(toy_project, toy_wheel, make_settings):
    def make(runtime_params=None, **kwargs):
        return SageMakerRunner(
            settings=make_settings(**kwargs),
            project_path=toy_project,
            wheel=toy_wheel,
            runtime_params={"run_id": "t1", **(runtime_params or {})},
        )

    return make


def _on_moto(runner, sm=None) -> SageMakerRunner:
    runner._backend = SageMakerBackend(SageMakerClient(sm or boto3.client("sagemaker")), runner.settings)
    return runner


def _count_creates(sm) -> dict[str, int]:
    """CreateProcessingJob calls per job name (moto silently replaces a job created twice under one name)."""
    created: dict[str, int] = {}

    def count(params, **kwargs):
        created[params["ProcessingJobName"]] = created.get(params["ProcessingJobName"], 0) + 1

    sm.meta.events.register("provide-client-params.sagemaker.CreateProcessingJob", count)
    return created


def _shard_jobs(group: str, shards: int) -> list[str]:
    return [f"cf-t1-{group}-shard-{i}-of-{shards}" for i in range(1, shards + 1)]


def _params(request: dict) -> list[str]:
    args = request["AppSpecification"]["ContainerArguments"]
    return [args[i + 1] for i, a in enumerate(args) if a == "--param"]


# dry run ----------------------------------------------------------------------------------------------------
def test_dry_run_shows_k_shard_jobs_and_the_merge_after_all_of_them(bucket, runner_for, capsys):
    runner_for(dry_run=True).run(PIPE, sharded_catalog(shards=3))
    printed = _printed_requests(capsys.readouterr().out)
    squares, cubes = _shard_jobs("square", 3), _shard_jobs("cube", 3)
    assert [p["request"]["ProcessingJobName"] for p in printed] == [
        "cf-t1-model-input",
        *cubes,
        *squares,
        "cf-t1-merge",
    ]
    by_name = {p["request"]["ProcessingJobName"]: p for p in printed}
    for name in squares + cubes:
        assert by_name[name]["depends_on"] == ["cf-t1-model-input"]
    assert sorted(by_name["cf-t1-merge"]["depends_on"]) == sorted(squares + cubes)
    for i, name in enumerate(squares, start=1):
        request = by_name[name]["request"]
        assert _params(request) == ["run_id=t1", f"modelling.shard={i}"]
        args = request["AppSpecification"]["ContainerArguments"]
        assert [args[j + 1] for j, a in enumerate(args) if a == "--node"] == list(SHARD_NODES)
        assert request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    assert _params(by_name["cf-t1-merge"]["request"]) == ["run_id=t1"]
    _validate_with_stubber(printed)


def test_dry_run_with_auto_plans_the_shards_given_as_runner_param(bucket, runner_for, capsys):
    runner_for(dry_run=True, shards=4).run(PIPE, sharded_catalog(shards="auto"))
    names = [p["request"]["ProcessingJobName"] for p in _printed_requests(capsys.readouterr().out)]
    assert names == ["cf-t1-model-input", *_shard_jobs("cube", 4), *_shard_jobs("square", 4), "cf-t1-merge"]


def test_dry_run_with_auto_and_no_count_says_so_and_plans_one_shard(bucket, runner_for, capsys, caplog):
    caplog.set_level("INFO", logger="capacity_forecaster")
    runner_for(dry_run=True).run(PIPE, sharded_catalog(shards="auto"))
    names = [p["request"]["ProcessingJobName"] for p in _printed_requests(capsys.readouterr().out)]
    assert names == ["cf-t1-model-input", *_shard_jobs("cube", 1), *_shard_jobs("square", 1), "cf-t1-merge"]
    assert "modelling.shards is auto, and the shard count is only known once" in caplog.text
    assert "pass --runner-params shards=K" in caplog.text


def test_a_shard_count_that_is_not_a_positive_integer_is_refused(bucket, runner_for):
    catalog = sharded_catalog()
    catalog["params:modelling"] = {"shards": 0, "shard": None}
    with pytest.raises(JobSpecError, match=r"modelling.shards must be a positive integer or 'auto', got 0"):
        runner_for(dry_run=True).run(PIPE, catalog)


# names ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 7, 1000])
def test_shard_job_names_are_unique_valid_and_keep_the_shard(shards):
    """A kedro session id as run id and a long group name: every name is cut, the shard part stays."""
    run_id = "2026-11-30T01.41.31.775Z"
    groups = [JobGroup("gradient_boosting_quantiles_with_calendar_features", ("n",), sharded=True)]
    expanded = expand_shards(groups + [JobGroup("modelling", ("m",), ("x",))], shards)
    names = job_names(run_id, [g.name for g in expanded])
    shard_names = [names[g.name] for g in expanded if g.shard]
    assert len(shard_names) == shards and len(set(names.values())) == len(names)
    for i, name in enumerate(shard_names, start=1):
        assert len(name) <= JOB_NAME_MAX and re.match(JOB_NAME_PATTERN, name)
        assert name.endswith(f"-shard-{i}-of-{shards}")
        retry = retry_job_name(name, 1)
        assert len(retry) <= JOB_NAME_MAX and re.match(JOB_NAME_PATTERN, retry)
        assert retry.endswith(f"-shard-{i}-of-{shards}-retry-1") and retry not in names.values()


def test_too_many_unfinished_shards_are_resumed_with_from_nodes():
    """Shard 1 of 12 failed before its siblings ran: 12 rerun commands would be too many, so --from-nodes
    reruns the group (and everything after it)."""
    shards = MAX_SHARD_COMMANDS + 2
    groups = expand_shards(group_pipeline(PIPE), shards)
    bundle = CodeBundle(
        "s3://cf-test/r/code", "cf_toy", "cf_toy-0.1.0-py3-none-any.whl", "conf-cf_toy.tar.gz"
    )
    specs = build_job_specs(groups, run_id="t1", run_uri="s3://cf-test/r", bundle=bundle, kedro_env="cloud")
    square_1 = next(s for s in specs if s.group == f"square-shard-1-of-{shards}")
    hint = resume_hint(PIPE, specs, {"cf-t1-model-input"}, failed_shards=[square_1])
    assert f"Failed: shard 1 of {shards} of job group square." in hint
    assert "kedro run" not in hint
    assert hint.endswith('your previous command: --from-nodes "cube.cube_node,square.fit_node"')


# execution on moto ------------------------------------------------------------------------------------------
def test_shard_jobs_run_concurrently_up_to_the_bound_and_the_merge_after_all(bucket, runner_for):
    """Each shard job waits in a barrier of 2 parties: with a bound of 2 every pair meets, so the run ends;
    a third job in flight would be counted (a runner running them one by one breaks the barrier)."""
    lock, barrier = threading.Lock(), threading.Barrier(2, timeout=120)
    in_flight, events = [0], []

    class RecordingBackend(SageMakerBackend):
        def run(self, job):
            with lock:
                in_flight[0] += 1
                events.append(("start", job.name, in_flight[0]))
            try:
                if job.shard:
                    barrier.wait()
                return super().run(job)
            finally:
                with lock:
                    in_flight[0] -= 1
                    events.append(("end", job.name, in_flight[0]))

    runner = runner_for(max_concurrent_jobs=2)
    runner._backend = RecordingBackend(SageMakerClient(boto3.client("sagemaker")), runner.settings)
    runner.run(PIPE, sharded_catalog(shards=4))
    shard_jobs = _shard_jobs("square", 4) + _shard_jobs("cube", 4)
    assert max(count for kind, _, count in events if kind == "start") == 2
    assert sorted(r.name for r in runner.results) == sorted(["cf-t1-model-input", "cf-t1-merge", *shard_jobs])
    order = [name for kind, name, _ in events if kind == "start"]
    ends = [name for kind, name, _ in events if kind == "end"]
    assert order[0] == "cf-t1-model-input" and order[-1] == "cf-t1-merge"
    assert set(ends[:-1]) == set(order[:-1])  # the merge starts only after every shard ended


def test_a_failed_shard_is_retried_alone(bucket, runner_for, caplog):
    caplog.set_level("INFO", logger="capacity_forecaster")
    sm = boto3.client("sagemaker")
    created = _count_creates(sm)
    _fail_when_created(sm, "cf-t1-square-shard-2-of-3", "AlgorithmError: out of memory")
    runner = _on_moto(runner_for(max_concurrent_jobs=3), sm)
    runner.run(PIPE, sharded_catalog(shards=3))
    expected = ["cf-t1-model-input", *_shard_jobs("square", 3), *_shard_jobs("cube", 3), "cf-t1-merge"]
    assert created == {**dict.fromkeys(expected, 1), "cf-t1-square-shard-2-of-3-retry-1": 1}
    assert (
        "Shard 2 of 3 of job group square failed (AlgorithmError: out of memory); resubmitting" in caplog.text
    )
    assert [r.name for r in runner.results][-1] == "cf-t1-merge"


def test_a_shard_failing_again_names_the_shard_the_reason_and_the_resume_commands(bucket, runner_for):
    """One job at a time: model_input, cube 1, cube 2 (fails twice), cube 3 (a sibling still runs); then no
    square shard starts."""
    sm = boto3.client("sagemaker")
    created = _count_creates(sm)
    for name in ("cf-t1-cube-shard-2-of-3", "cf-t1-cube-shard-2-of-3-retry-1"):
        _fail_when_created(sm, name, "AlgorithmError: out of memory")
    runner = _on_moto(runner_for(max_concurrent_jobs=1, runtime_params={"horizon": 30}), sm)
    with pytest.raises(JobFailedError) as err:
        runner.run(PIPE, sharded_catalog(shards=3))
    assert list(created) == [
        "cf-t1-model-input",
        "cf-t1-cube-shard-1-of-3",
        "cf-t1-cube-shard-2-of-3",
        "cf-t1-cube-shard-2-of-3-retry-1",
        "cf-t1-cube-shard-3-of-3",
    ]
    assert set(created.values()) == {1}
    message = str(err.value)
    assert message.startswith(
        "Job cf-t1-cube-shard-2-of-3-retry-1 ended Failed: AlgorithmError: out of memory"
    )
    assert (
        "3 of 8 job(s) finished; 8 node(s) have not run. Failed: shard 2 of 3 of job group cube." in message
    )
    assert (
        '\n  kedro run --env cloud --nodes "cube.cube_node" --params "horizon=30,modelling.shard=2"\n'
        in message
    )
    assert message.endswith('your previous command: --from-nodes "square.fit_node"')
    assert err.value.resume_hint in message


def test_a_second_failed_shard_stops_the_siblings(bucket, runner_for):
    """Shard 1 fails twice; shard 2 fails too (a bug rather than a shard, so it is not retried): shard 3
    never starts."""
    sm = boto3.client("sagemaker")
    created = _count_creates(sm)
    for name in ("cf-t1-cube-shard-1-of-3", "cf-t1-cube-shard-2-of-3"):
        _fail_when_created(sm, name, "AlgorithmError: bug")
        _fail_when_created(sm, f"{name}-retry-1", "AlgorithmError: bug")
    with pytest.raises(JobFailedError) as err:
        _on_moto(runner_for(max_concurrent_jobs=1), sm).run(PIPE, sharded_catalog(shards=3))
    assert list(created) == [
        "cf-t1-model-input",
        "cf-t1-cube-shard-1-of-3",
        "cf-t1-cube-shard-1-of-3-retry-1",
        "cf-t1-cube-shard-2-of-3",
    ]
    assert "Failed: shard 1 of 3 of job group cube, shard 2 of 3 of job group cube." in str(err.value)
    for i in (1, 2, 3):  # shard 3 never started: it is rerun alone too
        assert f'--nodes "cube.cube_node" --params "modelling.shard={i}"' in str(err.value)


def test_shard_count_auto_is_read_from_shard_plan_once_model_input_finished(bucket, runner_for):
    """There is no shard_plan before the run: the model_input job writes it (here: when moto creates it)."""
    s3, sm = boto3.client("s3"), boto3.client("sagemaker")

    def write_plan(parsed, **kwargs):
        if parsed["ProcessingJobArn"].endswith("/cf-t1-model-input"):
            plan = {"shards": 2, "servers": {"shard-1-of-2": 5, "shard-2-of-2": 7}}
            s3.put_object(Bucket="cf-test", Key="toy/shard_plan.json", Body=json.dumps(plan).encode())

    sm.meta.events.register("after-call.sagemaker.CreateProcessingJob", write_plan)
    created = _count_creates(sm)
    runner = _on_moto(runner_for(), sm)
    runner.run(PIPE, sharded_catalog(shards="auto"))
    assert sorted(created) == sorted(
        ["cf-t1-model-input", *_shard_jobs("square", 2), *_shard_jobs("cube", 2), "cf-t1-merge"]
    )
    merge = next(spec for spec in runner.job_specs if spec.group == "merge")
    assert sorted(merge.depends_on) == sorted(_shard_jobs("square", 2) + _shard_jobs("cube", 2))


def test_shard_count_auto_without_model_input_in_the_run_reads_the_existing_plan(bucket, runner_for):
    boto3.client("s3").put_object(Bucket="cf-test", Key="toy/shard_plan.json", Body=b'{"shards": 5}')
    runner = _on_moto(runner_for())
    runner.run(PIPE.only_nodes_with_namespaces(["square"]), sharded_catalog(shards="auto"))
    assert sorted(r.name for r in runner.results) == sorted(_shard_jobs("square", 5))


def test_shard_count_auto_with_a_plan_without_shards_fails_before_any_shard(bucket, runner_for):
    s3, sm = boto3.client("s3"), boto3.client("sagemaker")

    def write_plan(parsed, **kwargs):
        s3.put_object(Bucket="cf-test", Key="toy/shard_plan.json", Body=b'{"servers": {}}')

    sm.meta.events.register("after-call.sagemaker.CreateProcessingJob", write_plan)
    created = _count_creates(sm)
    with pytest.raises(JobSpecError, match="Dataset shard_plan holds no positive integer 'shards'"):
        _on_moto(runner_for(), sm).run(PIPE, sharded_catalog(shards="auto"))
    assert list(created) == ["cf-t1-model-input"]


def test_the_resume_command_runs_only_the_selected_shard(bucket, runner_for):
    """``--params modelling.shard=2`` (the resume command): one job, shard 2 of 3, the parameter once."""
    runner = _on_moto(runner_for(runtime_params={"modelling": {"shard": 2}}))
    runner.run(PIPE.only_nodes(*SHARD_NODES), sharded_catalog(shards=3, shard=2))
    assert [spec.name for spec in runner.job_specs] == ["cf-t1-square-shard-2-of-3"]
    command = runner.job_specs[0].command
    assert [command[i + 1] for i, a in enumerate(command) if a == "--param"] == [
        "run_id=t1",
        "modelling.shard=2",
    ]


def test_shard_count_auto_with_the_plan_in_memory_is_refused_before_submitting(bucket, runner_for):
    catalog = sharded_catalog(shards="auto")
    catalog["shard_plan"] = MemoryDataset()
    sm = boto3.client("sagemaker")
    created = _count_creates(sm)
    with pytest.raises(JobSpecError, match="dataset shard_plan is in memory: the runner reads it once"):
        _on_moto(runner_for(), sm).run(PIPE, catalog)
    assert created == {}


@pytest.mark.slow
def test_local_backend_shard_jobs_and_the_printed_resume_commands_complete_the_run(bucket, runner_for):
    """Real subprocess jobs of the cf_toy wheel on moto's S3: n=12, 5 per shard, auto -> 3 shard jobs; shard 2
    is listed in ``broken_shards`` (an S3 object read through the catalog), so it fails on both attempts.
    Once the list is emptied, the two printed commands finish the run with the sequential result."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket="cf-test", Key="toy/broken_shards.json", Body=b"[2]")

    def local(runner):
        runner._backend = LocalBackend(S3Store(s3), runner.settings, keep_failed=False)
        return runner

    settings = {"backend": "local", "max_runtime_s": 900, "max_concurrent_jobs": 2}
    with pytest.raises(JobFailedError) as err:
        local(runner_for(**settings)).run(TOY_SHARDED, toy_sharded_catalog())
    message = str(err.value)
    assert message.startswith("Job cf-t1-square-shard-2-of-3-retry-1 ended Failed: AlgorithmError")
    assert any("shard 2 is listed in broken_shards" in line for line in err.value.log_tail)
    reports = sorted(k.rsplit("/", 1)[1] for k in _keys("sagemaker/runs/t1/jobs/"))
    assert reports == [
        "cf-t1-prep.json",
        "cf-t1-split.json",
        "cf-t1-square-shard-1-of-3.json",
        "cf-t1-square-shard-3-of-3.json",
    ]  # each finished job ran once; the failed shard's two attempts left no report
    assert _keys("toy/squares/") == ["toy/squares/shard-1-of-3.json", "toy/squares/shard-3-of-3.json"]

    s3.put_object(Bucket="cf-test", Key="toy/broken_shards.json", Body=b"[]")  # the cause, fixed
    nodes, params = re.search(r'kedro run --env cloud --nodes "([^"]+)" --params "([^"]+)"', message).groups()
    runtime = OmegaConf.to_container(OmegaConf.from_dotlist(params.split(",")))
    resume = local(runner_for(**settings, runtime_params={**runtime, "run_id": "t2"}))
    resume.run(TOY_SHARDED.only_nodes(*nodes.split(",")), toy_sharded_catalog(**runtime["modelling"]))
    assert [spec.name for spec in resume.job_specs] == ["cf-t2-square-shard-2-of-3"]
    from_nodes = re.search(r'--from-nodes "([^"]+)"$', message).group(1)
    rest = local(runner_for(**settings, runtime_params={"run_id": "t3"}))
    rest.run(TOY_SHARDED.from_nodes(*from_nodes.split(",")), toy_sharded_catalog())
    total = json.loads(s3.get_object(Bucket="cf-test", Key="toy/total.json")["Body"].read())
    assert total == {"total": 1.5**2 * sum(i * i for i in range(1, 13)), "shards": 3}


def _keys(prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket="cf-test", Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))
