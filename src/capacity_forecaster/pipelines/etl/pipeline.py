"""etl pipeline: validate -> daily P95 -> clean (calendar, clip, outliers, gaps) -> report and features."""

from kedro.pipeline import Node, Pipeline

from capacity_forecaster.pipelines import CALENDAR_PARAMS

from .nodes import (
    aggregate_daily_metrics,
    build_data_quality_report,
    build_server_features,
    clean_daily_metrics,
    validate_raw_metrics,
)

_P = "params:etl."


def create_pipeline(**kwargs) -> Pipeline:
    """Builds the ETL pipeline (namespace ``etl``, flat dataset names)."""
    return Pipeline(
        [
            Node(
                func=validate_raw_metrics,
                inputs={
                    "raw_server_metrics": "raw_server_metrics",
                    "server_inventory": "server_inventory",
                    "column_mapping": f"{_P}column_mapping",
                    "throughput_capacity": f"{_P}throughput_capacity",
                    "unknown_servers": f"{_P}unknown_servers",
                    "value_scale": f"{_P}value_scale",
                    "valid_date_range": f"{_P}valid_date_range",
                },
                outputs=["validated_server_metrics", "etl_validation_stats"],
                name="validate_raw_metrics_node",
            ),
            Node(
                func=aggregate_daily_metrics,
                inputs={
                    "validated_metrics": "validated_server_metrics",
                    "min_daily_coverage": f"{_P}min_daily_coverage",
                },
                outputs=["daily_server_metrics", "etl_aggregation_stats"],
                name="aggregate_daily_metrics_node",
            ),
            Node(
                func=clean_daily_metrics,
                inputs={
                    "daily_metrics": "daily_server_metrics",
                    "max_gap_days": f"{_P}max_gap_days",
                    "imputation_method": f"{_P}imputation_method",
                    "outlier_threshold": f"{_P}outlier_threshold",
                    "outlier_window_weeks": f"{_P}outlier_window_weeks",
                    "outlier_min_scale": f"{_P}outlier_min_scale",
                    "replace_outliers": f"{_P}replace_outliers",
                    "high_threshold": f"{_P}high_threshold",
                    **CALENDAR_PARAMS,
                },
                outputs=["clean_server_metrics", "etl_cleaning_stats"],
                name="clean_daily_metrics_node",
            ),
            Node(
                func=build_data_quality_report,
                inputs={
                    "validation_stats": "etl_validation_stats",
                    "aggregation_stats": "etl_aggregation_stats",
                    "cleaning_stats": "etl_cleaning_stats",
                    "stale_after_days": "params:stale_after_days",
                },
                outputs="data_quality_report",
                name="build_data_quality_report_node",
            ),
            Node(
                func=build_server_features,
                inputs={
                    "clean_server_metrics": "clean_server_metrics",
                    "lags": f"{_P}lags",
                    "rolling_windows": f"{_P}rolling_windows",
                    **CALENDAR_PARAMS,
                },
                outputs="server_features",
                name="build_server_features_node",
            ),
        ],
        namespace="etl",
        prefix_datasets_with_namespace=False,
        tags="etl",
    )
