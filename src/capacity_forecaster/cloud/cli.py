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
