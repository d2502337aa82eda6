"""data_generation pipeline: inventory -> profiles -> simulation -> (raw history with dirt, future, truth)."""

from kedro.pipeline import Node, Pipeline

from capacity_forecaster.pipelines import CALENDAR_PARAMS

from .nodes import (
    add_monitoring_dirt,
    build_server_truth,
    draw_server_profiles,
    generate_server_inventory,
    simulate_utilisation,
    split_history_and_future,
)

_P = "params:data_generation."


def create_pipeline(**kwargs) -> Pipeline:
    """Builds the synthetic fleet generator (namespace ``data_generation``, flat dataset names)."""
    return Pipeline(
        [
            Node(
                func=generate_server_inventory,
                inputs={
                    "n_servers": f"{_P}n_servers",
                    "archetype_mix": f"{_P}archetype_mix",
                    "archetypes": f"{_P}archetypes",
                    "instance_families": f"{_P}instance_families",
                    "datacenters": f"{_P}datacenters",
                    "random_seed": f"{_P}random_seed",
                },
                outputs="server_inventory",
                name="generate_server_inventory_node",
            ),
            Node(
                func=draw_server_profiles,
                inputs={
                    "server_inventory": "server_inventory",
                    "archetypes": f"{_P}archetypes",
                    "history_days": f"{_P}history_days",
                    "grower_share": f"{_P}grower_share",
                    "grower_target": f"{_P}grower_target",
                    "grower_ramp_days": f"{_P}grower_ramp_days",
                    "level_shift_share": f"{_P}level_shift_share",
                    "level_shift_size": f"{_P}level_shift_size",
                    "random_seed": f"{_P}random_seed",
                },
                outputs="server_profiles",
                name="draw_server_profiles_node",
            ),
            Node(
                func=simulate_utilisation,
                inputs={
                    "server_profiles": "server_profiles",
                    "archetypes": f"{_P}archetypes",
                    "history_start": f"{_P}history_start",
                    "history_days": f"{_P}history_days",
                    "horizon": "params:horizon",
                    "grower_secondary_weight": f"{_P}grower_secondary_weight",
                    **CALENDAR_PARAMS,
                    "random_seed": f"{_P}random_seed",
                },
                outputs="simulated_metrics",
                name="simulate_utilisation_node",
            ),
            Node(
                func=split_history_and_future,
                inputs={"simulated_metrics": "simulated_metrics", "horizon": "params:horizon"},
                outputs=["history_metrics", "future_metrics"],
                name="split_history_and_future_node",
            ),
            Node(
                func=add_monitoring_dirt,
                inputs={
                    "history": "history_metrics",
                    "missing_day_share": f"{_P}missing_day_share",
                    "gap_server_share": f"{_P}gap_server_share",
                    "gap_days": f"{_P}gap_days",
                    "duplicate_share": f"{_P}duplicate_share",
                    "spike_share": f"{_P}spike_share",
                    "spike_out_of_range_share": f"{_P}spike_out_of_range_share",
                    "random_seed": f"{_P}random_seed",
                },
                outputs="raw_server_metrics",
                name="add_monitoring_dirt_node",
            ),
            Node(
                func=build_server_truth,
                inputs="future_metrics",
                outputs="server_truth",
                name="build_server_truth_node",
            ),
        ],
        namespace="data_generation",
        prefix_datasets_with_namespace=False,
        tags="data_generation",
    )
