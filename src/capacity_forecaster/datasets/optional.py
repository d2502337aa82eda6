"""A Parquet dataset that may be absent, such as ``server_truth`` for real (not generated) data."""

import logging

import pandas as pd
from kedro_datasets.pandas import ParquetDataset

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
