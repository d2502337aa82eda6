"""The EC2 price table shipped with the code (``ec2_prices.csv``): on-demand USD per hour, vCPUs and memory
per region and instance type, with its price date and source in the file's header comments.

``kedro cloud pull-metrics`` prices the inventory with it; risk_analysis reads it through the catalog
(``ec2_price_table``, a :class:`PriceTableDataset`) to right-size servers.
"""

from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

PRICE_COLUMNS: tuple[str, ...] = (
    "region",
    "instance_type",
    "family",
    "vcpus",
    "memory_gb",
    "hourly_cost_usd",
)
"""Columns of a price table (one row per region and instance type)."""


def load_price_table(filepath: str | Path | None = None) -> pd.DataFrame:
    """Reads a price table: the shipped ``ec2_prices.csv`` by default, or a CSV with the same columns.

    Raises:
        ValueError: If a column is missing or a (region, instance_type) pair appears twice.
    """
    source = filepath or resources.files("capacity_forecaster.cloud").joinpath("ec2_prices.csv")
    with open(str(source), encoding="utf-8") as stream:
        table = pd.read_csv(stream, comment="#")
    missing = [c for c in PRICE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"price table {source}: column(s) {missing} not found (columns: {list(table.columns)}); "
            f"it needs {list(PRICE_COLUMNS)}"
        )
    twice = table.duplicated(["region", "instance_type"], keep=False)
    if twice.any():
        raise ValueError(
            f"price table {source}: (region, instance_type) listed more than once, e.g. "
            f"{table.loc[twice, ['region', 'instance_type']].head(3).to_dict(orient='records')}"
        )
    return table[list(PRICE_COLUMNS)]


class PriceTableDataset(AbstractDataset[pd.DataFrame, None]):
    """Read-only dataset of a price table: the one shipped with the package, or ``filepath`` when given.

    Example catalog entry::

        ec2_price_table:
          type: capacity_forecaster.cloud.prices.PriceTableDataset
          # filepath: conf/local/my_prices.csv   # same columns, e.g. your negotiated prices
    """

    def __init__(self, *, filepath: str | None = None, metadata: dict[str, Any] | None = None) -> None:
        """Creates the dataset; without ``filepath`` it loads the shipped ``ec2_prices.csv``."""
        self._filepath = filepath
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        """Loads the table (see :func:`load_price_table`)."""
        return load_price_table(self._filepath)

    def save(self, data: None) -> None:
        """Refuses: the table is an input."""
        raise DatasetError("PriceTableDataset is read-only: edit the CSV it reads instead")

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath or "capacity_forecaster/cloud/ec2_prices.csv"}
