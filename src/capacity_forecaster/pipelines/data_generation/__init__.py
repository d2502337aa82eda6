"""data_generation: a synthetic fleet with daily P95 utilisation, monitoring dirt and ground truth."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
