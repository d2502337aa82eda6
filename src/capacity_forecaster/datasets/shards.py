"""Datasets for a fleet processed shard by shard (``shard-<i>-of-<K>``, see ``capacity_forecaster.sharding``).

A node that works per shard is a generator: each ``yield`` hands one piece to the catalog, which saves it at
once, so only one shard (or one chunk of the raw export) is in memory at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset
from kedro.io.core import get_filepath_str, get_protocol_and_path
from kedro_datasets.pandas import ParquetDataset

from capacity_forecaster.sharding import parse_shard_name

logger = logging.getLogger(__name__)

_PART = "part-{:05d}.parquet"


class ShardPartsDataset(AbstractDataset[Mapping[str, pd.DataFrame], dict[str, Callable[[], pd.DataFrame]]]):
    """A directory with one sub-directory per shard, each holding the Parquet parts saved to that shard.

    ``save({shard_name: frame, ...})`` adds one part file per shard (``<shard>/part-00000.parquet``, then
    ``part-00001``...), so a generator node can route a large export chunk by chunk. The first save of a run
    (of this dataset instance) empties the directory, so parts of an older run are never mixed in. ``load()``
    returns ``{shard_name: callable}`` like ``PartitionedDataset``: each callable reads that shard's parts (in
    order) into one frame, so a consumer holds one shard at a time.

    Example catalog entry::

        raw_metric_shards:
          type: capacity_forecaster.datasets.shards.ShardPartsDataset
          filepath: ${globals:data_root}/02_intermediate/raw_metric_shards
    """

    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates the dataset on a local path or fsspec URL (``s3://...``).

        Args:
            filepath: Directory of the shards.
            credentials: fsspec credentials (e.g. ``key``/``secret`` for S3).
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Free-form metadata (e.g. the kedro-viz layer); not used by the dataset.
        """
        self._path = str(filepath)
        protocol, self._dir = get_protocol_and_path(self._path)
        self._protocol = protocol
        self._filepath = PurePosixPath(self._dir)  # as in kedro-datasets: the cloud env's S3 guard reads it
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **(fs_args or {}))
        self._parts_saved: dict[str, int] | None = None  # None until the first save of this instance
        self.metadata = metadata

    def save(self, data: Mapping[str, pd.DataFrame]) -> None:
        """Adds one Parquet part per shard in ``data`` (keys are shard names); empty frames are skipped."""
        if self._parts_saved is None:
            if self._fs.exists(self._dir):
                self._fs.rm(self._dir, recursive=True)
            self._parts_saved = {}
        for name, frame in data.items():
            parse_shard_name(name)  # refuses anything that is not a shard name
            if frame.empty:
                continue
            index = self._parts_saved.get(name, 0)
            folder = f"{self._dir}/{name}"
            self._fs.makedirs(folder, exist_ok=True)
            with self._fs.open(f"{folder}/{_PART.format(index)}", mode="wb") as stream:
                frame.to_parquet(stream, index=False)
            self._parts_saved[name] = index + 1

    def load(self) -> dict[str, Callable[[], pd.DataFrame]]:
        """``{shard_name: callable}`` for every shard directory; a callable returns its parts as one frame."""
        if not self._fs.exists(self._dir):
            return {}
        names = [p.rstrip("/").split("/")[-1] for p in self._fs.ls(self._dir, detail=False)]
        shards = sorted((n for n in names if _is_shard_name(n)), key=parse_shard_name)
        return {name: partial(self._load_shard, name) for name in shards}

    def _load_shard(self, name: str) -> pd.DataFrame:
        """One shard's parts concatenated in order, joined in Arrow (one copy into pandas). Parts whose column
        types differ (a chunk of text in a numeric column) are joined by pandas instead."""
        tables = []
        for file in sorted(self._fs.glob(f"{self._dir}/{name}/part-*.parquet")):
            with self._fs.open(file, mode="rb") as stream:
                tables.append(pq.read_table(stream))
        if not tables:
            return pd.DataFrame()
        try:
            table = pa.concat_tables(tables)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        del tables
        return table.to_pandas(self_destruct=True)

    def _exists(self) -> bool:
        return bool(self._fs.exists(self._dir))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._path}


def _is_shard_name(name: str) -> bool:
    try:
        parse_shard_name(name)
    except ValueError:
        return False
    return True


class ShardedParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` (one Parquet file, loaded as one frame) that can be saved shard by shard too.

    Saving a ``DataFrame`` works as in ``pandas.ParquetDataset``. Saving ``{"shard-<i>-of-<K>": frame}``
    on a local disk appends that shard to ``<file>.partial`` through one writer kept open from shard 1 to K
    (each shard encoded once), which becomes the file with shard ``K``. On an object store (S3) each save must
    be complete in itself (the cloud env's guard commits every save in its own S3 transaction): a shard is
    written to ``<file>.parts/`` and saving shard ``K`` copies the parts, row group by row group, into the
    file and removes them. Either way a generator node writes a fleet-sized table while holding one shard in
    memory, and every consumer loads one ordinary Parquet file. Shards must come in order ``1..K``; empty
    frames add nothing. ``save_args`` apply to both ways of saving (``pyarrow.parquet`` writer options such as
    ``use_dictionary`` and ``compression``; ``index`` is ignored when saving shards: they never keep one).

    Example catalog entry::

        clean_server_metrics:
          type: capacity_forecaster.datasets.shards.ShardedParquetDataset
          filepath: ${globals:data_root}/03_primary/clean_server_metrics.parquet
    """

    def __init__(self, **kwargs: Any) -> None:
        """Takes the arguments of ``kedro_datasets.pandas.ParquetDataset``."""
        super().__init__(**kwargs)
        self._next_shard: tuple[int, int] | None = None  # (expected index, K) while shards are being saved
        self._writer: pq.ParquetWriter | None = None  # local disk: the open ``<file>.partial`` of shards 1..K

    def save(self, data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> None:
        """Saves a frame, or one shard (``{shard_name: frame}``); the file is written with shard K."""
        if isinstance(data, pd.DataFrame):
            super().save(data)
            return
        for name, frame in data.items():
            self._save_shard(name, frame)

    def _save_shard(self, name: str, frame: pd.DataFrame) -> None:
        index, shards = parse_shard_name(name)
        expected = self._next_shard or (1, shards)
        if (index, shards) != expected:
            self._next_shard = None
            self._close_writer()
            raise ValueError(f"{self._filepath}: got {name}, expected {expected} (shards are saved in order)")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        last = pa.Table.from_pandas(frame, preserve_index=False) if not frame.empty else None
        self._next_shard = None if index == shards else (index + 1, shards)
        if self._protocol == "file":
            self._append_local(path, last, first=index == 1, final=index == shards)
            return
        parts = f"{path}.parts"
        if index == 1 and self._fs.exists(parts):
            self._fs.rm(parts, recursive=True)  # an interrupted run's parts
        # the last shard is written with the file: a part saved now would not be visible in an S3 transaction
        if index == shards:
            self._combine(parts, path, last)
        elif last is not None:
            self._fs.makedirs(parts, exist_ok=True)
            with self._fs.open(f"{parts}/{name}.parquet", mode="wb") as stream:
                pq.write_table(last, stream, **self._writer_options())

    def _append_local(self, path: str, table: pa.Table | None, first: bool, final: bool) -> None:
        """Appends a shard to ``<path>.partial`` (a new file at shard 1), renamed to ``path`` at shard K."""
        partial = f"{path}.partial"
        if first:
            self._close_writer()  # an interrupted sequence of this instance
            if self._fs.exists(partial):  # unlinked, not truncated: a writer still open on it writes aside
                self._fs.rm(partial)
        if table is not None:
            if self._writer is None:
                self._fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
                self._writer = pq.ParquetWriter(partial, table.schema, **self._writer_options())
            self._writer.write_table(table.cast(self._writer.schema))
        if final:
            if self._writer is None:
                raise ValueError(f"{self._filepath}: every shard was empty, nothing to write")
            self._close_writer()
            os.replace(partial, path)
            logger.info("Wrote %s shard by shard", path)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _writer_options(self) -> dict[str, Any]:
        """``save_args`` as ``pyarrow.parquet`` writer options (without pandas' ``index``)."""
        return {key: value for key, value in self._save_args.items() if key != "index"}

    def _combine(self, parts: str, path: str, last: pa.Table | None) -> None:
        """Copies the parts in shard order, then the last shard, into one file (one row group in memory)."""
        files = sorted(self._fs.glob(f"{parts}/shard-*.parquet"), key=parse_shard_name)
        if not files and last is None:
            raise ValueError(f"{self._filepath}: every shard was empty, nothing to write")
        writer = None
        with self._fs.open(path, mode="wb") as out:
            for file in files:
                with self._fs.open(file, mode="rb") as stream:
                    source = pq.ParquetFile(stream)
                    writer = writer or pq.ParquetWriter(out, source.schema_arrow, **self._writer_options())
                    for group in range(source.num_row_groups):
                        writer.write_table(source.read_row_group(group).cast(writer.schema))
            if last is not None:
                writer = writer or pq.ParquetWriter(out, last.schema, **self._writer_options())
                writer.write_table(last.cast(writer.schema))
            writer.close()
        if files:
            self._fs.rm(parts, recursive=True)
        logger.info("Wrote %s from %d shard(s)", path, len(files) + (last is not None))
