"""Input of the Autopilot batch transform: each item's history plus its future regressor rows, cut into CSV
files of whole items that each fit one transform request.

Why whole items per file: the transform sends each file as one request (``SplitType`` ``None``: "request
payloads contain the entire contents of an input object", botocore's ``TransformInput.SplitType``), and a
time-series model needs an item's whole history in the request that forecasts it. Why below a limit:
``MaxPayloadInMB`` "must be greater than, or equal to, the size of a single record" and "cannot be greater
than 100 MB" (botocore's ``CreateTransformJob.MaxPayloadInMB``); its default, 6 MB, is what one whole-fleet
file broke. Future rows: the regressors Autopilot trained with are needed for the forecast days too, so every
item gets ``horizon`` rows after its last day with the calendar flags filled and the target left empty.
"""

import numpy as np
import pandas as pd

from capacity_forecaster.calendar import calendar_features

from .requests import ITEM_ID, TARGET, TIMESTAMP

MIB = 1_048_576
"""SageMaker's MB in ``MaxPayloadInMB`` (record size in bytes / 1,048,576)."""


def add_future_regressors(  # noqa: PLR0917 (one argument per parameter leaf)
    training: pd.DataFrame,
    horizon: int,
    regressors: list[str],
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> pd.DataFrame:
    """Appends ``horizon`` days per item after its own last day: regressor flags set, target empty.

    The flags come from the same business calendar (``capacity_forecaster.calendar``) and window lengths that
    etl used for the history, so training and forecast rows mean the same thing.

    Returns:
        The training rows followed by the future rows of each item, sorted by item and day.
    """
    last = pd.to_datetime(training.groupby(ITEM_ID, sort=True)[TIMESTAMP].max())
    steps = pd.to_timedelta(range(1, int(horizon) + 1), unit="D")
    future = pd.DataFrame(
        {
            ITEM_ID: last.index.repeat(len(steps)),
            "date": (last.to_numpy()[:, None] + steps.to_numpy()[None, :]).ravel(),
        }
    )
    if regressors:
        days = pd.DatetimeIndex(future["date"].unique()).sort_values()
        flags = calendar_features(days, country, month_end_business_days, quarter_end_business_days)
        flags = flags.set_index("date")[regressors].astype(bool).astype("int8")
        future = future.join(flags, on="date")
    future[TIMESTAMP] = future.pop("date").dt.strftime("%Y-%m-%d")
    future[TARGET] = float("nan")
    rows = pd.concat([training, future[training.columns]], ignore_index=True)
    return rows.sort_values([ITEM_ID, TIMESTAMP], kind="stable").reset_index(drop=True)


def split_whole_items(frame: pd.DataFrame, max_file_mb: float) -> list[bytes]:
    """CSV files (header on each) holding whole items, each smaller than ``max_file_mb`` MiB.

    Items keep their order; a file is closed when the next item would reach the limit. The CSV is rendered
    once and cut at item boundaries (byte offsets of the line ends), so the cost is one ``to_csv``.

    Raises:
        ValueError: If one item alone (with the header) reaches the limit, naming it and its size, or if an
            item's rows are not contiguous.
    """
    limit = int(max_file_mb * MIB)
    header = ",".join(map(str, frame.columns)).encode() + b"\n"
    body = frame.to_csv(index=False, header=False, lineterminator="\n").encode()
    line_ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == ord("\n")) + 1
    if len(line_ends) != len(frame):
        raise ValueError("canvas transform input has values with line breaks; cannot split it by row")
    items = frame[ITEM_ID].astype(str).to_numpy()
    first_rows = np.flatnonzero(np.r_[True, items[1:] != items[:-1]]) if len(items) else np.array([], int)
    if len(first_rows) != len(set(items)):
        raise ValueError("canvas transform input must hold each item's rows together (sort by item_id)")
    starts = np.r_[0, line_ends][first_rows]
    ends = np.r_[starts[1:], len(body)]
    files: list[bytes] = []
    file_start = None
    for name, start, end in zip(items[first_rows], starts, ends, strict=True):
        if len(header) + end - start >= limit:
            raise ValueError(
                f"canvas item {name!r} alone is {(len(header) + end - start) / MIB:.2f} MiB, not "
                f"below the transform file limit of {max_file_mb} MiB; raise canvas.transform_max_file_mb "
                "(at most 100) or shorten the history"
            )
        if file_start is None:
            file_start = start
        elif len(header) + end - file_start >= limit:
            files.append(header + body[file_start:start])
            file_start = start
    if file_start is not None:
        files.append(header + body[file_start:])
    return files
