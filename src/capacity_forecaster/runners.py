"""``capacity_forecaster.runners.SageMakerRunner``, the import path ``kedro run --runner`` accepts."""

from capacity_forecaster.runner import SageMakerRunner

__all__ = ["SageMakerRunner"]
