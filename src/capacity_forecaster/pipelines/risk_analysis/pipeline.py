"""risk_analysis pipeline: forecasts, history, inventory -> register, clusters, plan, summary, evaluation."""

from kedro.pipeline import Node, Pipeline

from capacity_forecaster.pipelines import CALENDAR_PARAMS

from .nodes import (
    backtest_risk_flags,
    build_risk_register,
    cluster_servers,
    estimate_error_dependence,
    evaluate_risk_flags,
    plan_consolidation,
    profile_utilisation,
    score_forecast_risk,
    summarise_risk,
)
from .rightsizing_nodes import recommend_instance_types

_P = "params:risk_analysis."
_FLAG_PARAMS = {
    "high_threshold": f"{_P}high_threshold",
    "very_high_threshold": f"{_P}very_high_threshold",
    "high_probability_cutoff": f"{_P}high_probability_cutoff",
    "very_high_probability_cutoff": f"{_P}very_high_probability_cutoff",
    "breach_min_days": f"{_P}breach_min_days",
    "recent_window_days": f"{_P}recent_window_days",
    "recent_min_days": f"{_P}recent_min_days",
    "exceedance_window_days": f"{_P}exceedance_window_days",
}
"""The inputs of the flag rule, shared by today's register and the risk backtest at past origins."""


def create_pipeline(**kwargs) -> Pipeline:
    """Builds the risk analysis (namespace ``risk_analysis``, flat dataset names) on persisted inputs."""
    return Pipeline(
        [
            Node(
                func=estimate_error_dependence,
                inputs={
                    "backtest_forecasts": "backtest_forecasts",
                    "fallback_correlation": f"{_P}fallback_correlation",
                    "min_pairs": f"{_P}dependence_min_pairs",
                },
                outputs="error_dependence",
                name="estimate_error_dependence_node",
            ),
            Node(
                func=score_forecast_risk,
                inputs={
                    "forecasts": "forecasts",
                    "clean_server_metrics": "clean_server_metrics",
                    "error_dependence": "error_dependence",
                    "forecast_model": f"{_P}forecast_model",
                    "basis": f"{_P}basis",
                    "underutilized_threshold": f"{_P}underutilized_threshold",
                    **_FLAG_PARAMS,
                    "stale_after_days": "params:stale_after_days",
                    "horizon": "params:horizon",
                    "near_term_days": f"{_P}near_term_days",
                    **CALENDAR_PARAMS,
                },
                outputs="forecast_risk",
                name="score_forecast_risk_node",
            ),
            Node(
                func=backtest_risk_flags,
                inputs={
                    "backtest_forecasts": "backtest_forecasts",
                    "clean_server_metrics": "clean_server_metrics",
                    "error_dependence": "error_dependence",
                    **_FLAG_PARAMS,
                },
                outputs="risk_backtest",
                name="backtest_risk_flags_node",
            ),
            Node(
                func=profile_utilisation,
                inputs={
                    "clean_server_metrics": "clean_server_metrics",
                    "profile_days": f"{_P}profile_days",
                    "current_window_days": f"{_P}current_window_days",
                    "trend_window_days": f"{_P}trend_window_days",
                    **CALENDAR_PARAMS,
                },
                outputs="utilisation_profiles",
                name="profile_utilisation_node",
            ),
            Node(
                func=cluster_servers,
                inputs={
                    "utilisation_profiles": "utilisation_profiles",
                    "server_inventory": "server_inventory",
                    "k_min": f"{_P}cluster_k_min",
                    "k_max": f"{_P}cluster_k_max",
                    "sample_size": f"{_P}cluster_sample_size",
                    "random_seed": f"{_P}random_seed",
                },
                outputs=["server_clusters", "cluster_report"],
                name="cluster_servers_node",
            ),
            Node(
                func=plan_consolidation,
                inputs={
                    "forecast_risk": "forecast_risk",
                    "server_inventory": "server_inventory",
                    "target_ceiling": f"{_P}consolidation_ceiling",
                    "hours_per_month": f"{_P}hours_per_month",
                    "group_column": f"{_P}consolidation_group_column",
                },
                outputs=["consolidation_plan", "consolidation_summary"],
                name="plan_consolidation_node",
            ),
            Node(
                func=build_risk_register,
                inputs=[
                    "forecast_risk",
                    "utilisation_profiles",
                    "consolidation_plan",
                    "server_inventory",
                    "rightsizing_recommendations",
                ],
                outputs="risk_register",
                name="build_risk_register_node",
            ),
            Node(
                func=summarise_risk,
                inputs={
                    "risk_register": "risk_register",
                    "cluster_report": "cluster_report",
                    "consolidation_summary": "consolidation_summary",
                    "top_servers": f"{_P}top_servers",
                },
                outputs="risk_summary",
                name="summarise_risk_node",
            ),
            Node(
                func=evaluate_risk_flags,
                inputs=["risk_register", "server_truth", "risk_backtest", "error_dependence"],
                outputs="risk_evaluation",
                name="evaluate_risk_flags_node",
            ),
            Node(
                func=recommend_instance_types,
                inputs={
                    "forecasts": "forecasts",
                    "server_inventory": "server_inventory",
                    "ec2_price_table": "ec2_price_table",
                    "forecast_model": f"{_P}forecast_model",
                    "basis": f"{_P}rightsizing.basis",
                    "target_utilisation": f"{_P}rightsizing.target_utilisation",
                    "allowed_families": f"{_P}rightsizing.allowed_families",
                    "hours_per_month": f"{_P}rightsizing.hours_per_month",
                    "default_region": f"{_P}rightsizing.default_region",
                },
                outputs="rightsizing_recommendations",
                name="recommend_instance_types_node",
            ),
        ],
        namespace="risk_analysis",
        prefix_datasets_with_namespace=False,
        tags="risk_analysis",
    )
