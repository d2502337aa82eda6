"""canvas: SageMaker Canvas / Autopilot forecasts (or a local stand-in), compared with our models."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
