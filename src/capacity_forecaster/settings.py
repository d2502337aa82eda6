"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html."""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from capacity_forecaster.cloud.hooks import S3DatasetHooks
from capacity_forecaster.cloud.settings import s3_root
from capacity_forecaster.hooks import RunSummaryHooks

CONFIG_LOADER_CLASS = OmegaConfigLoader
# ``oc.env`` lets globals.yml take the data root, bucket and region from CF_* environment variables;
# ``cf.s3_root`` joins bucket and optional prefix into s3://bucket[/prefix] (conf/cloud/globals.yml).
# Parameters merge key by key ("soft"): an environment's parameters file, and a dotted ``--params
# section.key=value``, change only the keys they name. Catalog entries still replace whole entries.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
    "custom_resolvers": {"oc.env": oc.env, "cf.s3_root": s3_root},
}

# S3 datasets (conf/cloud): all-or-nothing saves, clear errors and a bucket check before a run.
# RunSummaryHooks: what ran, where the report is and the headline, after each run (--params quiet=true: none).
HOOKS = (S3DatasetHooks(), RunSummaryHooks())
