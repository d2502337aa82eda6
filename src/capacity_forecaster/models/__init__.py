"""Forecasters: scikit-learn style estimators on long frames ``unique_id, ds, y`` with p10/p50/p90 output."""

from capacity_forecaster.models.base import BaseForecaster
from capacity_forecaster.models.changepoint import ChangepointRegressionForecaster
from capacity_forecaster.models.fallback import RecentMeanForecaster
from capacity_forecaster.models.prophet import ProphetForecaster
from capacity_forecaster.models.seasonal_naive import SeasonalNaiveForecaster
from capacity_forecaster.models.trees import (
    GradientBoostingForecaster,
    QuantileGBMForecaster,
    RandomForestForecaster,
)

FORECASTERS: dict[str, type[BaseForecaster]] = {
    "seasonal_naive": SeasonalNaiveForecaster,
    "prophet": ProphetForecaster,
    "random_forest": RandomForestForecaster,
    "gradient_boosting": GradientBoostingForecaster,
    "quantile_gbm": QuantileGBMForecaster,
    "changepoint_regression": ChangepointRegressionForecaster,
    "fallback": RecentMeanForecaster,
}
"""Model kinds accepted in ``parameters_modelling.yml`` (``modelling.<model>.kind``)."""

__all__ = [
    "FORECASTERS",
    "BaseForecaster",
    "ChangepointRegressionForecaster",
    "GradientBoostingForecaster",
    "ProphetForecaster",
    "QuantileGBMForecaster",
    "RandomForestForecaster",
    "RecentMeanForecaster",
    "SeasonalNaiveForecaster",
]
