"""Settings: conf/cloud/sagemaker.yml of the project, overrides and every refusal."""

from pathlib import Path

import pytest

from capacity_forecaster.cli import DEFAULT_RUNNERS
from capacity_forecaster.runner import SageMakerRunner
from capacity_forecaster.runner.config import ConfigError, JobResources, SageMakerSettings, load_settings
from capacity_forecaster.runners import SageMakerRunner as Named

PROJECT_CONF = Path(__file__).resolve().parents[2] / "conf"
ROLE = "arn:aws:iam::123456789012:role/cf-jobs"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/capacity-forecaster:1"


@pytest.fixture
def cloud_env(monkeypatch):
    monkeypatch.setenv("CF_BUCKET", "my-bucket")
    monkeypatch.setenv("CF_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("CF_SAGEMAKER_IMAGE_URI", IMAGE)


def test_project_settings_load_with_documented_defaults(cloud_env):
    s = load_settings(PROJECT_CONF, "cloud")
    assert s.role_arn == ROLE
    assert s.s3_prefix == "s3://my-bucket/sagemaker"
    assert (s.instance_type, s.instance_count, s.max_runtime_s) == ("ml.t3.medium", 1, 600)
    assert (s.grouping, s.backend, s.dry_run, s.kedro_env) == ("namespace", "sagemaker", False, "cloud")
    assert s.image == IMAGE
    assert s.resources_for("etl", ()) == JobResources("ml.t3.medium", 1, 30, 600)
    assert s.run_uri("r1") == "s3://my-bucket/sagemaker/runs/r1"


def test_overrides_from_runner_params_are_typed(cloud_env):
    s = load_settings(
        PROJECT_CONF,
        "cloud",
        {
            "max_runtime_s": "900",
            "dry_run": "true",
            "backend": "local",
            "image_uri": "1.dkr.ecr.eu-west-1.amazonaws.com/cf:3.11",
        },
    )
    assert (s.max_runtime_s, s.dry_run, s.backend) == (900, True, "local")
    assert s.image == "1.dkr.ecr.eu-west-1.amazonaws.com/cf:3.11"


def test_cost_estimate_uses_the_price_table(cloud_env):
    s = load_settings(PROJECT_CONF, "cloud")
    assert s.estimate_cost(3600) == pytest.approx(0.05)
    assert (
        SageMakerSettings(
            role_arn=ROLE, s3_prefix="s3://bkt", image_uri=IMAGE, instance_type="ml.x.huge"
        ).estimate_cost(60)
        is None
    )


def test_a_real_submission_needs_a_role(monkeypatch, cloud_env):
    monkeypatch.delenv("CF_SAGEMAKER_ROLE_ARN")
    with pytest.raises(ConfigError, match="set CF_SAGEMAKER_ROLE_ARN"):
        load_settings(PROJECT_CONF, "cloud")
    assert load_settings(PROJECT_CONF, "cloud", {"dry_run": True}).role_arn == ""
    assert load_settings(PROJECT_CONF, "cloud", {"backend": "local"}).backend == "local"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"instance_count": 0}, "instance_count must be a positive integer"),
        ({"shard_retries": -1}, "shard_retries must be an integer >= 0"),
        ({"shards": "many"}, "shards='many' is not a valid int"),
        ({"max_runtime_s": 500000}, "max_runtime_s must be between"),
        ({"grouping": "tags"}, "grouping must be one of"),
        ({"backend": "batch"}, "backend must be one of"),
        ({"s3_prefix": "my-bucket/x"}, "s3_prefix must be s3://"),
        ({"resources": {"modelling": {"instance_typ": "ml.m5.xlarge"}}}, r"resources.modelling: unknown key"),
        ({"resources": {"modelling": {"max_runtime_s": 0}}}, "resources.modelling.max_runtime_s must be"),
        ({"resources": {"modelling": {"instance_type": "m5.xlarge"}}}, "instance_type must look like"),
        ({"resources": {"modelling": {"volume_size_gb": "big"}}}, "volume_size_gb='big' is not a valid int"),
        ({"resources": {"modelling": "ml.m5.xlarge"}}, "resources.modelling must be a mapping"),
        ({"max_runtime_s": "ten"}, "max_runtime_s='ten' is not a valid int"),
        ({"dry_run": "maybe"}, "dry_run='maybe' is not a valid bool"),
        ({"instance": "ml.m5.large"}, r"Unknown SageMaker runner setting\(s\) \['instance'\]"),
    ],
)
def test_bad_settings_are_refused(cloud_env, override, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(PROJECT_CONF, "cloud", override)


def test_a_real_submission_without_an_image_says_which_commands_build_it(monkeypatch, cloud_env):
    monkeypatch.delenv("CF_SAGEMAKER_IMAGE_URI")
    with pytest.raises(ConfigError, match="kedro cloud image build && kedro cloud image push"):
        load_settings(PROJECT_CONF, "cloud")
    assert load_settings(PROJECT_CONF, "cloud", {"dry_run": True}).image.startswith("<no image")
    assert load_settings(PROJECT_CONF, "cloud", {"backend": "local"}).image_uri == ""


def test_resources_by_tag_then_by_group_over_the_defaults(cloud_env):
    s = load_settings(
        PROJECT_CONF,
        "cloud",
        {
            "resources": {
                "heavy": {"instance_type": "ml.m5.xlarge", "volume_size_gb": "50"},
                "modelling": {"max_runtime_s": 3600, "instance_type": "ml.m5.2xlarge"},
            }
        },
    )
    assert s.resources_for("etl", ("heavy",)) == JobResources("ml.m5.xlarge", 1, 50, 600)
    assert s.resources_for("modelling", ("heavy",)) == JobResources("ml.m5.2xlarge", 1, 50, 3600)
    assert s.resources_for("reporting", ()) == s.default_resources
    assert s.estimate_cost(3600, s.resources_for("modelling", ())) == pytest.approx(0.461)


def test_missing_file_is_reported(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "cloud").mkdir()
    with pytest.raises(ConfigError, match="expected .*cloud/sagemaker.yml"):
        load_settings(tmp_path, "cloud")


def test_missing_required_keys_are_reported():
    with pytest.raises(ConfigError, match=r"Missing SageMaker runner setting\(s\) \['s3_prefix'\]"):
        SageMakerSettings.from_mapping({"role_arn": ROLE})


def test_cf_prefix_moves_the_run_artefacts(cloud_env, monkeypatch):
    monkeypatch.setenv("CF_PREFIX", "team-a/capacity")
    assert (
        load_settings(PROJECT_CONF, "cloud").run_uri("r1")
        == "s3://my-bucket/team-a/capacity/sagemaker/runs/r1"
    )


def test_the_issue_names_the_runner_capacity_forecaster_runners_sagemakerrunner():
    assert Named is SageMakerRunner
    assert DEFAULT_RUNNERS["cloud"] == "capacity_forecaster.runner.SageMakerRunner"
