"""canvas pipeline: clean_server_metrics -> canvas_training_data -> Autopilot (or canvas_local) -> comparison.

The history is the clean long table (its calendar flags are computed from the dates), not the wide
``server_features``: on 10,000 servers that table is ~6 GB in memory, the four columns used ~1.3 GB.
"""

from kedro.pipeline import Node, Pipeline

from capacity_forecaster.pipelines import CALENDAR_PARAMS

from .nodes import (
    build_canvas_forecasts,
    compare_canvas_forecasts,
    export_canvas_training_data,
    forecast_with_autopilot,
)

_P = "params:canvas."
_AUTOPILOT = (
    "enabled",
    "role_arn",
    "s3_prefix",
    "region",
    "job_prefix",
    "max_runtime_s",
    "max_runtime_per_training_job_s",
    "max_candidates",
    "transform_instance_type",
    "transform_max_file_mb",
    "regressors",
    "poll_interval_s",
    "poll_backoff",
    "poll_max_interval_s",
    "transform_timeout_s",
    "wait_grace_s",
    "training_usd_per_hour",
    "transform_usd_per_hour",
)


def create_pipeline(**kwargs) -> Pipeline:
    """Builds the canvas pipeline (namespace ``canvas``, flat dataset names)."""
    return Pipeline(
        [
            Node(
                func=export_canvas_training_data,
                inputs={
                    "clean_server_metrics": "clean_server_metrics",
                    "regressors": f"{_P}regressors",
                    **CALENDAR_PARAMS,
                    "enabled": f"{_P}enabled",
                    "max_rows_when_disabled": f"{_P}export_max_rows_when_disabled",
                },
                outputs="canvas_training_data",
                name="export_canvas_training_data_node",
            ),
            Node(
                func=forecast_with_autopilot,
                inputs={
                    "canvas_training_data": "canvas_training_data",
                    "horizon": "params:horizon",
                    "country": "params:calendar.country",
                    "month_end_business_days": "params:calendar.month_end_business_days",
                    "quarter_end_business_days": "params:calendar.quarter_end_business_days",
                    **{leaf: f"{_P}{leaf}" for leaf in _AUTOPILOT},
                },
                outputs=["canvas_autopilot_forecasts", "canvas_run"],
                name="forecast_with_autopilot_node",
            ),
            Node(
                func=build_canvas_forecasts,
                inputs={
                    "autopilot_forecasts": "canvas_autopilot_forecasts",
                    "canvas_run": "canvas_run",
                    "forecasts": "forecasts",
                    "model_metrics": "model_metrics",
                    "weight_metric": f"{_P}weight_metric",
                    "top_k": f"{_P}ensemble_top_k",
                },
                outputs=["canvas_forecasts", "canvas_weights"],
                name="build_canvas_forecasts_node",
            ),
            Node(
                func=compare_canvas_forecasts,
                inputs={
                    "canvas_forecasts": "canvas_forecasts",
                    "canvas_run": "canvas_run",
                    "canvas_weights": "canvas_weights",
                    "forecasts": "forecasts",
                    "model_metrics": "model_metrics",
                    "future_metrics": "future_metrics",
                    "clean_server_metrics": "clean_server_metrics",
                    "smape_bar": f"{_P}smape_bar",
                    "backtest_columns": f"{_P}backtest_columns",
                },
                outputs="canvas_comparison",
                name="compare_canvas_forecasts_node",
            ),
        ],
        namespace="canvas",
        prefix_datasets_with_namespace=False,
        tags="canvas",
    )
