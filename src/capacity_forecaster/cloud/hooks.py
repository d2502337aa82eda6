"""Kedro hooks that make S3 datasets fail clearly and never leave half-written objects.

Design: no dataset class is replaced (the cloud catalog keeps the base types). For each catalog dataset
whose filesystem is S3, :func:`guard_dataset` wraps that *instance's* ``load`` and ``save``:

- ``save`` runs inside an fsspec transaction on the dataset's filesystem, so the object is committed only when
  the whole write succeeded. Without it, an exception while writing (a value ``json`` cannot serialise, a
  failed multipart part, an interrupt) still closes the s3fs file, which uploads what was written so far as if
  it were complete. In a transaction s3fs aborts the multipart upload instead and the previous object stays.
  SIGTERM during a save (a stopped job) raises too, so the upload is aborted before the process ends
  (:mod:`.signals`). Saves of guarded datasets are serialised by one lock, because a filesystem has one
  transaction at a time.
- failures whose cause is S3 (a server error included, or, on load, an object that cannot be parsed) are
  re-raised as :class:`CloudDatasetError` naming the dataset, its ``s3://`` URI, the service's reason and what
  to do (for a dataset not written yet: the pipelines to run, or the ``kedro cloud push`` for a raw one).
- a kedro-datasets ``PartitionedDataset`` (the per-shard datasets) is saved by one partition dataset per
  partition, made inside its ``save``. Each partition dataset it makes is guarded too: its writes join one
  transaction that spans the whole ``save``, so a failure in any partition commits none of them (the
  partitions saved before stay as they were), and its load and save failures name the partition's URI.
  ``overwrite: true`` deletes the old partitions only after the new ones are committed (kedro-datasets
  deletes them first, so a failed save would leave none). Limit: S3 cannot commit several objects at once;
  if completing one partition's upload fails after another's succeeded, the committed ones stay (the
  error names the one that failed).

Before a run, :meth:`S3DatasetHooks.before_pipeline_run` checks each bucket the pipeline uses once (exists,
readable, in the configured region, reachable within seconds), so a wrong ``CF_BUCKET``, missing
permission, region or endpoint fails before any node runs, and before the SageMaker runner submits a paid
job. ``CF_SKIP_BUCKET_CHECK=1`` skips that check (e.g. for a dry run that only prints job specifications on a
machine without AWS access).
"""

import importlib
import logging
import os
import pkgutil
import posixpath
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from copy import deepcopy
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_datasets.partitions import PartitionedDataset

from .errors import NO_SUCH_BUCKET, NO_SUCH_KEY, CloudDatasetError, S3Problem, classify, classify_unreadable
from .settings import ENV_SKIP_BUCKET_CHECK, split_s3_uri
from .signals import sigterm_raises

logger = logging.getLogger(__name__)

_SAVE_LOCK = threading.RLock()
_GUARDED = "_cf_s3_guarded"
_S3_PROTOCOLS = ("s3", "s3a", "s3n")


def _storage(dataset: Any) -> Any:
    """The object that holds the fsspec filesystem: the dataset, or the dataset it delegates to (a project
    dataset such as ``MetricsExportDataset`` wraps a kedro-datasets dataset in ``_delegate``)."""
    for _ in range(3):
        if hasattr(dataset, "_fs") and hasattr(dataset, "_protocol"):
            return dataset
        dataset = getattr(dataset, "_delegate", None)
    return None


def s3_uri(dataset: Any) -> str | None:
    """``s3://bucket/key`` of a filesystem-backed dataset on S3 (the folder of a ``PartitionedDataset``), or
    ``None`` for any other dataset."""
    if isinstance(dataset, PartitionedDataset):
        if dataset._protocol not in _S3_PROTOCOLS:
            return None
        return f"s3://{str(dataset._path).split('://', 1)[1].strip('/')}"
    storage = _storage(dataset)
    if (
        storage is None
        or storage._protocol not in _S3_PROTOCOLS
        or getattr(storage, "_filepath", None) is None
    ):
        return None
    return f"s3://{str(storage._filepath).lstrip('/')}"


def _filesystem(dataset: Any) -> Any:
    """The fsspec filesystem of an S3 dataset. A ``PartitionedDataset`` gets it from fsspec's instance cache
    on each use, which holds one instance per thread."""
    if isinstance(dataset, PartitionedDataset):
        return dataset._filesystem
    return _storage(dataset)._fs


def _region(dataset: Any) -> str:
    return str((getattr(_filesystem(dataset), "client_kwargs", None) or {}).get("region_name", ""))


def guard_dataset(name: str, dataset: Any) -> bool:
    """Wraps ``dataset.load``/``dataset.save`` of an S3 dataset in place; returns whether it is guarded.

    Idempotent; datasets not on S3, and ``PartitionedDataset``s whose partitions are not filesystem-backed
    datasets, are left untouched.
    """
    uri = s3_uri(dataset)
    if uri is None:
        return False
    if getattr(dataset, _GUARDED, False):
        return True
    if isinstance(dataset, PartitionedDataset):
        if s3_uri(_partition_probe(dataset)) is None:
            return False
        _guard_partitioned(name, dataset, uri)
    else:
        _guard_file(name, dataset, uri)
    setattr(dataset, _GUARDED, True)
    return True


def _guard_file(name: str, dataset: Any, uri: str) -> None:
    """One object per save: the save is committed in a transaction of its own."""
    region = _region(dataset)
    storage = _storage(dataset)
    fs = storage._fs
    save = dataset.save

    def guarded_save(data: Any) -> None:
        try:
            with (
                _save_failures_named(name, uri, region),
                sigterm_raises(f"saving {name!r} to {uri}"),
                _SAVE_LOCK,
                fs.transaction,
                _saving_version_is_latest(storage),
            ):
                save(data)
        finally:
            fs.invalidate_cache()
            if getattr(storage, "_version", None) is not None:
                storage._clear_version_cache()

    dataset.load, dataset.save = _guarded_load(name, uri, fs, region, dataset.load), guarded_save


def _guarded_load(name: str, uri: str, fs: Any, region: str, load: Callable[[], Any]) -> Callable[[], Any]:
    """``load`` raising :class:`CloudDatasetError` when S3 is the cause or the object cannot be parsed."""

    def guarded_load() -> Any:
        try:
            return load()
        except Exception as exc:
            problem = classify(exc) or _no_partitions(exc) or classify_unreadable(exc)
            if problem.code == NO_SUCH_KEY:
                problem = _missing_bucket(fs, uri) or problem.with_action(_how_to_create(name))
            raise CloudDatasetError(name, uri, "load", problem, region) from exc

    return guarded_load


@contextmanager
def _save_failures_named(name: str, uri: str, region: str) -> Iterator[None]:
    """Re-raises an S3 failure as :class:`CloudDatasetError` naming ``uri``. Other errors (data the format
    cannot hold: nothing was committed) and one that already names a partition pass unchanged."""
    try:
        yield
    except Exception as exc:
        problem = None if isinstance(exc, CloudDatasetError) else classify(exc)
        if problem is None:
            raise
        raise CloudDatasetError(name, uri, "save", problem, region) from exc


def _no_partitions(exc: Exception) -> S3Problem | None:
    """A ``PartitionedDataset`` with nothing under its folder (kedro-datasets' ``DatasetError``)."""
    return S3Problem(NO_SUCH_KEY, str(exc)) if str(exc).startswith("No partitions found") else None


def _partition_probe(dataset: PartitionedDataset) -> Any:
    """A partition dataset as ``dataset`` makes them (never loaded or saved), to see where it stores data."""
    config = deepcopy(dataset._dataset_config)
    config[dataset._filepath_arg] = dataset._join_protocol(dataset._partition_to_path("probe"))
    return dataset._dataset_type(**config)


class _PartitionsSave:
    """The save of a guarded ``PartitionedDataset`` in progress: one transaction on every filesystem its
    partitions are written with (normally one), and the keys written."""

    def __init__(self) -> None:
        self._transactions: ExitStack | None = None
        self._filesystems: list[Any] = []
        self.written: set[str] = set()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commits every partition written inside when the block succeeds, none when it raises."""
        self.written, self._filesystems = set(), []
        try:
            with ExitStack() as transactions:
                self._transactions = transactions
                yield
        finally:
            self._transactions = None
            for fs in self._filesystems:
                fs.invalidate_cache()

    def join(self, fs: Any, key: str) -> None:
        """Called by each partition's save: its writes on ``fs`` to ``key`` are part of the transaction."""
        if not fs._intrans:
            self._transactions.enter_context(fs.transaction)
            self._filesystems.append(fs)
        self.written.add(key)


def _guard_partitioned(name: str, dataset: PartitionedDataset, uri: str) -> None:
    """A save writes all partitions or none; partition loads and saves name the partition's URI."""
    region = _region(dataset)
    saving = _PartitionsSave()
    save, make = dataset.save, dataset._dataset_type

    def make_partition(**config: Any) -> Any:
        return _guard_partition(name, make(**config), saving)

    def guarded_save(data: dict[str, Any]) -> None:
        fs = dataset._filesystem
        try:
            with (
                _save_failures_named(name, uri, region),
                sigterm_raises(f"saving {name!r} to {uri}/"),
                _SAVE_LOCK,
                _replacing_after_commit(dataset, fs, saving),
                saving.transaction(),
            ):
                save(data)
        finally:
            dataset._invalidate_caches()

    make_partition.__name__ = make.__name__  # PartitionedDataset's description shows the type's name
    dataset._dataset_type = make_partition
    dataset.load = _guarded_load(name, uri, _filesystem(dataset), region, dataset.load)
    dataset.save = guarded_save


def _guard_partition(name: str, partition: Any, saving: _PartitionsSave) -> Any:
    """Guards one partition dataset of the partitioned dataset ``name`` (its folder's URI aside, such as the
    placeholder ``PartitionedDataset`` makes for its description, which is left as it is)."""
    uri = s3_uri(partition)
    if uri is None:
        return partition
    storage = _storage(partition)
    fs, region, save = storage._fs, _region(partition), partition.save

    def guarded_save(data: Any) -> None:
        version = getattr(storage, "_version", None)
        key = storage._get_versioned_path(storage.resolve_save_version()) if version else storage._filepath
        saving.join(fs, str(key))
        with _save_failures_named(name, uri, region), _saving_version_is_latest(storage):
            save(data)

    partition.load, partition.save = _guarded_load(name, uri, fs, region, partition.load), guarded_save
    return partition


@contextmanager
def _replacing_after_commit(dataset: PartitionedDataset, fs: Any, saving: _PartitionsSave) -> Iterator[None]:
    """For ``overwrite: true``: kedro-datasets deletes the folder before writing the new partitions; here
    the old objects that the save did not rewrite are deleted once the new partitions are committed."""
    if not dataset._overwrite:
        yield
        return
    old = set(fs.find(fs._strip_protocol(dataset._normalized_path)))
    dataset._overwrite = False
    try:
        yield
    finally:
        dataset._overwrite = True
    stale = sorted(old - saving.written)
    if stale:
        fs.rm(stale)


@contextmanager
def _saving_version_is_latest(storage: Any) -> Iterator[None]:
    """Inside a transaction the new version is not visible yet, and a versioned dataset's save ends by looking
    up the latest version to compare with the one it saved (``VersionNotFoundError`` on a first save). For the
    duration of the save, the version being saved is reported as the latest, which it is once committed."""
    if getattr(storage, "_version", None) is None:
        yield
        return
    storage._fetch_latest_load_version = storage.resolve_save_version
    try:
        yield
    finally:
        del storage._fetch_latest_load_version


def _missing_bucket(fs: Any, uri: str) -> S3Problem | None:
    """s3fs reports a missing object and a missing bucket alike on load; listing the key's folder tells them
    apart (``None`` when the bucket exists or cannot be listed)."""
    try:
        fs.ls(posixpath.dirname(uri[len("s3://") :]), refresh=True)
    except FileNotFoundError as exc:
        problem = classify(exc)
        return problem if problem is not None and problem.code == NO_SUCH_BUCKET else None
    except Exception:  # noqa: BLE001 - e.g. listing not allowed: keep the original diagnosis
        return None
    return None


def _all_pipelines() -> dict[str, Any]:
    """Every pipeline of the project (``pipelines/<name>/create_pipeline``), also during a run of a few:
    ``kedro run --pipelines x`` makes Kedro's registry load only ``x``."""
    from kedro.framework.project import PACKAGE_NAME  # noqa: PLC0415

    package = importlib.import_module(f"{PACKAGE_NAME}.pipelines")
    return {
        module.name: importlib.import_module(f"{package.__name__}.{module.name}").create_pipeline()
        for module in pkgutil.iter_modules(package.__path__)
        if module.ispkg
    }


def _how_to_create(name: str) -> str:
    """What to run so that dataset ``name`` exists on S3: the registered pipelines that write it and the ones
    they read from, down to the raw inputs (outputs of a pipeline without inputs, such as data_generation,
    which can also be pushed). Empty (the general hint applies) when no registered pipeline writes it."""
    try:
        registry = _all_pipelines()
    except Exception:  # noqa: BLE001 - no project configured (a dataset used on its own)
        return ""

    def is_source(pipe: Any) -> bool:
        return not [ds for ds in pipe.inputs() if not ds.startswith("params:") and ds != "parameters"]

    def writers(dataset: str) -> list[str]:
        return [key for key, pipe in registry.items() if dataset in pipe.all_outputs()]

    order: list[str] = []

    def visit(dataset: str) -> None:
        for key in writers(dataset)[:1]:
            if key in order or is_source(registry[key]):
                continue
            for upstream in sorted(registry[key].inputs()):
                visit(upstream)
            order.append(key)

    visit(name)
    producers = writers(name)
    if producers and is_source(registry[producers[0]]):
        return (
            f"nothing has been uploaded for {name!r} yet: push your file with `kedro cloud push <file> "
            f"--dataset {name}` (for a synthetic test fleet instead, `kedro run --env cloud --pipelines "
            f"{producers[0]}` writes every raw dataset)"
        )
    if not order:
        return ""
    return (
        f"{name!r} has not been written yet: the {order[-1]} pipeline writes it. Run it with the pipelines "
        f"it depends on: `kedro run --env cloud --pipelines {','.join(order)}` (the raw inputs must be on S3 "
        "first; `kedro cloud check` lists what the bucket holds)"
    )


def _buckets(catalog: Any, names: set[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """bucket -> (common key prefix of its datasets, s3fs options) for the S3 datasets among ``names``."""
    keys: dict[str, list[str]] = {}
    options: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        dataset = _get(catalog, name)
        uri = s3_uri(dataset)
        if uri is None:
            continue
        bucket, key = split_s3_uri(uri)
        keys.setdefault(bucket, []).append(key)
        fs = _filesystem(dataset)
        options.setdefault(
            bucket,
            {"region": (fs.client_kwargs or {}).get("region_name"), "config": dict(fs.config_kwargs or {})},
        )
    result = {}
    for bucket, bucket_keys in keys.items():
        folders = [posixpath.dirname(k) for k in bucket_keys]
        common = posixpath.commonpath(folders) if all(folders) else ""
        result[bucket] = (f"{common}/" if common else "", options[bucket])
    return result


def _get(catalog: Any, name: str) -> Any:
    try:
        return catalog[name] if name in catalog else None
    except Exception:  # noqa: BLE001 - a dataset that cannot even be built is reported by Kedro itself
        return None


class S3DatasetHooks:
    """Registered in ``settings.HOOKS``; does nothing for catalogs without S3 datasets (the local env)."""

    @hook_impl
    def after_catalog_created(self, catalog: Any, conf_catalog: dict[str, Any]) -> None:
        """Guards every explicitly configured S3 dataset (also in notebooks and ``catalog.load``)."""
        for name, config in conf_catalog.items():
            if not isinstance(config, dict):
                continue
            location = str(config.get("filepath") or config.get("path") or "")  # path: PartitionedDataset
            if location.startswith(("s3://", "s3a://")):
                dataset = _get(catalog, name)
                if dataset is not None:
                    guard_dataset(name, dataset)

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        """Guards the pipeline's S3 datasets (factory-made ones included) and checks each bucket once.

        Raises:
            CloudStorageError: If a bucket is missing, not readable with the current credentials, in
                another region than the configured one, or S3 cannot be reached.
        """
        names = set(pipeline.datasets())
        for name in names:
            dataset = _get(catalog, name)
            if dataset is not None:
                guard_dataset(name, dataset)
        buckets = _buckets(catalog, names)
        if not buckets:
            return
        if os.environ.get(ENV_SKIP_BUCKET_CHECK, "").lower() in ("1", "true", "yes"):
            logger.info("%s is set: S3 buckets are not checked before the run", ENV_SKIP_BUCKET_CHECK)
            return
        from .s3 import check_bucket, make_check_client  # noqa: PLC0415 - boto3 only when S3 is used

        for bucket, (prefix, options) in buckets.items():
            client = make_check_client(options["region"], options["config"])
            region = check_bucket(client, bucket, options["region"], prefix=prefix)
            logger.info(
                "S3 bucket %s (region %s) is reachable for s3://%s/%s", bucket, region, bucket, prefix
            )
