"""modelling pipeline: split the fleet into shards, backtest/fit/predict per model (one namespace each, shard
by shard), then the fleet-wide merge: calibration, scoring, selection, ensemble and leaderboard."""

from kedro.pipeline import Node, Pipeline

from capacity_forecaster.pipelines import CALENDAR_PARAMS

from .nodes import (
    assemble_forecasts,
    backtest_shards,
    calibrate_intervals,
    collect_backtest_forecasts,
    evaluate_backtests,
    fit_shards,
    plan_backtest,
    predict_shards,
    prepare_model_input,
    rank_models,
    select_models,
    split_model_input,
)

MODELS: tuple[str, ...] = (
    "seasonal_naive",
    "prophet",
    "random_forest",
    "gradient_boosting",
    "quantile_gbm",
    "changepoint_regression",
)
"""Model variants; each is a namespace, an alias and a key of parameters_modelling.yml."""


def _model_pipeline(model: str) -> Pipeline:
    """backtest -> fit -> predict for one model, in namespace ``model``, shard by shard.

    Every node takes ``model_input_shards`` and writes ``{shard name: ...}`` outputs; all carry the tag
    ``sharded`` (the SageMaker runner runs one job per shard with ``modelling.shard=i``).
    """
    p = f"params:modelling.{model}."
    spec = {
        "model_input_shards": "model_input_shards",
        "shard_plan": "shard_plan",
        "shard": "params:modelling.shard",
        "shard_workers": "params:modelling.shard_workers",
        "enabled": f"{p}enabled",
        "max_fleet_servers": f"{p}max_fleet_servers",
        "kind": f"{p}kind",
        "hyperparameters": f"{p}hyperparameters",
        "metric_jobs": f"{p}metric_jobs",
        **CALENDAR_PARAMS,
    }
    return Pipeline(
        [
            Node(
                func=backtest_shards,
                inputs={
                    **spec,
                    "backtest_plan": "backtest_plan",
                    "backtest_folds": f"{p}backtest_folds",
                },
                outputs=[f"{model}_backtest", f"{model}_backtest_stats"],
                name="backtest_shards_node",
            ),
            Node(
                func=fit_shards,
                inputs={
                    **spec,
                    "horizon": "params:horizon",
                    "min_history_days": "params:modelling.min_history_days",
                },
                outputs=[f"{model}_forecaster", f"{model}_fit_summary"],
                name="fit_shards_node",
            ),
            Node(
                func=predict_shards,
                inputs=[
                    f"{model}_forecaster",
                    "shard_plan",
                    "params:horizon",
                    "params:modelling.shard",
                    "params:modelling.shard_workers",
                    f"{p}enabled",
                    f"{p}hyperparameters",
                ],
                outputs=f"{model}_forecast",
                name="predict_shards_node",
            ),
        ],
        namespace=model,
        prefix_datasets_with_namespace=False,
        tags=["modelling", model, "sharded"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Builds the modelling pipeline: input prep, one namespace per model, then evaluation and selection.

    Namespaces ``model_input`` -> one per model -> ``modelling`` are the job groups of the SageMaker runner;
    the per-model groups are tagged ``sharded`` (one job per shard, ``modelling.shard=i``).
    """
    model_input = Pipeline(
        [
            Node(
                func=prepare_model_input,
                inputs=["clean_server_metrics", "server_inventory"],
                outputs="model_input",
                name="prepare_model_input_node",
            ),
            Node(
                func=plan_backtest,
                inputs=[
                    "model_input",
                    "params:horizon",
                    "params:modelling.backtest.n_origins",
                    "params:modelling.backtest.holdout_share",
                    "params:modelling.backtest.min_train_days",
                    "params:modelling.backtest.spacing_days",
                    "params:modelling.backtest.min_origins",
                    "params:modelling.backtest.max_servers",
                ],
                outputs="backtest_plan",
                name="plan_backtest_node",
            ),
            Node(
                func=split_model_input,
                inputs=["model_input", "params:modelling.shards", "params:modelling.servers_per_shard"],
                outputs=["model_input_shards", "shard_plan"],
                name="split_model_input_node",
            ),
        ],
        namespace="model_input",
        prefix_datasets_with_namespace=False,
        tags="modelling",
    )
    evaluation = Pipeline(
        [
            Node(
                func=calibrate_intervals,
                inputs=[
                    "model_input",
                    "backtest_plan",
                    "params:modelling.calibrate_intervals",
                    "params:modelling.target_coverage",
                    "params:modelling.max_interval_scale",
                    "params:modelling.interval_prior_folds",
                    "params:modelling.ensemble_members",
                    "shard_plan",
                    *[f"{m}_backtest" for m in MODELS],
                ],  # fmt: skip
                outputs=["calibrated_backtest", "interval_scales"],
                name="calibrate_intervals_node",
            ),
            Node(
                func=evaluate_backtests,
                inputs={
                    "calibrated_backtest": "calibrated_backtest",
                    "model_input": "model_input",
                    "season_length": "params:modelling.season_length",
                    **CALENDAR_PARAMS,
                },
                outputs="model_metrics",
                name="evaluate_backtests_node",
            ),
            Node(
                func=select_models,
                inputs=[
                    "model_metrics",
                    "model_input",
                    "backtest_plan",
                    "params:modelling.selection_metric",
                    "params:modelling.selection_pooling",
                    "params:modelling.ensemble_margin",
                    "params:modelling.min_interval_coverage",
                    "params:modelling.min_history_days",
                ],
                outputs="model_selection",
                name="select_models_node",
            ),
            Node(
                func=rank_models,
                inputs=[
                    "model_metrics",
                    "model_selection",
                    "backtest_plan",
                    "params:modelling.selection_metric",
                    "params:modelling.selection_pooling",
                    "params:modelling.ensemble_margin",
                    "params:modelling.min_interval_coverage",
                    "shard_plan",
                    *[f"{m}_backtest_stats" for m in MODELS],
                    *[f"{m}_fit_summary" for m in MODELS],
                ],  # fmt: skip
                outputs="model_leaderboard",
                name="rank_models_node",
            ),
            Node(
                func=assemble_forecasts,
                inputs=[
                    "model_input",
                    "model_selection",
                    "interval_scales",
                    "params:modelling.ensemble_members",
                    "params:horizon",
                    "shard_plan",
                    *[f"{m}_forecast" for m in MODELS],
                ],
                outputs="forecasts",
                name="assemble_forecasts_node",
            ),
            Node(
                func=collect_backtest_forecasts,
                inputs=["calibrated_backtest", "model_selection"],
                outputs="backtest_forecasts",
                name="collect_backtest_forecasts_node",
            ),
        ],
        namespace="modelling",
        prefix_datasets_with_namespace=False,
        tags="modelling",
    )
    return model_input + sum((_model_pipeline(m) for m in MODELS), Pipeline([])) + evaluation
