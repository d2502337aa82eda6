"""Nodes of the canvas pipeline: Autopilot training data, Canvas (or local stand-in) forecasts, comparison.

``forecast_with_autopilot`` is the one node that talks to AWS, through ``capacity_forecaster.canvas.client``:
it receives the training frame (the same data the catalog persists as ``canvas_training_data``), uploads it to
a per-run S3 staging prefix (``params:canvas.s3_prefix``), trains, forecasts, cleans up and returns plain
data. Every other node is pure pandas.
"""

import logging
import math

import numpy as np
import pandas as pd

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.canvas.ensemble import common_folds, ensemble_forecasts, ensemble_weights
from capacity_forecaster.canvas.metrics import score_forecasts, seasonal_naive_scale
from capacity_forecaster.canvas.output import FORECAST_COLUMNS, make_item_id, split_item_id
from capacity_forecaster.canvas.requests import ITEM_ID, TARGET, TIMESTAMP, AutopilotSettings
from capacity_forecaster.canvas.transform_input import add_future_regressors
from capacity_forecaster.keys import common_categories
from capacity_forecaster.schema import METRICS, QUANTILES

logger = logging.getLogger(__name__)
KEYS = ["server_id", "metric"]
_CALENDAR_FLAGS = ("is_end_of_quarter", "is_month_end", "is_holiday")
"""The 0/1 flags of ``calendar_features`` that can be Autopilot regressors."""


def export_canvas_training_data(  # noqa: PLR0917 (one argument per parameter leaf)
    clean_server_metrics: pd.DataFrame,
    regressors: list[str],
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
    enabled: bool = True,
    max_rows_when_disabled: int | None = None,
) -> pd.DataFrame:
    """Writes the history in Autopilot's time-series layout: one row per item and day.

    The regressors are flags of the business calendar (``capacity_forecaster.calendar.calendar_features``,
    as in etl's ``server_features``), computed once per day of the history and looked up per row: the export
    never needs the wide feature table.

    Args:
        clean_server_metrics: The clean history (``server_id``, ``metric``, ``date``, ``value``).
        regressors: Calendar flag columns to pass along as 0/1 regressors (``params:canvas.regressors``).
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window length (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).
        enabled: ``params:canvas.enabled``: Autopilot needs the export.
        max_rows_when_disabled: With Autopilot off, a history longer than this many rows is not exported
            (``params:canvas.export_max_rows_when_disabled``; null: always exported): the local stand-in never
            reads it, and on a 10,000-server fleet it is a multi-GB CSV that takes minutes to write.

    Returns:
        Frame ``item_id`` (``<server_id>|<metric>``), ``timestamp`` (``YYYY-MM-DD``), ``target_value`` (NaN
        inside unfilled long gaps) and one column per regressor, sorted by item and day; empty (same
        columns) when Autopilot is off and the history is longer than ``max_rows_when_disabled``.

    Raises:
        ValueError: If a history column is missing or a regressor is not a calendar flag.
    """
    missing = sorted({"server_id", "metric", "date", "value"} - set(clean_server_metrics.columns))
    if missing:
        raise ValueError(f"clean_server_metrics lacks columns {missing} needed by the canvas export")
    unknown = sorted(set(regressors) - set(_CALENDAR_FLAGS))
    if unknown:
        raise ValueError(
            f"params:canvas.regressors {unknown} are not calendar flags; use some of {list(_CALENDAR_FLAGS)}"
        )
    rows = len(clean_server_metrics)
    if not enabled and max_rows_when_disabled is not None and rows > max_rows_when_disabled:
        logger.warning(
            "canvas export skipped: Autopilot is off (params canvas.enabled) and the history has %d rows, "
            "more "
            "than params canvas.export_max_rows_when_disabled=%d; canvas_training_data is written empty "
            "(run with canvas.enabled=true, or raise the limit, to get the Autopilot CSV)",
            rows,
            max_rows_when_disabled,
        )
        columns = {ITEM_ID: "str", TIMESTAMP: "str", TARGET: "float64", **dict.fromkeys(regressors, "int8")}
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
    dates = pd.to_datetime(clean_server_metrics["date"])
    flags = _calendar_flags(dates, regressors, country, month_end_business_days, quarter_end_business_days)
    training = pd.DataFrame(
        {
            ITEM_ID: make_item_id(clean_server_metrics["server_id"], clean_server_metrics["metric"]),
            TIMESTAMP: dates.dt.strftime("%Y-%m-%d"),
            TARGET: clean_server_metrics["value"].astype("float64").round(4),
            **flags,
        }
    )
    training = training.sort_values([ITEM_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    logger.info(
        "canvas export: %d items, %d rows, %s to %s",
        training[ITEM_ID].nunique(),
        len(training),
        training[TIMESTAMP].min(),
        training[TIMESTAMP].max(),
    )
    return training


def _calendar_flags(
    dates: pd.Series,
    regressors: list[str],
    country: str,
    month_end_business_days: int,
    quarter_end_business_days: int,
) -> dict[str, np.ndarray]:
    """Each regressor's 0/1 flag per row, from the calendar of the days the history spans."""
    if dates.empty:
        return {name: np.zeros(0, dtype="int8") for name in regressors}
    day = dates.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
    first = day.min()
    span = pd.date_range(pd.Timestamp(first), pd.Timestamp(day.max()), freq="D")
    calendar = calendar_features(span, country, month_end_business_days, quarter_end_business_days)
    index = (day - first).astype(np.int64)
    return {name: calendar[name].to_numpy(dtype=bool).astype("int8")[index] for name in regressors}


def _horizon_problem(forecasts: pd.DataFrame, training: pd.DataFrame, horizon: int) -> str | None:
    """What is wrong when not every training item has ``horizon`` daily rows from the day after its last day
    (``None`` when all have)."""
    keys = split_item_id(training[ITEM_ID].drop_duplicates())
    last = pd.to_datetime(training.groupby(ITEM_ID)[TIMESTAMP].max())
    expected = keys.assign(last=last.reindex(training[ITEM_ID].drop_duplicates()).to_numpy())
    got = forecasts.groupby(KEYS)["date"].agg(["min", "count"]).reset_index()
    check = expected.merge(got, on=KEYS, how="left")
    bad = check[(check["count"] != horizon) | (check["min"] != check["last"] + pd.Timedelta(days=1))]
    if len(bad):
        return f"{len(bad)} of {len(check)} items lack a {horizon}-day forecast from their next day"
    return None


def forecast_with_autopilot(  # noqa: PLR0917 (one argument per parameter leaf)
    canvas_training_data: pd.DataFrame,
    enabled: bool,
    role_arn: str,
    s3_prefix: str,
    region: str,
    job_prefix: str,
    horizon: int,
    country: str,
    max_runtime_s: int,
    max_runtime_per_training_job_s: int,
    max_candidates: int,
    transform_instance_type: str,
    transform_max_file_mb: float,
    regressors: list[str],
    month_end_business_days: int,
    quarter_end_business_days: int,
    poll_interval_s: float,
    poll_backoff: float,
    poll_max_interval_s: float,
    transform_timeout_s: float,
    wait_grace_s: float,
    training_usd_per_hour: float,
    transform_usd_per_hour: float,
) -> tuple[pd.DataFrame, dict]:
    """Trains a Canvas / Autopilot time-series model and forecasts with it, or says why it did not.

    The one node that talks to AWS (through ``AutopilotClient``). Failures never raise: they are returned as
    the run record's ``reason`` so that ``build_canvas_forecasts`` falls back to the local stand-in.

    Args:
        canvas_training_data: Output of ``export_canvas_training_data``.
        enabled: Whether to call AWS at all (``params:canvas.enabled``; false by default locally).
        role_arn: SageMaker execution role; empty means canvas is not configured.
        s3_prefix: ``s3://bucket/prefix`` where each run stages its input and output.
        region: AWS region, empty for the standard AWS chain.
        job_prefix: Start of the job names.
        horizon: Days to forecast (``params:horizon``).
        country: Holiday calendar country (``params:calendar.country``).
        max_runtime_s: Cap on the AutoML job (time and therefore cost).
        max_runtime_per_training_job_s: Cap on each candidate's training.
        max_candidates: Cap on the candidates trained.
        transform_instance_type: Instance type of the batch transform.
        transform_max_file_mb: Transform input files (whole items) stay below this size; ``MaxPayloadInMB``.
        regressors: Calendar flag columns of the training data; their future values go into the transform
            input (``params:canvas.regressors``).
        month_end_business_days: Month-end window of those flags (``params:calendar.*``, as in etl).
        quarter_end_business_days: End-of-quarter window of those flags.
        poll_interval_s: First wait between status checks.
        poll_backoff: Growth of the wait while the status does not change.
        poll_max_interval_s: Longest wait between checks.
        transform_timeout_s: Time limit of the transform job.
        wait_grace_s: How long past ``max_runtime_s`` to wait for the AutoML job before stopping it.
        training_usd_per_hour: Rate behind the logged training cost estimate.
        transform_usd_per_hour: Rate behind the logged transform cost estimate.

    Returns:
        The Autopilot forecasts (``forecasts`` schema, model ``canvas``; empty when not run) and the run
        record ``{"path": "autopilot" | "fallback", "reason", "detail", job names, times, cost}``.
    """
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _FORECAST_DTYPES.items()})
    if not enabled:
        return empty, _fallback("disabled", "params canvas.enabled is false (the default for local runs)")
    if not role_arn:
        return empty, _fallback("no_role", "params canvas.role_arn is empty (set CF_SAGEMAKER_ROLE_ARN)")
    # boto3 (the [cloud] extra) only when AWS is on; without it the run stops with the install command.
    from capacity_forecaster.canvas.client import (  # noqa: PLC0415
        AutopilotClient,
        CanvasUnavailableError,
        CostRates,
        PollSettings,
        sigterm_as_interrupt,
    )

    settings = AutopilotSettings(
        role_arn=role_arn,
        s3_prefix=s3_prefix,
        horizon=horizon,
        country=country,
        max_runtime_s=max_runtime_s,
        max_runtime_per_training_job_s=max_runtime_per_training_job_s,
        max_candidates=max_candidates,
        transform_instance_type=transform_instance_type,
        transform_max_file_mb=transform_max_file_mb,
        job_prefix=job_prefix,
        region=region,
    )
    poll = PollSettings(
        poll_interval_s, poll_backoff, poll_max_interval_s, timeout_s=max_runtime_s + wait_grace_s
    )
    transform_poll = PollSettings(
        poll_interval_s, poll_backoff, poll_max_interval_s, timeout_s=transform_timeout_s
    )
    inference = add_future_regressors(
        canvas_training_data, horizon, regressors, country, month_end_business_days, quarter_end_business_days
    )
    record: dict = {}
    try:
        client = AutopilotClient.create(region)
        with sigterm_as_interrupt():
            forecasts, record = client.forecast(
                canvas_training_data,
                inference,
                settings,
                poll,
                transform_poll,
                rates=CostRates(training_usd_per_hour, transform_usd_per_hour),
            )
        problem = _horizon_problem(forecasts, canvas_training_data, horizon)
        if problem:
            raise CanvasUnavailableError("bad_output", problem)
    except CanvasUnavailableError as error:
        return empty, _fallback(error.reason, error.detail, {**record, **error.record})
    except ValueError as error:  # settings that cannot make a request (bad prefix or URI)
        return empty, _fallback("bad_settings", str(error))
    logger.info("canvas: Autopilot forecasts for %d series", forecasts.groupby(KEYS).ngroups)
    return forecasts, {**record, "path": "autopilot", "model": "canvas", "reason": "completed", "detail": ""}


_FORECAST_DTYPES = {
    "server_id": "str",
    "metric": "str",
    "date": "datetime64[ns]",
    "model": "str",
    **dict.fromkeys(QUANTILES, "float64"),
    "is_selected": "bool",
}


def _fallback(reason: str, detail: str, record: dict | None = None) -> dict:
    logger.warning(
        "canvas: not using SageMaker Autopilot (%s): %s; falling back to canvas_local", reason, detail
    )
    return {**(record or {}), "path": "fallback", "model": "canvas_local", "reason": reason, "detail": detail}


def build_canvas_forecasts(
    autopilot_forecasts: pd.DataFrame,
    canvas_run: dict,
    forecasts: pd.DataFrame,
    model_metrics: pd.DataFrame,
    weight_metric: str,
    top_k: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns the Autopilot forecasts, or after a fallback the local stand-in ``canvas_local``.

    The stand-in combines the modelling candidates' p10/p50/p90 per server and metric with weights
    1 / backtest ``weight_metric`` (mean over folds) of the ``top_k`` best models.

    Args:
        autopilot_forecasts: First output of ``forecast_with_autopilot``.
        canvas_run: Its run record (``path`` says which to use).
        forecasts: The modelling pipeline's forecasts of every model.
        model_metrics: The modelling pipeline's backtest metrics per server, metric, model and fold.
        weight_metric: Lower-is-better backtest column behind the weights (``params:canvas.weight_metric``).
        top_k: Models combined per series (``params:canvas.ensemble_top_k``; null for all).

    Returns:
        ``canvas_forecasts`` (``forecasts`` schema) and the ensemble weights (empty on the Autopilot path).
    """
    if canvas_run.get("path") == "autopilot":
        return autopilot_forecasts[FORECAST_COLUMNS].reset_index(drop=True), pd.DataFrame(
            columns=[*KEYS, "model", "score", "weight"]
        )
    candidates = forecasts[forecasts["model"].isin(set(forecasts["model"]) - {"canvas", "canvas_local"})]
    if candidates.empty:
        raise ValueError("forecasts has no candidate models to build the canvas_local stand-in from")
    weights = ensemble_weights(candidates, model_metrics, weight_metric, top_k)
    local = ensemble_forecasts(candidates, weights)
    logger.info(
        "canvas_local: %d series from %s (mean weight %s)",
        local.groupby(KEYS).ngroups,
        sorted(weights["model"].unique()),
        weights.groupby("model")["weight"].mean().round(3).to_dict(),
    )
    return local, weights


def _actuals(future_metrics: pd.DataFrame) -> pd.DataFrame:
    """Long ``server_id, metric, date, actual`` from the wide ``future_metrics`` (empty frame if absent)."""
    metrics = [m for m in METRICS if m in future_metrics.columns]
    if future_metrics.empty or not metrics or "server_id" not in future_metrics.columns:
        return pd.DataFrame(columns=[*KEYS, "date", "actual"])
    long = future_metrics.melt(
        id_vars=["timestamp", "server_id"], value_vars=metrics, var_name="metric", value_name="actual"
    )
    return pd.DataFrame(
        {
            "server_id": long["server_id"].astype(str),
            "metric": long["metric"].astype(str),
            "date": pd.to_datetime(long["timestamp"]).dt.normalize().astype("datetime64[ns]"),
            "actual": long["actual"].astype(float),
        }
    )


def _clean_number(value: float) -> float | None:
    return (
        None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {
            k: (
                _clean_number(v)
                if isinstance(v, float | np.floating)
                else (int(v) if isinstance(v, np.integer) else v)
            )
            for k, v in row.items()
        }
        for row in frame.to_dict("records")
    ]


def compare_canvas_forecasts(  # noqa: PLR0917
    canvas_forecasts: pd.DataFrame,
    canvas_run: dict,
    canvas_weights: pd.DataFrame,
    forecasts: pd.DataFrame,
    model_metrics: pd.DataFrame,
    future_metrics: pd.DataFrame,
    clean_server_metrics: pd.DataFrame,
    smape_bar: float,
    backtest_columns: list[str],
) -> dict:
    """Compares canvas (or canvas_local) with every modelling model on the same holdout and the backtest.

    Holdout: the forecast horizon itself (the days after the last history day), scored against
    ``future_metrics`` on exactly the (server, metric, date) rows that canvas forecast, for every model and
    for the selected forecasts. sMAPE and MASE use p50 (MASE scaled by the in-sample weekly seasonal-naive
    error of each series' history); coverage is the share of actuals inside p10-p90. Without
    ``future_metrics`` (a real fleet) the holdout section says so and only the backtest summary is given.

    Args:
        canvas_forecasts: Output of ``build_canvas_forecasts``.
        canvas_run: Run record of ``forecast_with_autopilot`` (which path, and why).
        canvas_weights: Ensemble weights of the local stand-in (empty on the Autopilot path).
        forecasts: The modelling forecasts (``is_selected`` marks the chosen model per series).
        model_metrics: Backtest metrics per server, metric, model and fold.
        future_metrics: True values after the analysis date (generated fleets only; may be empty).
        clean_server_metrics: History (``server_id``, ``metric``, ``date``, ``value``) for the MASE scale.
        smape_bar: Target of canvas p50 sMAPE in % (``params:canvas.smape_bar``; the plan's bar is 10).
        backtest_columns: ``model_metrics`` columns summarised per model (those present are used).

    Returns:
        JSON-ready dict: ``path``, ``model``, ``reason``, ``autopilot`` (run record), ``holdout`` (definition,
        period and one row per model), ``bar``, ``backtest`` (mean per model) and ``ensemble_weights``.
    """
    canvas_model = str(canvas_run.get("model", "canvas_local"))
    # the history's scale first: its passes over the long history never overlap the candidates in memory
    scale = seasonal_naive_scale(clean_server_metrics[[*KEYS, "date", "value"]])
    # one categorical dtype per key for both frames: the join and the scoring then match integer codes
    canvas_forecasts, forecasts = common_categories(
        [canvas_forecasts, forecasts], [*KEYS, "model"], {"model": ["selected"]}
    )
    keys = canvas_forecasts[[*KEYS, "date"]].drop_duplicates()
    others = forecasts.merge(keys, on=[*KEYS, "date"], how="inner")
    selected = others[others["is_selected"].astype(bool)].assign(model="selected")
    selected = selected.astype({"model": others["model"].dtype})
    candidates = pd.concat([canvas_forecasts, others, selected], ignore_index=True)
    del others, selected
    actuals = _actuals(future_metrics)
    scores = score_forecasts(candidates, actuals, scale)
    del candidates
    scores = scores.sort_values("mase", kind="stable", na_position="last").reset_index(drop=True)

    canvas_row = scores[scores["model"] == canvas_model]
    canvas_smape = float(canvas_row["smape"].iloc[0]) if len(canvas_row) else None
    bar = {
        "metric": "p50 sMAPE (%) on the holdout",
        "threshold": float(smape_bar),
        "value": _clean_number(canvas_smape),
        "passed": None if canvas_smape is None else bool(canvas_smape < smape_bar),
    }
    present = [c for c in backtest_columns if c in model_metrics.columns]
    backtest = (
        common_folds(model_metrics).groupby("model")[present].mean().reset_index()
        if present and "model" in model_metrics.columns
        else pd.DataFrame(columns=["model"])
    )
    weights = (
        canvas_weights.groupby("model")["weight"].agg(mean_weight="mean", series="size").reset_index()
        if len(canvas_weights)
        else pd.DataFrame(columns=["model", "mean_weight", "series"])
    )
    dates = keys["date"]
    comparison = {
        "path": canvas_run.get("path"),
        "model": canvas_model,
        "reason": canvas_run.get("reason"),
        "detail": canvas_run.get("detail", ""),
        "autopilot": {k: v for k, v in canvas_run.items() if k not in ("path", "model", "reason", "detail")},
        "holdout": {
            "definition": "the forecast horizon after the last history day, scored against future_metrics on "
            "the "
            "rows canvas forecast; MASE scale = in-sample weekly seasonal-naive MAE of each series",
            "start": None if dates.empty else str(dates.min().date()),
            "end": None if dates.empty else str(dates.max().date()),
            "actuals_available": bool(len(actuals)),
            "models": _records(scores),
        },
        "bar": bar,
        "backtest": {
            "source": "model_metrics (mean over servers, metrics and the folds every model has)",
            "models": _records(backtest),
        },
        "ensemble_weights": _records(weights),
    }
    if len(scores):
        logger.info("canvas comparison (holdout):\n%s", scores.round(3).to_string(index=False))
    else:
        logger.info("canvas comparison: no actuals for the holdout (future_metrics empty)")
    logger.info(
        "canvas: %s p50 sMAPE %s vs bar %.1f %% -> %s", canvas_model, bar["value"], smape_bar, bar["passed"]
    )
    return comparison
