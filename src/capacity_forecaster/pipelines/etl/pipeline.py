"""etl pipeline: split the export by shard -> per shard validate, daily P95, clean, features -> quality
report.

With ``etl.shards: 1`` (the default) the one shard is the whole fleet; with K shards memory is bounded by a
shard (and by a chunk of the export while it is split), and the outputs hold the same rows.
"""

from kedro.pipeline import Node, Pipeline

from capacity_forecaster.pipelines import CALENDAR_PARAMS

from .nodes import build_fleet_quality_report, clean_metric_shards, split_raw_metrics

_P = "params:etl."


def create_pipeline(**kwargs) -> Pipeline:
    """Builds the ETL pipeline (namespace ``etl``, flat dataset names)."""
    return Pipeline(
        [
            Node(
                func=split_raw_metrics,
                inputs={
                    "raw_server_metrics": "raw_server_metrics",
                    "server_inventory": "server_inventory",
                    "column_mapping": f"{_P}column_mapping",
                    "shards": f"{_P}shards",
                    "servers_per_shard": f"{_P}servers_per_shard",
                },
                outputs=["raw_metric_shards", "etl_shard_plan"],
                name="split_raw_metrics_node",
            ),
            Node(
                func=clean_metric_shards,
                inputs={
                    "raw_metric_shards": "raw_metric_shards",
                    "etl_shard_plan": "etl_shard_plan",
                    "server_inventory": "server_inventory",
                    **{
                        name: f"{_P}{name}"
                        for name in (
                            "column_mapping",
                            "throughput_capacity",
                            "unknown_servers",
                            "value_scale",
                            "valid_date_range",
                            "min_daily_coverage",
                            "max_gap_days",
                            "imputation_method",
                            "outlier_threshold",
                            "outlier_window_weeks",
                            "outlier_min_scale",
                            "replace_outliers",
                            "high_threshold",
                            "lags",
                            "rolling_windows",
                        )
                    },
                    **CALENDAR_PARAMS,
                },
                outputs=["clean_server_metrics", "server_features", "etl_shard_stats"],
                name="clean_metric_shards_node",
            ),
            Node(
                func=build_fleet_quality_report,
                inputs={"etl_shard_stats": "etl_shard_stats", "stale_after_days": "params:stale_after_days"},
                outputs="data_quality_report",
                name="build_data_quality_report_node",
            ),
        ],
        namespace="etl",
        prefix_datasets_with_namespace=False,
        tags="etl",
    )
