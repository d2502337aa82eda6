"""risk_analysis: risk tiers, days to breach, clusters, consolidation and savings from persisted forecasts."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
