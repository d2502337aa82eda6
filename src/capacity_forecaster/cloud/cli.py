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
    from .errors import user_error  # noqa: PLC0415
    from .s3 import make_client  # noqa: PLC0415 - boto3 only when a command runs

    project_path = Path(getattr(metadata, "project_path", None) or Path.cwd())
    try:
        settings, datasets = load_cloud_config(project_path / "conf", env)
    except Exception as exc:  # e.g. CF_BUCKET unset: the message alone, no traceback
        if user_error(exc) is None:
            raise
        raise click.ClickException(str(user_error(exc))) from exc
    client = make_client(settings.region, (settings.fs_args or {}).get("config_kwargs"))
    return settings, datasets, client


@click.group(name="cloud")
def cloud() -> None:
    """The cloud environment's S3 bucket (bucket, prefix and region: conf/cloud/globals.yml)."""
    from capacity_forecaster.extras import MissingExtraError, require  # noqa: PLC0415

    try:
        require("cloud")
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from exc


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
    from .s3 import check_bucket, check_local_format, make_check_client, push_file  # noqa: PLC0415

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
        check_client = make_check_client(settings.region, (settings.fs_args or {}).get("config_kwargs"))
        check_bucket(check_client, bucket, settings.region, prefix=settings.key("raw") + "/")
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
    from .s3 import check_bucket, list_objects, make_check_client  # noqa: PLC0415

    settings, datasets, client = _context(metadata, env)
    root = settings.key()
    try:
        check_client = make_check_client(settings.region, (settings.fs_args or {}).get("config_kwargs"))
        region = check_bucket(
            check_client, settings.bucket, settings.region, prefix=f"{root}/" if root else ""
        )
    except CloudStorageError as exc:
        raise click.ClickException(str(exc)) from exc
    objects = list_objects(client, settings.bucket, f"{root}/" if root else "")
    inventory = build_inventory(objects, settings, datasets, region)
    click.echo(format_inventory(inventory))
    if json_path is not None:
        json_path.write_text(json.dumps(inventory.to_dict(), indent=2) + "\n")


# Container image and IAM role -------------------------------------------------------------------------------
def _project_root(metadata: Any) -> Path:
    return Path(getattr(metadata, "project_path", None) or Path.cwd())


def _aws_clients(region: str, *names: str) -> dict[str, Any]:
    import boto3  # noqa: PLC0415 - boto3 only when a command runs

    session = boto3.session.Session(region_name=region)
    return {name: session.client(name) for name in names}


@cloud.group()
def image() -> None:
    """The jobs' container image: Python 3.11 + the pinned dependencies (Dockerfile), in ECR."""


_REPOSITORY = click.option("--repository", default="capacity-forecaster", show_default=True, help="ECR repo.")
_TAG = click.option("--tag", default=None, help="Image tag (default: deps-<hash of the build context>).")


@image.command(name="build")
@click.option("--codebuild", is_flag=True, help="Build and push on AWS CodeBuild (no local Docker needed).")
@click.option(
    "--service-role-arn",
    envvar="CF_CODEBUILD_ROLE_ARN",
    default=None,
    help="CodeBuild's service role for --codebuild (env CF_CODEBUILD_ROLE_ARN; made by "
    "`kedro cloud setup-role --codebuild`).",
)
@click.option("--poll-seconds", default=15.0, show_default=True, help="--codebuild: wait between checks.")
@click.option("--builder", default=None, help="Container CLI (default: first of docker, podman, finch).")
@_REPOSITORY
@_TAG
@_ENV
@click.pass_obj
def image_build(  # noqa: PLR0917 (click passes options by name)
    metadata: Any,
    codebuild: bool,
    service_role_arn: str | None,
    poll_seconds: float,
    builder: str | None,
    repository: str,
    tag: str | None,
    env: str,
) -> None:
    """Build the image for linux/amd64 (locally, or with --codebuild on AWS, which also pushes it)."""
    from .image import ImageError, build_local, build_remote, find_builder  # noqa: PLC0415

    root = _project_root(metadata)
    try:
        if not codebuild:
            name = build_local(find_builder(builder), root, repository, tag)
            click.echo(f"built {name}; next: kedro cloud image push")
            return
        if not service_role_arn:
            raise click.UsageError("--codebuild needs --service-role-arn (or CF_CODEBUILD_ROLE_ARN)")
        settings, _ = load_cloud_config(root / "conf", env)
        clients = _aws_clients(settings.region, "s3", "ecr", "codebuild")
        uri = build_remote(
            clients, settings, root, service_role_arn, repository=repository, tag=tag, poll_s=poll_seconds
        )
    except ImageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pushed {uri}\nexport CF_SAGEMAKER_IMAGE_URI={uri}")


@image.command(name="push")
@click.option("--builder", default=None, help="Container CLI (default: first of docker, podman, finch).")
@_REPOSITORY
@_TAG
@_ENV
@click.pass_obj
def image_push(  # noqa: PLR0917
    metadata: Any, builder: str | None, repository: str, tag: str | None, env: str
) -> None:
    """Push the built image to ECR (the repository is created if missing) and print its URI."""
    from .image import ImageError, find_builder, push  # noqa: PLC0415

    root = _project_root(metadata)
    settings, _ = load_cloud_config(root / "conf", env)
    try:
        uri = push(_aws_clients(settings.region, "ecr")["ecr"], find_builder(builder), root, repository, tag)
    except ImageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pushed {uri}\nexport CF_SAGEMAKER_IMAGE_URI={uri}")


@cloud.command(name="setup-role")
@click.option("--role-name", default="capacity-forecaster-jobs", show_default=True, help="The jobs' role.")
@click.option("--canvas", is_flag=True, help="Also allow the canvas pipeline's Autopilot calls.")
@click.option(
    "--codebuild", is_flag=True, help="Set up the CodeBuild role of `image build --codebuild` instead."
)
@click.option("--check", is_flag=True, help="Change nothing; report what differs (exit 1 if anything does).")
@_ENV
@click.pass_obj
def setup_role(  # noqa: PLR0917
    metadata: Any, role_name: str, canvas: bool, codebuild: bool, check: bool, env: str
) -> None:
    """Create (or check) the IAM role of the jobs from docs/iam/job-role-*.json (and canvas-policy.json)."""
    from .iam import (  # noqa: PLC0415
        BUILD_ROLE,
        BUILD_ROLE_NAME,
        CANVAS_POLICY,
        JOB_ROLE,
        POLICY_DIR,
        account_id,
        ensure_role,
        placeholder_values,
        role_documents,
    )

    root = _project_root(metadata)
    settings, _ = load_cloud_config(root / "conf", env)
    clients = _aws_clients(settings.region, "iam", "sts")
    values = placeholder_values(settings, account_id(clients["sts"]), role_name)
    template, name = (BUILD_ROLE, BUILD_ROLE_NAME) if codebuild else (JOB_ROLE, role_name)
    trust, policies = role_documents(template, root / POLICY_DIR, values, CANVAS_POLICY if canvas else None)
    arn, changes = ensure_role(
        clients["iam"], name, trust, policies, description=template.description, check_only=check
    )
    for change in changes:
        click.echo(("would " if check else "") + change)
    if check and changes:
        raise click.ClickException(f"role {name} differs from docs/iam ({len(changes)} change(s) needed)")
    click.echo(f"role {name} matches docs/iam" if not changes else f"role {name} is set up")
    variable = "CF_CODEBUILD_ROLE_ARN" if codebuild else "CF_SAGEMAKER_ROLE_ARN"
    click.echo(f"export {variable}={arn}")


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
