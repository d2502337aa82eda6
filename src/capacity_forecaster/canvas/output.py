"""Parses the Autopilot time-series batch-transform output into the ``forecasts`` schema.

Documented format (SageMaker developer guide, "Batch forecasting" of Autopilot time-series models): the
transform job writes ``<input file name>.out`` under ``TransformOutput.S3OutputPath``
(``canvas_training_data.csv`` -> ``canvas_training_data.csv.out``); it is CSV with a header, one row per item
and forecast timestamp, holding the item identifier and timestamp columns named as in ``TimeSeriesConfig`` and
one column per requested ``ForecastQuantiles`` value (``p10``, ``p50``, ``p90``); other columns (such as
``mean``) are ignored.
"""

import io

import numpy as np
import pandas as pd

from capacity_forecaster.schema import QUANTILES

from .requests import ITEM_ID, ITEM_SEPARATOR, TIMESTAMP

FORECAST_COLUMNS = ["server_id", "metric", "date", "model", *QUANTILES, "is_selected"]


def make_item_id(server_id: pd.Series, metric: pd.Series) -> pd.Series:
    """Joins server and metric into Autopilot's single item identifier ``<server_id>|<metric>``."""
    return server_id.astype(str) + ITEM_SEPARATOR + metric.astype(str)


def split_item_id(item_id: pd.Series) -> pd.DataFrame:
    """Splits ``<server_id>|<metric>`` back into ``server_id`` and ``metric`` (split at the last separator).

    Raises:
        ValueError: If an item identifier has no separator.
    """
    parts = item_id.astype(str).str.rsplit(ITEM_SEPARATOR, n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        bad = (
            item_id[parts.iloc[:, -1].isna()].head(3).tolist()
            if parts.shape[1] == 2
            else item_id.head(3).tolist()
        )
        raise ValueError(f"item_id values without the {ITEM_SEPARATOR!r} separator, e.g. {bad}")
    return pd.DataFrame({"server_id": parts[0], "metric": parts[1]}, index=item_id.index)


def _quantile_column(columns: dict[str, str], quantile: str) -> str:
    """Finds the column of ``quantile`` (``p10`` or ``0.1``), case-insensitively."""
    aliases = (quantile.lower(), f"{int(quantile[1:]) / 100:g}", f"quantile_{int(quantile[1:]) / 100:g}")
    for alias in aliases:
        if alias in columns:
            return columns[alias]
    raise ValueError(f"transform output has no {quantile} column (columns: {sorted(columns.values())})")


def parse_transform_output(content: str | bytes, model: str = "canvas") -> pd.DataFrame:
    """Turns the batch-transform CSV into forecast rows.

    Quantiles are clipped to [0, 100] and sorted per row, so ``p10 <= p50 <= p90`` holds even where a model's
    independent quantile estimates cross (a monotone rearrangement that never worsens the quantile loss).

    Args:
        content: The text (or bytes) of ``<input>.out``.
        model: Value of the ``model`` column.

    Returns:
        Frame with the ``forecasts`` columns, ``is_selected`` False, sorted by server, metric and date.

    Raises:
        ValueError: If the output is empty or lacks the item, timestamp or a quantile column.
    """
    text = content.decode("utf-8") if isinstance(content, bytes) else content
    if not text.strip():
        raise ValueError("transform output is empty")
    raw = pd.read_csv(io.StringIO(text), dtype={ITEM_ID: str})
    columns = {str(c).strip().lower(): c for c in raw.columns}
    for required in (ITEM_ID, TIMESTAMP):
        if required not in columns:
            raise ValueError(f"transform output has no {required} column (columns: {list(raw.columns)})")
    values = np.column_stack(
        [pd.to_numeric(raw[_quantile_column(columns, q)], errors="coerce").to_numpy(float) for q in QUANTILES]
    )
    if np.isnan(values).any():
        raise ValueError(
            f"transform output has {int(np.isnan(values).any(axis=1).sum())} rows without quantiles"
        )
    values = np.sort(np.clip(values, 0.0, 100.0), axis=1)
    keys = split_item_id(raw[columns[ITEM_ID]])
    frame = pd.DataFrame(
        {
            "server_id": keys["server_id"].to_numpy(),
            "metric": keys["metric"].to_numpy(),
            "date": pd.to_datetime(raw[columns[TIMESTAMP]], format="ISO8601", utc=True)
            .dt.tz_convert(None)
            .dt.normalize()
            .astype("datetime64[ns]"),
            "model": model,
            **{q: values[:, i] for i, q in enumerate(QUANTILES)},
            "is_selected": False,
        }
    )
    return frame.sort_values(["server_id", "metric", "date"], kind="stable").reset_index(drop=True)[
        FORECAST_COLUMNS
    ]
