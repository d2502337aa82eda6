"""Capacity-risk math as pure functions of DataFrames, used by the risk_analysis pipeline."""
