"""conf/cloud mirrors conf/base on S3: a full cloud entry per base dataset, with the same type and options."""

from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from capacity_forecaster import settings as project_settings
from capacity_forecaster.cloud.settings import LAYOUT, CloudSettings, s3_root
from tests.conftest import PROJECT_PATH

CONF = PROJECT_PATH / "conf"

LOCAL_ONLY: set[str] = set()
"""Base datasets that deliberately have no S3 entry (none so far). Add a name here only with a reason."""

PREFIX_OF_PIPELINE = {
    "data_generation": "raw",
    "etl": "processed",
    "modelling": "forecasts",
    "risk_analysis": "risk_analysis",
    "reporting": "reporting",
    "canvas": "canvas",
}
"""Where each pipeline's datasets live in the bucket (fitted models of modelling: models/)."""

LOCATION_KEYS = {"filepath", "fs_args", "credentials"}
PARTITIONED = "partitions.PartitionedDataset"
"""Cloud type of a dataset written one shard per job (``path``: a folder of ``shard-<i>-of-<K>`` files)."""
PARTITION_KEYS = {"type", "path", "dataset", "filename_suffix", "overwrite"}


def _names(env: str, persisted_only: bool = True) -> dict[str, str]:
    """Dataset name (or factory pattern) -> catalog file declaring it, read straight from the YAML.

    With ``persisted_only``, entries without a ``filepath`` or ``path`` (``MemoryDataset`` intermediates) are
    left out.
    """
    names = {}
    for path in sorted((CONF / env).glob("catalog*.yml")):
        for name, entry in (yaml.safe_load(path.read_text()) or {}).items():
            persisted = "filepath" in entry or "path" in entry if isinstance(entry, dict) else False
            if not name.startswith("_") and isinstance(entry, dict) and (persisted or not persisted_only):
                names[name] = path.stem
    return names


def _catalog(env: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("CF_BUCKET", "cf-bucket")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("CF_PREFIX", raising=False)
    monkeypatch.delenv("CF_DATA_ROOT", raising=False)
    return OmegaConfigLoader(conf_source=str(CONF), env=env, **project_settings.CONFIG_LOADER_ARGS)["catalog"]


def test_every_base_dataset_has_a_cloud_entry():
    base, cloud = _names("base"), _names("cloud")
    missing = sorted(set(base) - set(cloud) - LOCAL_ONLY)
    assert not missing, (
        f"conf/base declares {missing} but conf/cloud/catalog.yml has no S3 entry for them: copy each entry "
        "under its pipeline's section with filepath ${globals:s3.root}/<prefix>/... and "
        "fs_args ${globals:s3.fs_args}"
    )
    # Cloud may persist what base keeps in memory (data crossing SageMaker jobs), but declares nothing new.
    undeclared = sorted(set(cloud) - set(_names("base", persisted_only=False)))
    assert not undeclared, f"conf/cloud has entries that conf/base does not declare: {undeclared}"


def test_cloud_entries_keep_base_types_options_and_layers(monkeypatch):
    base, cloud = _catalog("local", monkeypatch), _catalog("cloud", monkeypatch)
    for name, entry in base.items():
        if name in LOCAL_ONLY or "filepath" not in entry:
            continue
        same = {k: v for k, v in entry.items() if k not in LOCATION_KEYS}
        if cloud[name]["type"] == PARTITIONED:  # one file per shard, each of the base entry's type
            inner = {k: v for k, v in entry.items() if k not in LOCATION_KEYS | {"metadata"}}
            assert cloud[name]["dataset"] == inner, name
            same = {k: v for k, v in same.items() if k not in inner}
            partitioned = {k: v for k, v in cloud[name].items() if k not in LOCATION_KEYS | PARTITION_KEYS}
            assert partitioned == same, name
        else:
            assert {k: v for k, v in cloud[name].items() if k not in LOCATION_KEYS} == same, name
        open_args = {k: v for k, v in (entry.get("fs_args") or {}).items() if k.startswith("open_args")}
        cloud_fs = cloud[name]["fs_args"]
        assert {k: cloud_fs.get(k) for k in open_args} == open_args, (
            f"{name}: fs_args open_args differ from base"
        )
        assert cloud_fs["client_kwargs"] == {"region_name": "eu-west-1"}, name
        assert cloud_fs["config_kwargs"]["retries"] == {"mode": "adaptive", "max_attempts": 8}, name
        base_file = Path(entry["filepath"])  # a partitioned dataset's folder is named like the base file
        expected = base_file.stem if cloud[name]["type"] == PARTITIONED else base_file.name
        assert Path(cloud[name].get("filepath", cloud[name].get("path"))).name == expected, (
            f"{name}: file name differs"
        )


def test_cloud_paths_follow_the_bucket_layout(monkeypatch):
    cloud, declared_in = _catalog("cloud", monkeypatch), _names("base", persisted_only=False)
    for name, entry in cloud.items():
        location = entry.get("filepath", entry.get("path"))
        if location is None:
            continue
        key = location.removeprefix("s3://cf-bucket/")
        assert location.startswith("s3://cf-bucket/") and key.split("/")[0] in LAYOUT, name
        pipeline = declared_in[name].removeprefix("catalog_")
        expected = "models" if name.endswith("_forecaster") else PREFIX_OF_PIPELINE[pipeline]
        assert key.split("/")[0] == expected, f"{name} is under {key.split('/')[0]}/, expected {expected}/"


def test_prefix_moves_every_dataset(monkeypatch):
    monkeypatch.setenv("CF_PREFIX", "/team-a/capacity/")
    monkeypatch.setenv("CF_BUCKET", "cf-bucket")
    cloud = OmegaConfigLoader(conf_source=str(CONF), env="cloud", **project_settings.CONFIG_LOADER_ARGS)
    assert (
        cloud["catalog"]["forecasts"]["filepath"]
        == "s3://cf-bucket/team-a/capacity/forecasts/forecasts.parquet"
    )
    settings = CloudSettings.from_globals(cloud["globals"])
    assert (settings.bucket, settings.prefix, settings.root) == (
        "cf-bucket",
        "team-a/capacity",
        "s3://cf-bucket/team-a/capacity",
    )
    assert settings.uri("raw", "x.csv") == "s3://cf-bucket/team-a/capacity/raw/x.csv"


@pytest.mark.parametrize(
    ("bucket", "message"),
    [
        ("", "CF_BUCKET is not set"),
        ("s3://bkt", "not an S3 bucket name"),
        ("bkt/prefix", "put a key prefix in CF_PREFIX"),
        ("Upper_Case", "not an S3 bucket name"),
    ],
)
def test_bad_bucket_names_are_refused(bucket, message):
    with pytest.raises(ValueError, match=message):
        s3_root(bucket)


def test_missing_bucket_variable_stops_the_cloud_env(monkeypatch):
    monkeypatch.delenv("CF_BUCKET", raising=False)
    with pytest.raises(Exception, match="CF_BUCKET is not set"):
        OmegaConfigLoader(conf_source=str(CONF), env="cloud", **project_settings.CONFIG_LOADER_ARGS)


def test_s3_datasets_get_region_and_retry_config(kedro_session, monkeypatch):
    monkeypatch.setenv("CF_BUCKET", "cf-bucket")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    catalog = kedro_session(env="cloud").load_context().catalog
    fs = catalog["raw_server_metrics"]._delegate._fs  # MetricsExportDataset delegates to a CSVDataset
    assert fs.client_kwargs["region_name"] == "eu-west-1"
    assert fs.config_kwargs["retries"] == {"mode": "adaptive", "max_attempts": 8}
    assert catalog["forecasts"]._fs.config_kwargs["retries"]["mode"] == "adaptive"
