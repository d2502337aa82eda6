"""modelling pipeline: backtested p10/p50/p90 forecasts, scores, selection and the leaderboard."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
