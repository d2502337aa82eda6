"""Where the project lives on S3: bucket, region, optional key prefix and the prefixes of the bucket layout.

This module imports no AWS library: ``settings.py`` registers :func:`s3_root` as the ``cf.s3_root`` config
resolver, and the catalog, the hooks and the ``kedro cloud`` commands all read the same values.
"""

import re
from dataclasses import dataclass
from typing import Any

ENV_BUCKET = "CF_BUCKET"
ENV_PREFIX = "CF_PREFIX"
ENV_REGION = "AWS_REGION"
ENV_SKIP_BUCKET_CHECK = "CF_SKIP_BUCKET_CHECK"

LAYOUT: dict[str, str] = {
    "raw": "raw_server_metrics, server_inventory, future_metrics, server_truth (data_generation or yours)",
    "processed": "clean_server_metrics, server_features, data_quality_report (etl)",
    "forecasts": "forecasts, model_metrics, model_leaderboard (modelling)",
    "models": "fitted forecasters (modelling)",
    "risk_analysis": "risk_register, risk_summary, server_clusters, consolidation_plan, risk_evaluation",
    "reporting": "figures, at_risk_servers, capacity_report (reporting)",
    "canvas": "SageMaker Canvas training data, forecasts and comparison (canvas)",
}
"""Top-level prefixes under the project root on S3, in pipeline order, and what each holds."""

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general purpose buckets)
_BUCKET_RE = re.compile(r"^(?!xn--)(?!sthree-)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class CloudConfigError(ValueError):
    """The cloud environment is configured wrongly (e.g. ``CF_BUCKET`` unset); the message says the fix.

    Raised while Kedro resolves the configuration, where it arrives wrapped in OmegaConf's errors; the
    project's ``kedro run`` prints the message alone (``capacity_forecaster.cli``).
    """


def s3_root(bucket: str, prefix: str = "") -> str:
    """Returns ``s3://<bucket>`` or ``s3://<bucket>/<prefix>`` (the config resolver ``cf.s3_root``).

    Slashes around ``prefix`` are dropped, so ``CF_PREFIX`` may be ``team-a``, ``team-a/`` or ``/team-a/x``.

    Raises:
        CloudConfigError: If ``bucket`` is unset or not a valid S3 bucket name (for example ``s3://bkt`` or
            ``bkt/prefix``).
    """
    bucket = str(bucket or "").strip()
    if not bucket:
        raise CloudConfigError(
            f"{ENV_BUCKET} is not set: the cloud environment needs `export {ENV_BUCKET}=<bucket name>`."
        )
    if not _BUCKET_RE.match(bucket):
        raise CloudConfigError(
            f"{ENV_BUCKET}={bucket!r} is not an S3 bucket name: use only the name (3-63 characters a-z, 0-9, "
            f"'.', '-'), without 's3://' or a path; put a key prefix in {ENV_PREFIX}."
        )
    prefix = "/".join(part for part in str(prefix or "").split("/") if part)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Splits ``s3://bucket/a/b`` (or ``bucket/a/b``, the form s3fs uses) into ``("bucket", "a/b")``."""
    path = uri[len("s3://") :] if uri.startswith("s3://") else uri
    bucket, _, key = path.partition("/")
    return bucket, key


@dataclass(frozen=True)
class CloudSettings:
    """The project's place on S3, read from ``conf/<env>/globals.yml``.

    Attributes:
        bucket: Bucket name (``CF_BUCKET``).
        region: AWS region of the bucket and of the jobs (``AWS_REGION``).
        prefix: Key prefix under which the layout starts, without slashes ("" = bucket root; ``CF_PREFIX``).
        fs_args: Keyword arguments of ``s3fs.S3FileSystem`` (region, botocore retry configuration).
    """

    bucket: str
    region: str
    prefix: str = ""
    fs_args: dict[str, Any] | None = None

    @property
    def root(self) -> str:
        """``s3://bucket[/prefix]``."""
        return s3_root(self.bucket, self.prefix)

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the project root (``prefix/raw/x.csv`` or ``raw/x.csv``)."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def uri(self, *parts: str) -> str:
        """``s3://bucket/<key(parts)>``."""
        return f"s3://{self.bucket}/{self.key(*parts)}"

    @classmethod
    def from_globals(cls, globals_: dict[str, Any]) -> "CloudSettings":
        """Builds the settings from the ``s3`` block of a resolved ``globals.yml``.

        Raises:
            CloudConfigError: If the globals have no ``s3`` block (not a cloud environment).
        """
        block = globals_.get("s3")
        if not isinstance(block, dict) or "bucket" not in block:
            raise CloudConfigError(
                "globals.yml of this environment has no 's3: {bucket, region, prefix, ...}' block: "
                "use the cloud environment (--env cloud)."
            )
        s3_root(block["bucket"])  # validates the name
        prefix = "/".join(part for part in str(block.get("prefix") or "").split("/") if part)
        return cls(
            bucket=block["bucket"], region=block["region"], prefix=prefix, fs_args=block.get("fs_args")
        )
