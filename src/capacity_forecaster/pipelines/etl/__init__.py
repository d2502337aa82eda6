"""etl pipeline: raw monitoring export -> clean daily P95, data quality report and model features."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
