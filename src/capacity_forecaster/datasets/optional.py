"""Datasets that may be absent: ``server_truth`` for real (not generated) data, a bare export's inventory."""

import logging
from typing import Any

import pandas as pd
from kedro_datasets.pandas import CSVDataset, ParquetDataset

logger = logging.getLogger(__name__)


class OptionalParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` that loads an empty frame, instead of failing, when its file is missing.

    Use it for inputs that only some runs have. The generator's ``server_truth`` exists for synthetic
    fleets but not for a real monitoring export, and ``risk_analysis`` must run either way: its evaluation
    node sees an empty frame and reports that no truth was available. Saving, versioning and every other
    argument behave as in ``pandas.ParquetDataset``.

    Example catalog entry::

        server_truth:
          type: capacity_forecaster.datasets.optional.OptionalParquetDataset
          filepath: ${globals:data_root}/01_raw/server_truth.parquet
    """

    def load(self) -> pd.DataFrame:
        """Loads the Parquet file, or an empty ``DataFrame`` (no rows, no columns) if it is missing."""
        if not self._exists():
            logger.info("%s does not exist: loading an empty frame", self._filepath)
            return pd.DataFrame()
        return super().load()


class OptionalCSVDataset(CSVDataset):
    """``pandas.CSVDataset`` that loads an empty frame with ``columns`` when the file is missing, not failing.

    For a real export that comes without an inventory (e.g. the ``bitbrains`` environment): etl then sees
    every server as unknown and applies ``params:etl.unknown_servers``. Once the file exists it is read.

    Example catalog entry::

        server_inventory:
          type: capacity_forecaster.datasets.optional.OptionalCSVDataset
          filepath: ${globals:data_root}/01_raw/bitbrains_server_inventory.csv
          columns: [server_id, archetype, vcpus, memory_gb, hourly_cost_usd]
    """

    def __init__(self, *, columns: list[str] | None = None, **kwargs: Any) -> None:
        """Creates the dataset; ``columns`` are the empty frame's, the rest as in ``pandas.CSVDataset``."""
        super().__init__(**kwargs)
        self._columns = list(columns or [])

    def load(self) -> pd.DataFrame:
        """Loads the CSV file, or an empty ``DataFrame`` with ``columns`` if it is missing."""
        if not self._exists():
            logger.info(
                "%s does not exist: loading an empty frame with columns %s", self._filepath, self._columns
            )
            return pd.DataFrame(columns=self._columns)
        return super().load()
