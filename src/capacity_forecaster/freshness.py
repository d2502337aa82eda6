"""Which servers still report: one rule for etl's quality report, modelling and risk_analysis.

The analysis date is the fleet's last day in ``clean_server_metrics``. A server whose last observed (not
imputed) value is more than ``stale_after_days`` before it has stopped reporting: its history is not today's
state, so it is reported as stale instead of being forecast from an old date as if that were today.
"""

import pandas as pd


def analysis_date(clean_server_metrics: pd.DataFrame) -> pd.Timestamp:
    """Returns the fleet's last day: the date every forecast and every days-to-breach counts from."""
    return pd.Timestamp(clean_server_metrics["date"].max()).normalize()


def last_observed_days(clean_server_metrics: pd.DataFrame) -> pd.DataFrame:
    """Returns per server its last day with an observed value, and the days from it to the analysis date.

    Args:
        clean_server_metrics: long table ``server_id, metric, date, value[, is_imputed]``.

    Returns:
        One row per server: ``server_id, last_day, days_silent`` (0 for a server reporting on the last day).
    """
    observed = clean_server_metrics["value"].notna().to_numpy().copy()
    if "is_imputed" in clean_server_metrics:
        observed &= ~clean_server_metrics["is_imputed"].astype(bool).to_numpy()
    # integer server codes (first-appearance order, as unique()): no copy of the frame's rows, so tens of
    # millions of rows cost one pass and a few hundred MB
    codes, servers = pd.factorize(clean_server_metrics["server_id"])
    observed &= codes >= 0
    dates = pd.Series(pd.to_datetime(clean_server_metrics["date"]).to_numpy()[observed])
    last = dates.groupby(codes[observed]).max().reindex(range(len(servers)))
    last.index = pd.Index(servers, name="server_id")
    days_silent = (analysis_date(clean_server_metrics) - last).dt.days
    return pd.DataFrame({"last_day": last, "days_silent": days_silent.astype("Int64")}).reset_index()


def find_stale_servers(clean_server_metrics: pd.DataFrame, stale_after_days: int) -> pd.DataFrame:
    """The servers silent for more than ``stale_after_days`` days: ``server_id, last_day, days_silent``.

    A server with no observed value at all counts as silent since before its history.
    """
    if stale_after_days < 0:
        raise ValueError(f"stale_after_days must be >= 0, got {stale_after_days}")
    days = last_observed_days(clean_server_metrics)
    never = days["last_day"].isna()
    stale = never | (days["days_silent"].fillna(0) > stale_after_days)
    return (
        days.loc[stale]
        .sort_values(["days_silent", "server_id"], ascending=[False, True])
        .reset_index(drop=True)
    )
