"""Splitting a fleet into shards by a stable hash of ``server_id``.

A server's shard depends only on its id and the shard count: the same in every run, process and machine
(Python's ``hash`` is salted per process, so it is not used). Shards are named ``shard-<i>-of-<K>`` with ``i``
from 1 to ``K``; the name carries ``K`` so that partitions of a run with another count are never mixed in.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, cpu_count, delayed

_SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)$")


def shard_name(index: int, shards: int) -> str:
    """``shard-<index>-of-<shards>`` for a 1-based ``index``."""
    if not 1 <= index <= shards:
        raise ValueError(f"shard index {index} is outside 1..{shards}")
    return f"shard-{index}-of-{shards}"


def parse_shard_name(name: str) -> tuple[int, int]:
    """``(index, shards)`` of a ``shard-<i>-of-<K>`` name (a partition key may end in a file suffix)."""
    match = _SHARD_NAME.match(name.rpartition("/")[2].partition(".")[0])
    if not match:
        raise ValueError(f"{name!r} is not a shard name (expected 'shard-<i>-of-<K>')")
    return int(match.group(1)), int(match.group(2))


def shard_of(server_ids: Iterable[Any], shards: int) -> np.ndarray:
    """1-based shard of each server id: CRC-32 of the id's UTF-8 text, modulo ``shards``, plus one."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    ids = pd.Series(list(server_ids) if not isinstance(server_ids, pd.Series) else server_ids).astype(str)
    codes, uniques = pd.factorize(ids)
    per_unique = np.fromiter((zlib.crc32(u.encode("utf-8")) % shards + 1 for u in uniques), dtype="int64")
    return per_unique[codes] if len(codes) else np.empty(0, dtype="int64")


def resolve_shard_count(shards: int | str, n_servers: int, servers_per_shard: int) -> int:
    """The shard count: ``shards`` itself, or for ``"auto"`` one shard per ``servers_per_shard`` servers."""
    if shards == "auto":
        return max(1, math.ceil(n_servers / servers_per_shard))
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer or 'auto', got {shards!r}")
    return shards


def split_by_shard(frame: pd.DataFrame, shards: int, column: str = "server_id") -> dict[str, pd.DataFrame]:
    """Every shard's rows of ``frame`` (an empty frame for a shard without servers), keyed by shard name."""
    assignment = shard_of(frame[column], shards)
    return {
        shard_name(i, shards): frame[assignment == i].reset_index(drop=True) for i in range(1, shards + 1)
    }


def partitions_of_run(partitions: Mapping[str, Any], shards: int) -> dict[str, Any]:
    """The partitions of a ``shards``-way run, checked complete (older runs' partitions are ignored)."""
    wanted = {shard_name(i, shards) for i in range(1, shards + 1)}
    found = {key: value for key, value in partitions.items() if key.split(".")[0] in wanted}
    missing = sorted(wanted - {key.split(".")[0] for key in found})
    if missing:
        raise ValueError(f"missing shard outputs {missing}: rerun those shards (see the resume command)")
    return dict(sorted(found.items(), key=lambda item: parse_shard_name(item[0])[0]))


def partitions_to_run(partitions: Mapping[str, Any], shards: int, shard: int | None) -> dict[str, Any]:
    """The partitions one process works on, keyed by shard name: all of the ``shards``-way run (``shard``
    None, checked complete) or only shard ``shard`` (``modelling.shard=i``: one SageMaker job per shard)."""
    if shard is None:
        chosen = partitions_of_run(partitions, shards)
    else:
        if isinstance(shard, bool) or not isinstance(shard, int):
            raise ValueError(f"shard must be an integer in 1..{shards} or null, got {shard!r}")
        wanted = shard_name(shard, shards)
        chosen = {key: value for key, value in partitions.items() if key.split(".")[0] == wanted}
        if not chosen:
            raise ValueError(f"missing input partition {wanted}: rerun the job that splits the fleet")
    return {shard_name(*parse_shard_name(key)): value for key, value in chosen.items()}


def load_partition(partition: Any) -> Any:
    """A partition's data: ``PartitionedDataset`` loads give callables, in-memory dicts the data itself."""
    return partition() if callable(partition) else partition


def worker_count(shards: int, cores_per_shard: int, limit: int | None = None) -> int:
    """Worker processes for ``shards`` shards whose work uses ``cores_per_shard`` cores each.

    Never more workers than shards, than ``limit`` (None: the usable cores) or than the cores allow without
    oversubscription (``workers * cores_per_shard <= cores``): 1 means one shard after another, in-process.
    """
    cores = cpu_count()
    return max(1, min(shards, limit or cores, cores // max(1, cores_per_shard)))


def map_shards(func: Callable[..., Any], partitions: Mapping[str, Any], workers: int, **kwargs: Any) -> dict:
    """``func(data, **kwargs)`` for each partition's data, keyed like ``partitions``.

    With ``workers`` > 1 the shards run in that many worker processes (joblib's loky, whose workers are
    reused across calls); otherwise here, one after another. Partitions are loaded as they are dispatched.
    """
    if workers > 1 and len(partitions) > 1:
        calls = (delayed(func)(load_partition(value), **kwargs) for value in partitions.values())
        results = Parallel(n_jobs=workers, backend="loky")(calls)
    else:
        results = [func(load_partition(value), **kwargs) for value in partitions.values()]
    return dict(zip(partitions, results, strict=True))
