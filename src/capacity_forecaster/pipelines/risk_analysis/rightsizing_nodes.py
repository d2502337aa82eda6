"""risk_analysis: right-sizing EC2 servers on their forecasts (math: ``risk.rightsizing``)."""

import logging

import pandas as pd

from capacity_forecaster.risk.rightsizing import peak_forecasts, right_size

logger = logging.getLogger(__name__)


def recommend_instance_types(  # noqa: PLR0913, PLR0917 - one argument per parameter leaf
    forecasts: pd.DataFrame,
    server_inventory: pd.DataFrame,
    ec2_price_table: pd.DataFrame,
    forecast_model: str,
    basis: str,
    target_utilisation: float,
    allowed_families: list[str],
    hours_per_month: float,
    default_region: str,
) -> pd.DataFrame:
    """Names, per server, the cheapest EC2 type that keeps the forecast peak under the target.

    Args:
        forecasts: Modelling's ``forecasts``.
        server_inventory: ``server_id``, ``instance_type`` and, when known, ``region`` or an availability zone
            as ``datacenter``.
        ec2_price_table: Prices, vCPUs and memory per region and type (``ec2_price_table``).
        forecast_model: ``selected`` or a model name (``params:risk_analysis.forecast_model``).
        basis: Quantile whose peak over the horizon must fit (``params:risk_analysis.rightsizing.basis``).
        target_utilisation: Highest peak (%) on the recommended type (``...rightsizing.target_utilisation``).
        allowed_families: Families searched when the server's own has nothing that fits
            (``...rightsizing.allowed_families``).
        hours_per_month: Billed hours per month (``...rightsizing.hours_per_month``).
        default_region: Price region of servers without one (``...rightsizing.default_region``).

    Returns:
        ``rightsizing_recommendations``: one row per server (see ``RECOMMENDATION_COLUMNS``); the recommended
        type and the monthly cost change are empty, with the reason, when nothing fits or the server is not
        an EC2 instance type.
    """
    peaks = peak_forecasts(forecasts, forecast_model, basis)
    recommendations = right_size(
        peaks,
        server_inventory,
        ec2_price_table,
        target_utilisation,
        allowed_families,
        hours_per_month,
        default_region,
    )
    moved = recommendations["recommended_instance_type"].notna() & (
        recommendations["recommended_instance_type"] != recommendations["instance_type"]
    )
    logger.info(
        "Right-sizing: %d of %d server(s) change type, %.2f USD/month in all; %d without a recommendation",
        int(moved.sum()),
        len(recommendations),
        float(recommendations["monthly_cost_change_usd"].sum()),
        int(recommendations["recommended_instance_type"].isna().sum()),
    )
    return recommendations
