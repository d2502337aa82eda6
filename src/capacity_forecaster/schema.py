"""Names shared by every pipeline: metric columns, risk tiers and quantile columns (see CONTRACT.md)."""

METRICS: tuple[str, ...] = ("cpu_p95", "memory_p95", "disk_io_p95", "network_p95")
"""Utilisation metrics, as wide columns in raw tables and as ``metric`` values in long tables."""

RISK_LEVELS: tuple[str, ...] = ("very_high", "high", "normal", "underutilized")
"""Risk tiers, most severe first; a server's tier is the most severe of its metrics' tiers."""

QUANTILES: tuple[str, ...] = ("p10", "p50", "p90")
"""Quantile columns of every forecast table, in percent (0-100)."""
