"""Reporting pipeline: figures for kedro-viz and the self-contained HTML capacity report."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
