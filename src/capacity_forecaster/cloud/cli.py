"""``kedro cloud push`` and ``kedro cloud check``: put your own file where the cloud catalog reads it, and see
what the bucket holds for this project."""

import json
from pathlib import Path
from typing import Any

import click

from .settings import CloudSettings, split_s3_uri


def load_cloud_config(conf_source: str | Path, env: str) -> tuple[CloudSettings, dict[str, str]]:
    """Reads ``env``'s globals and catalog with the project's config loader settings.

    Returns:
        The S3 settings and, for every catalog entry stored on S3, its name -> ``s3://`` URI.
    """
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from capacity_forecaster import settings as project_settings  # noqa: PLC0415

    loader = OmegaConfigLoader(conf_source=str(conf_source), env=env, **project_settings.CONFIG_LOADER_ARGS)
    settings = CloudSettings.from_globals(loader["globals"])
    datasets = {
        name: str(entry["filepath"])
        for name, entry in loader["catalog"].items()
        if isinstance(entry, dict) and str(entry.get("filepath", "")).startswith("s3://") and "{" not in name
    }
    return settings, datasets


def _context(metadata: Any, env: str) -> tuple[CloudSettings, dict[str, str], Any]:
    from .s3 import make_client  # noqa: PLC0415 - boto3 only when a command runs

    project_path = Path(getattr(metadata, "project_path", None) or Path.cwd())
    settings, datasets = load_cloud_config(project_path / "conf", env)
    client = make_client(settings.region, (settings.fs_args or {}).get("config_kwargs"))
    return settings, datasets, client


@click.group(name="cloud")
def cloud() -> None:
    """The cloud environment's S3 bucket (bucket, prefix and region: conf/cloud/globals.yml)."""


_ENV = click.option("--env", "-e", default="cloud", show_default=True, help="Kedro environment on S3.")


@cloud.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="Catalog dataset the file becomes, e.g. raw_server_metrics or server_inventory: uploaded to "
    "the exact key the cloud catalog reads. Without it the file goes to raw/<file name>.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing object.")
@_ENV
@click.pass_obj
def push(metadata: Any, file: Path, dataset: str | None, overwrite: bool, env: str) -> None:
    """Upload a local FILE (your monitoring export or inventory) to the bucket's raw/ prefix."""
    from .errors import CloudStorageError  # noqa: PLC0415
    from .s3 import check_bucket, check_local_format, push_file  # noqa: PLC0415

    settings, datasets, client = _context(metadata, env)
    if dataset is None:
        bucket, key = settings.bucket, settings.key("raw", file.name)
    else:
        raw = {n: u for n, u in datasets.items() if split_s3_uri(u)[1].startswith(settings.key("raw") + "/")}
        if dataset not in raw:
            raise click.BadParameter(
                f"{dataset!r} is not a raw/ dataset of env {env!r}; one of {sorted(raw)}"
            )
        bucket, key = split_s3_uri(raw[dataset])
    try:
        check_local_format(file, key)
        check_bucket(client, bucket, settings.region, prefix=settings.key("raw") + "/")
        size = file.stat().st_size
        sent = [0]

        def progress(n: int) -> None:
            sent[0] += n
            click.echo(f"\r{sent[0] / 2**20:8.1f} / {size / 2**20:.1f} MiB", nl=False, err=True)

        stored = push_file(client, file, bucket, key, overwrite=overwrite, progress=progress)
    except (ValueError, FileExistsError, CloudStorageError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("", err=True)
    click.echo(f"uploaded {file} -> s3://{bucket}/{stored.key} ({stored.size} bytes)")


@cloud.command()
@_ENV
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the inventory as JSON to this file (Kedro's start-up log shares stdout).",
)
@click.pass_obj
def check(metadata: Any, env: str, json_path: Path | None) -> None:
    """Report what is in the bucket for this project: each prefix and each catalog dataset."""
    from .errors import CloudStorageError  # noqa: PLC0415
    from .inventory import build_inventory, format_inventory  # noqa: PLC0415
    from .s3 import check_bucket, list_objects  # noqa: PLC0415

    settings, datasets, client = _context(metadata, env)
    root = settings.key()
    try:
        region = check_bucket(client, settings.bucket, settings.region, prefix=f"{root}/" if root else "")
    except CloudStorageError as exc:
        raise click.ClickException(str(exc)) from exc
    objects = list_objects(client, settings.bucket, f"{root}/" if root else "")
    inventory = build_inventory(objects, settings, datasets, region)
    click.echo(format_inventory(inventory))
    if json_path is not None:
        json_path.write_text(json.dumps(inventory.to_dict(), indent=2) + "\n")


# --- kedro cloud pull-metrics (issue 17) -----------------------------------------------------------------
_PULLED = ("raw_server_metrics", "server_inventory")


def _raw_catalog(project_path: Path, env: str) -> tuple[Any, dict[str, str]]:
    """A catalog of ``env``'s ``raw_server_metrics`` and ``server_inventory`` entries as ``kedro run`` sees
    them, and their file paths."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415
    from kedro.io import DataCatalog  # noqa: PLC0415

    from capacity_forecaster import settings as project_settings  # noqa: PLC0415

    loader = OmegaConfigLoader(
        conf_source=str(project_path / "conf"), env=env, **project_settings.CONFIG_LOADER_ARGS
    )
    entries = {name: loader["catalog"][name] for name in _PULLED}
    return DataCatalog.from_config(entries), {name: str(e["filepath"]) for name, e in entries.items()}


@cloud.command(name="pull-metrics")
@click.option("--days", type=click.IntRange(min=1), required=True, help="Days of history, ending now.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE instance tag to match (repeat; same key = or).")
@click.option("--instance-ids", default=None, help="Comma-separated instance ids (default: all that match).")
@click.option(
    "--statistic",
    type=click.Choice(["p95", "Maximum", "Average"]),
    default="p95",
    show_default=True,
    help="Statistic of each period, for every metric (etl then takes the daily P95 of the periods).",
)
@click.option("--period", type=int, default=3600, show_default=True, help="Seconds per data point.")
@click.option("--region", default=None, help="Region of the instances [default: the env's / boto3's region].")
@click.option("--archetype-tag", default=None, help="Tag whose value is the archetype (default: the family).")
@click.option("--local", is_flag=True, help="Write to data/01_raw (env local) instead of raw/ on S3.")
@_ENV
@click.pass_obj
def pull_metrics(  # noqa: PLR0913
    metadata: Any,
    *,
    days: int,
    tags: tuple[str, ...],
    instance_ids: str | None,
    statistic: str,
    period: int,
    region: str | None,
    archetype_tag: str | None,
    local: bool,
    env: str,
) -> None:
    """Read EC2 instances and their CloudWatch metrics into raw_server_metrics and server_inventory."""
    import boto3  # noqa: PLC0415

    from .cloudwatch import PullMetricsError, make_clients, parse_tags  # noqa: PLC0415
    from .cloudwatch import pull_metrics as pull  # noqa: PLC0415
    from .errors import CloudStorageError  # noqa: PLC0415
    from .prices import load_price_table  # noqa: PLC0415
    from .s3 import check_bucket  # noqa: PLC0415

    project_path = Path(getattr(metadata, "project_path", None) or Path.cwd())
    target_env = "local" if local else env
    try:
        tag_filters = parse_tags(tags)
        if not local:  # fail before any CloudWatch call when the results could not be stored
            settings, _, s3 = _context(metadata, env)
            check_bucket(s3, settings.bucket, settings.region, prefix=settings.key("raw") + "/")
            region = region or settings.region
        region = region or boto3.session.Session().region_name or "us-east-1"
        ec2, cloudwatch = make_clients(region)

        def progress(done: int, total: int) -> None:
            click.echo(f"GetMetricData batch {done}/{total}", err=True)

        result = pull(
            ec2,
            cloudwatch,
            days=days,
            period=period,
            statistic=statistic,
            prices=load_price_table(),
            region=region,
            tags=tag_filters,
            instance_ids=[i.strip() for i in instance_ids.split(",") if i.strip()] if instance_ids else None,
            archetype_tag=archetype_tag,
            progress=progress,
        )
    except (ValueError, PullMetricsError, CloudStorageError) as exc:
        raise click.ClickException(str(exc)) from exc
    catalog, paths = _raw_catalog(project_path, target_env)
    catalog.save("raw_server_metrics", result.raw_server_metrics)
    catalog.save("server_inventory", result.server_inventory)
    inventory, raw = result.server_inventory, result.raw_server_metrics
    click.echo(
        f"{len(inventory)} instance(s) in {region}, {len(raw)} rows ({statistic}, {period} s, {days} days) "
        f"from {result.requests} GetMetricData request(s) -> env {target_env!r}: "
        + ", ".join(f"{name} {path}" for name, path in paths.items())
    )
    unpriced = sorted(inventory.loc[inventory["hourly_cost_usd"].isna(), "instance_type"].unique())
    if unpriced:
        click.echo(f"no price in the shipped table for {region}: {unpriced} (hourly_cost_usd left empty)")
    for (metric, reason), servers in result.missing.groupby(["metric", "reason"], sort=True)["server_id"]:
        shown = ", ".join(servers.iloc[:20]) + (f" and {len(servers) - 20} more" if len(servers) > 20 else "")
        click.echo(f"missing {metric} for {len(servers)} instance(s) ({shown}): {reason}")
