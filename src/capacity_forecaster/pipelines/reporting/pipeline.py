"""Reporting pipeline: the pictures planners look at, and one HTML report that opens offline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_capacity_report,
    plot_cluster_scatter,
    plot_forecast_vs_actual,
    plot_model_leaderboard,
    plot_quarterly_trend,
    plot_risk_heatmap,
    plot_savings_waterfall,
    select_at_risk_servers,
)

FIGURES = (
    "forecast_vs_actual",
    "risk_heatmap",
    "quarterly_trend",
    "cluster_scatter",
    "model_leaderboard_chart",
    "savings_waterfall",
)
"""Figure datasets, in the order ``build_capacity_report`` takes them."""


def create_pipeline(**kwargs) -> Pipeline:
    """Creates the reporting pipeline (namespace ``reporting``, flat dataset names)."""
    figures = ["figures"]
    return Pipeline(
        [
            Node(
                func=select_at_risk_servers,
                inputs=["risk_register", "server_inventory"],
                outputs="at_risk_servers",
                name="select_at_risk_servers_node",
                tags=["tables"],
            ),
            Node(
                func=plot_forecast_vs_actual,
                inputs=[
                    "clean_server_metrics",
                    "forecasts",
                    "risk_register",
                    "params:reporting.top_servers",
                    "params:reporting.history_days",
                ],
                outputs="forecast_vs_actual",
                name="plot_forecast_vs_actual_node",
                tags=figures,
            ),
            Node(
                func=plot_risk_heatmap,
                inputs=[
                    "forecasts",
                    "risk_register",
                    "params:reporting.heatmap_servers",
                    "params:reporting.heatmap_quantile",
                ],
                outputs="risk_heatmap",
                name="plot_risk_heatmap_node",
                tags=figures,
            ),
            Node(
                func=plot_quarterly_trend,
                inputs=["clean_server_metrics", "server_inventory"],
                outputs="quarterly_trend",
                name="plot_quarterly_trend_node",
                tags=figures,
            ),
            Node(
                func=plot_cluster_scatter,
                inputs=[
                    "clean_server_metrics",
                    "server_clusters",
                    "server_inventory",
                    "params:reporting.scatter_max_servers",
                ],
                outputs="cluster_scatter",
                name="plot_cluster_scatter_node",
                tags=figures,
            ),
            Node(
                func=plot_model_leaderboard,
                inputs="model_leaderboard",
                outputs="model_leaderboard_chart",
                name="plot_model_leaderboard_node",
                tags=figures,
            ),
            Node(
                func=plot_savings_waterfall,
                inputs=[
                    "consolidation_plan",
                    "server_inventory",
                    "params:reporting.savings_column",
                    "params:reporting.hours_per_month",
                ],
                outputs="savings_waterfall",
                name="plot_savings_waterfall_node",
                tags=figures,
            ),
            Node(
                func=build_capacity_report,
                inputs=[
                    "at_risk_servers",
                    "risk_register",
                    "consolidation_plan",
                    "server_inventory",
                    "data_quality_report",
                    "risk_summary",
                    *FIGURES,
                    "params:reporting.savings_column",
                    "params:reporting.hours_per_month",
                    "params:reporting.report_title",
                    "params:reporting.report_table_rows",
                ],
                outputs="capacity_report",
                name="build_capacity_report_node",
                tags=["report"],
            ),
        ],
        namespace="reporting",
        prefix_datasets_with_namespace=False,
        tags="reporting",
    )
