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

    Items keep their order; a file is closed when the next item would reach the limit.

    Raises:
        ValueError: If one item alone (with the header) reaches the limit, naming it and its size.
    """
    limit = int(max_file_mb * MIB)
    header = ",".join(map(str, frame.columns)).encode() + b"\n"
    body = frame.to_csv(index=False, header=False, lineterminator="\n").encode()
    lines = body.splitlines(keepends=True)
    if len(lines) != len(frame):
        raise ValueError("canvas transform input has values with line breaks; cannot split it by row")
    items = frame[ITEM_ID].astype(str).to_numpy()
    files: list[bytes] = []
    current, size, start = [header], len(header), 0
    for end in range(1, len(lines) + 1):
        if end < len(lines) and items[end] == items[start]:
            continue
        chunk = b"".join(lines[start:end])
        if len(header) + len(chunk) >= limit:
            raise ValueError(
                f"canvas item {items[start]!r} alone is {(len(header) + len(chunk)) / MIB:.2f} MiB, not "
                f"below the transform file limit of {max_file_mb} MiB; raise canvas.transform_max_file_mb "
                "(at most 100) or shorten the history"
            )
        if size + len(chunk) >= limit:
            files.append(b"".join(current))
            current, size = [header], len(header)
        current.append(chunk)
        size += len(chunk)
        start = end
    if len(current) > 1:
        files.append(b"".join(current))
    return files
