"""Capacity Forecaster: 90-day server utilisation forecasts, capacity risk and consolidation plans."""

__version__ = "0.1.0"
