"""Reporting nodes: Plotly figures for kedro-viz and one self-contained HTML capacity report.

Every node is pure: it takes tables and parameters and returns a new ``plotly.graph_objects.Figure``, a
table or the report's HTML as a string. Each node copes with an empty optional input (no consolidation
candidates, no cluster table, no server at risk) by drawing an annotated empty chart instead of failing.
"""

import html
import logging
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from capacity_forecaster.schema import METRICS, QUANTILES, RISK_LEVELS

logger = logging.getLogger(__name__)

_AT_RISK_LEVELS = ("very_high", "high")
_OPTIONAL_AT_RISK_COLUMNS = (
    "action",
    "prob_above_80",
    "prob_above_90",
    "expected_breach_date_80",
    "expected_breach_date_90",
    "recent_days_above_80",
    "first_date_above_80",
    "first_date_above_90",
    "history_days",
    "current_level",
    "recommended_instance_type",
    "monthly_cost_change_usd",
    "reason",
)
_HEATMAP_COLOURS = [  # utilisation 0-100 %: blue below 80 %, orange 80-90 %, red above 90 %
    [0.0, "#f7fbff"],
    [0.5, "#9ecae1"],
    [0.8, "#2171b5"],
    [0.8, "#fdae61"],
    [0.9, "#f46d43"],
    [0.9, "#d73027"],
    [1.0, "#67001f"],
]
_TEMPLATE = "plotly_white"
_DAY_NS = 86_400 * 10**9


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing columns {missing}; it has {list(frame.columns)}")


def _empty_figure(title: str, message: str) -> go.Figure:
    fig = go.Figure(layout={"title": title, "template": _TEMPLATE, "height": 300})
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font_size=16)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _threshold_lines(fig: go.Figure, **subplot: Any) -> None:
    for level, colour in ((80, "#ef8a62"), (90, "#b2182b")):
        fig.add_hline(y=level, line_dash="dot", line_color=colour, line_width=1, **subplot)


def _rank_servers_by_risk(risk_register: pd.DataFrame) -> pd.DataFrame:
    """Ranks servers from most to least at risk, one row per server for its worst metric.

    The worst metric is the most severe tier, then the highest projected utilisation. Servers are ordered by
    tier (very_high first), days to 90 %, days to 80 % (no breach last) and projected utilisation.

    Args:
        risk_register: One row per server and metric with ``server_id``, ``metric``, ``risk_level``,
            ``projected_utilization``, ``days_to_80``, ``days_to_90`` (and any other columns, kept).

    Returns:
        One row per server, most at risk first, with a ``rank`` column starting at 1.
    """
    _require(
        risk_register,
        ("server_id", "metric", "risk_level", "projected_utilization", "days_to_80", "days_to_90"),
        "risk_register",
    )
    unknown = set(risk_register["risk_level"].dropna()) - set(RISK_LEVELS)
    if unknown:
        raise ValueError(f"risk_register has unknown risk levels {sorted(unknown)}; expected {RISK_LEVELS}")
    ranked = risk_register.assign(
        _tier=risk_register["risk_level"].map({level: i for i, level in enumerate(RISK_LEVELS)}),
        _d90=pd.to_numeric(risk_register["days_to_90"], errors="coerce").astype("float64"),
        _d80=pd.to_numeric(risk_register["days_to_80"], errors="coerce").astype("float64"),
    )
    ranked = ranked.sort_values(
        ["_tier", "_d90", "_d80", "projected_utilization", "server_id", "metric"],
        ascending=[True, True, True, False, True, True],
        na_position="last",
        kind="stable",
    )
    worst = ranked.drop_duplicates("server_id", keep="first").drop(columns=["_tier", "_d90", "_d80"])
    return worst.reset_index(drop=True).assign(rank=lambda f: np.arange(1, len(f) + 1))


def select_at_risk_servers(risk_register: pd.DataFrame, server_inventory: pd.DataFrame) -> pd.DataFrame:
    """Lists the servers whose worst metric is very_high or high, most urgent first.

    Args:
        risk_register: Risk register, one row per server and metric (see ``_rank_servers_by_risk``).
        server_inventory: Inventory with ``server_id`` and ``archetype``.

    Returns:
        One row per at-risk server: rank, server_id, archetype, risk_level, metric (the worst),
        projected_utilization, days_to_80, days_to_90, then those of ``_OPTIONAL_AT_RISK_COLUMNS`` that the
        register has (action, breach dates, current level, reason).
    """
    _require(server_inventory, ("server_id", "archetype"), "server_inventory")
    ranked = _rank_servers_by_risk(risk_register)
    at_risk = ranked[ranked["risk_level"].isin(_AT_RISK_LEVELS)]
    at_risk = at_risk.drop(columns="archetype", errors="ignore").merge(
        server_inventory[["server_id", "archetype"]], on="server_id", how="left"
    )
    columns = ["rank", "server_id", "archetype", "risk_level", "metric", "projected_utilization"]
    columns += ["days_to_80", "days_to_90"] + [c for c in _OPTIONAL_AT_RISK_COLUMNS if c in at_risk.columns]
    logger.info("%d of %d servers are at risk (very_high or high)", len(at_risk), len(ranked))
    return at_risk[columns].reset_index(drop=True)


def _selected_forecasts(forecasts: pd.DataFrame) -> pd.DataFrame:
    _require(forecasts, ("server_id", "metric", "date", "model", *QUANTILES, "is_selected"), "forecasts")
    return forecasts[forecasts["is_selected"].astype(bool)]


def plot_forecast_vs_actual(
    clean_server_metrics: pd.DataFrame,
    forecasts: pd.DataFrame,
    risk_register: pd.DataFrame,
    top_servers: int,
    history_days: int,
) -> go.Figure:
    """Draws history and the selected forecast (p50 with its p10-p90 band) for the most at-risk servers.

    One panel per server, showing its worst metric, with the 80 % and 90 % thresholds.

    Args:
        clean_server_metrics: Long daily table ``server_id, metric, date, value``.
        forecasts: Forecast table; only rows with ``is_selected`` are drawn.
        risk_register: Risk register used to rank the servers.
        top_servers: Number of servers (panels) to draw (``params:reporting.top_servers``).
        history_days: Days of history shown before the forecast (``params:reporting.history_days``).
    """
    title = f"Forecast vs actual: the top {top_servers} servers by risk (worst metric of each)"
    _require(clean_server_metrics, ("server_id", "metric", "date", "value"), "clean_server_metrics")
    selected = _selected_forecasts(forecasts)
    top = _rank_servers_by_risk(risk_register).head(top_servers)
    if top.empty:
        return _empty_figure(title, "No servers in the risk register")
    # one pass over the (possibly tens of millions of rows) history, then per-server masks on the subset
    clean_server_metrics = clean_server_metrics[clean_server_metrics["server_id"].isin(top["server_id"])]
    selected = selected[selected["server_id"].isin(top["server_id"])]
    fig = make_subplots(
        rows=len(top),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.25 / len(top),
        subplot_titles=[f"{r.server_id} · {r.metric} · {r.risk_level}" for r in top.itertuples()],
    )
    for row, server in enumerate(top.itertuples(), start=1):
        keys = (server.server_id, server.metric)
        history = clean_server_metrics[
            (clean_server_metrics["server_id"] == keys[0]) & (clean_server_metrics["metric"] == keys[1])
        ]
        history = history[history["date"] > history["date"].max() - pd.Timedelta(days=history_days)]
        future = selected[(selected["server_id"] == keys[0]) & (selected["metric"] == keys[1])]
        future = future.sort_values("date")
        first = row == 1
        model = future["model"].iloc[0] if len(future) else "none"
        fig.add_trace(
            go.Scatter(
                x=future["date"],
                y=future["p90"],
                name="p90",
                mode="lines",
                line_width=0,
                legendgroup="band",
                showlegend=False,
                hoverinfo="skip",
            ),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=future["date"],
                y=future["p10"],
                name="p10-p90",
                mode="lines",
                line_width=0,
                fill="tonexty",
                fillcolor="rgba(33,113,181,0.25)",
                legendgroup="band",
                showlegend=first,
            ),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=future["date"],
                y=future["p50"],
                name="forecast p50",
                mode="lines",
                line={"color": "#2171b5"},
                legendgroup="p50",
                showlegend=first,
                hovertemplate=f"{model}<br>%{{x|%Y-%m-%d}}: %{{y:.1f}} %<extra></extra>",
            ),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=history["date"],
                y=history["value"],
                name="actual",
                mode="lines",
                line={"color": "#333333", "width": 1},
                legendgroup="actual",
                showlegend=first,
            ),
            row=row,
            col=1,
        )
        _threshold_lines(fig, row=row, col=1)
    fig.update_yaxes(range=[0, 100], title_text="P95 %")
    fig.update_layout(title=title, template=_TEMPLATE, height=220 * len(top) + 120, hovermode="x unified")
    return fig


def plot_risk_heatmap(
    forecasts: pd.DataFrame, risk_register: pd.DataFrame, heatmap_servers: int, heatmap_quantile: str
) -> go.Figure:
    """Draws servers x weeks of the horizon, coloured by the worst metric's projected weekly peak.

    Args:
        forecasts: Forecast table; only rows with ``is_selected`` are used.
        risk_register: Risk register used to choose and order the servers (most at risk on top).
        heatmap_servers: Number of servers (rows) to draw (``params:reporting.heatmap_servers``).
        heatmap_quantile: Forecast column to colour by, one of p10, p50, p90
            (``params:reporting.heatmap_quantile``).
    """
    if heatmap_quantile not in QUANTILES:
        raise ValueError(f"heatmap_quantile must be one of {QUANTILES}, got {heatmap_quantile!r}")
    title = f"Projected weekly peak ({heatmap_quantile}) of the worst metric, most at-risk servers on top"
    selected = _selected_forecasts(forecasts)
    servers = _rank_servers_by_risk(risk_register).head(heatmap_servers)["server_id"].tolist()
    selected = selected[selected["server_id"].isin(servers)]
    if selected.empty:
        return _empty_figure(title, "No forecasts for the servers in the risk register")
    start = selected["date"].min()
    weekly = selected.assign(week=(selected["date"] - start).dt.days // 7 + 1)
    weekly = weekly.groupby(["server_id", "week", "metric"], as_index=False)[heatmap_quantile].max()
    worst = weekly.sort_values(heatmap_quantile, ascending=False, kind="stable").drop_duplicates(
        ["server_id", "week"]
    )
    peak = worst.pivot(index="server_id", columns="week", values=heatmap_quantile)
    metric = worst.pivot(index="server_id", columns="week", values="metric")
    order = [s for s in servers if s in peak.index][::-1]  # plotly draws the first row at the bottom
    peak, metric = peak.loc[order], metric.loc[order]
    week_start = [(start + pd.Timedelta(days=7 * (w - 1))).strftime("%Y-%m-%d") for w in peak.columns]
    fig = go.Figure(
        go.Heatmap(
            z=peak.to_numpy(dtype="float64"),
            x=[f"W{w}" for w in peak.columns],
            y=peak.index.tolist(),
            customdata=np.dstack([metric.to_numpy(dtype=object), np.broadcast_to(week_start, metric.shape)]),
            zmin=0,
            zmax=100,
            colorscale=_HEATMAP_COLOURS,
            colorbar={"title": "%", "tickvals": [0, 40, 80, 90, 100]},
            hovertemplate="%{y} · week of %{customdata[1]}<br>%{customdata[0]}: %{z:.1f} %<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, template=_TEMPLATE, height=max(300, 18 * len(order) + 140), xaxis_title="week of horizon"
    )
    return fig


def _quarterly_means(clean_server_metrics: pd.DataFrame, server_inventory: pd.DataFrame) -> pd.DataFrame:
    """Mean value per metric, archetype (``unknown`` off the inventory) and quarter (``2024Q3``).

    Rows are reduced to integer codes and summed with ``np.bincount``: no per-row merge or Period strings, and
    each row's quarter is looked up by its day number in a table of the days spanned, so tens of millions of
    rows take seconds and little memory.
    """
    server_codes, servers = pd.factorize(clean_server_metrics["server_id"])
    metric_codes, metrics = pd.factorize(clean_server_metrics["metric"])
    archetype_of = server_inventory.drop_duplicates("server_id").set_index("server_id")["archetype"]
    server_archetypes = pd.Series(np.asarray(servers, dtype=object)).map(archetype_of).fillna("unknown")
    archetype_codes, archetypes = pd.factorize(server_archetypes.astype(str))
    dates = pd.to_datetime(clean_server_metrics["date"]).to_numpy(dtype="datetime64[ns]")
    day = dates.view(np.int64) // _DAY_NS
    first_day = int(day.min())
    day -= first_day
    span = pd.date_range(pd.Timestamp(first_day, unit="D"), periods=int(day.max()) + 1, freq="D")
    quarter_of_day = span.year.to_numpy(np.int64) * 4 + (span.month.to_numpy(np.int64) - 1) // 3
    first_quarter = int(quarter_of_day[0])
    quarter = (quarter_of_day - first_quarter).astype(np.int16)[day]
    del dates, day
    n_quarters = int(quarter_of_day[-1]) - first_quarter + 1
    values = clean_server_metrics["value"].to_numpy(dtype=float)
    observed = ~np.isnan(values)
    group = metric_codes.astype(np.int64) * len(archetypes) + archetype_codes[server_codes]
    cell = group * n_quarters + quarter
    size = len(metrics) * len(archetypes) * n_quarters
    sums = np.bincount(cell[observed], weights=values[observed], minlength=size)
    counts = np.bincount(cell[observed], minlength=size)
    present = np.flatnonzero(np.bincount(cell, minlength=size))  # a quarter of NaN only stays, as NaN
    metric_index, rest = np.divmod(present, len(archetypes) * n_quarters)
    archetype_index, quarter_index = np.divmod(rest, n_quarters)
    quarter_number = quarter_index + first_quarter
    trend = pd.DataFrame(
        {
            "metric": np.asarray(metrics, dtype=object)[metric_index],
            "archetype": np.asarray(archetypes, dtype=object)[archetype_index],
            "quarter": [f"{q // 4}Q{q % 4 + 1}" for q in quarter_number],
            "value": np.where(counts[present] > 0, sums[present] / np.maximum(counts[present], 1), np.nan),
        }
    )
    return trend.sort_values(["metric", "archetype", "quarter"], kind="stable").reset_index(drop=True)


def plot_quarterly_trend(clean_server_metrics: pd.DataFrame, server_inventory: pd.DataFrame) -> go.Figure:
    """Draws the mean daily P95 per quarter and archetype, one panel per metric.

    Args:
        clean_server_metrics: Long daily table ``server_id, metric, date, value``.
        server_inventory: Inventory with ``server_id`` and ``archetype``.
    """
    _require(clean_server_metrics, ("server_id", "metric", "date", "value"), "clean_server_metrics")
    _require(server_inventory, ("server_id", "archetype"), "server_inventory")
    title = "Quarterly mean P95 utilisation by archetype"
    if clean_server_metrics.empty:
        return _empty_figure(title, "No clean metrics")
    trend = _quarterly_means(clean_server_metrics, server_inventory)
    metrics = [m for m in METRICS if m in set(trend["metric"])]
    archetypes = sorted(trend["archetype"].unique())
    fig = make_subplots(rows=2, cols=2, subplot_titles=metrics, shared_xaxes=True, vertical_spacing=0.12)
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    for i, metric in enumerate(metrics):
        for j, archetype in enumerate(archetypes):
            part = trend[(trend["metric"] == metric) & (trend["archetype"] == archetype)]
            fig.add_trace(
                go.Scatter(
                    x=part["quarter"],
                    y=part["value"],
                    name=archetype,
                    mode="lines+markers",
                    line={"color": palette[j % len(palette)]},
                    legendgroup=archetype,
                    showlegend=i == 0,
                ),
                row=i // 2 + 1,
                col=i % 2 + 1,
            )
    fig.update_yaxes(range=[0, 100], title_text="mean P95 %")
    fig.update_layout(title=title, template=_TEMPLATE, height=650)
    return fig


def _server_means(clean_server_metrics: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean value of each server per metric (``server_id`` and one column per metric; NaN when none)."""
    rows = clean_server_metrics[clean_server_metrics["metric"].isin(metrics)]
    server_codes, servers = pd.factorize(rows["server_id"])
    values = rows["value"].to_numpy(dtype=float)
    means = {"server_id": np.asarray(servers, dtype=object)}
    for metric in metrics:
        keep = (rows["metric"] == metric).to_numpy() & ~np.isnan(values)
        sums = np.bincount(server_codes[keep], weights=values[keep], minlength=len(servers))
        counts = np.bincount(server_codes[keep], minlength=len(servers))
        means[metric] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return pd.DataFrame(means)


def plot_cluster_scatter(
    clean_server_metrics: pd.DataFrame,
    server_clusters: pd.DataFrame,
    server_inventory: pd.DataFrame,
    max_servers: int | None = None,
) -> go.Figure:
    """Draws each server's mean cpu against mean memory utilisation, coloured by its K-Means cluster.

    Args:
        clean_server_metrics: Long daily table ``server_id, metric, date, value``.
        server_clusters: One row per server with ``server_id`` and ``cluster`` (``description`` optional).
        server_inventory: Inventory with ``server_id`` and ``archetype`` (shown on hover).
        max_servers: About this many points (``params:reporting.scatter_max_servers``; null: all): a bigger
            fleet is drawn as a fixed random sample of each cluster in proportion (every cluster keeps at
            least one point) and the title says so; ``server_clusters`` holds every server.
    """
    title = "Server clusters: mean cpu vs mean memory utilisation"
    _require(server_clusters, ("server_id", "cluster"), "server_clusters")
    if server_clusters.empty:
        return _empty_figure(title, "No clusters")
    means = _server_means(clean_server_metrics, ["cpu_p95", "memory_p95"])
    keep = ["server_id", "cluster"] + [c for c in ("description",) if c in server_clusters.columns]
    points = (
        server_clusters[keep]
        .merge(means, on="server_id", how="inner")
        .merge(server_inventory[["server_id", "archetype"]], on="server_id", how="left")
    )
    if max_servers and len(points) > max_servers:
        share, total = max_servers / len(points), len(points)
        points = points.groupby("cluster", group_keys=False, sort=False)[points.columns.tolist()].apply(
            lambda part: part.sample(n=max(1, round(len(part) * share)), random_state=0)
        )
        points = points.sort_index()
        title += f" ({len(points):,} of {total:,} servers, sampled per cluster)"
    fig = go.Figure()
    for cluster, part in points.groupby("cluster", sort=True):
        label = f"cluster {cluster}"
        if "description" in part.columns and part["description"].notna().any():
            label += f": {part['description'].dropna().iloc[0]}"
        fig.add_trace(
            go.Scatter(
                x=part["cpu_p95"],
                y=part["memory_p95"],
                mode="markers",
                name=label,
                text=part["server_id"],
                customdata=part[["archetype"]].fillna("unknown").to_numpy(),
                hovertemplate="%{text} (%{customdata[0]})<br>cpu %{x:.1f} %, memory %{y:.1f} %"
                "<extra></extra>",
            ),
        )
    fig.update_layout(
        title=title,
        template=_TEMPLATE,
        height=650,
        xaxis_title="mean cpu P95 %",
        yaxis_title="mean memory P95 %",
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "xanchor": "left", "x": 0},
    )
    fig.update_xaxes(range=[0, 100])
    fig.update_yaxes(range=[0, 100])
    return fig


def _cell_text(value: Any, float_format: str) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else float_format.format(value)
    if isinstance(value, pd.Timestamp) and value == value.normalize():
        return value.strftime("%Y-%m-%d")
    return str(value)


def _html_table(frame: pd.DataFrame, float_format: str = "{:.1f}") -> str:
    """Renders a frame as an HTML table; cells carry ``col-<column>`` classes, risk levels their own class."""
    head = "".join(f'<th class="col-{html.escape(str(c))}">{html.escape(str(c))}</th>' for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            text = _cell_text(value, float_format)
            css = f"col-{column}" + (f" {text}" if column == "risk_level" and text in RISK_LEVELS else "")
            cells.append(f'<td class="{html.escape(css)}">{html.escape(text)}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="table"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _leaderboard_frame(model_leaderboard: Any) -> pd.DataFrame:
    """Turns the leaderboard JSON (records, or a dict holding a list of them) into one row per model."""
    records = model_leaderboard
    if isinstance(records, dict):
        lists = [v for v in records.values() if isinstance(v, list) and all(isinstance(r, dict) for r in v)]
        if lists:
            records = lists[0]
        elif records and all(isinstance(v, dict) for v in records.values()):
            records = [{"model": k, **v} for k, v in records.items()]
        else:
            records = []
    frame = pd.DataFrame.from_records(list(records or []))
    if not frame.empty:
        _require(frame, ("model",), "model_leaderboard")
    return frame


def plot_model_leaderboard(model_leaderboard: Any) -> go.Figure:
    """Draws the backtest leaderboard: MASE and p10-p90 coverage per model, best first.

    Args:
        model_leaderboard: Leaderboard JSON: a list of records (or a dict holding one) with ``model`` and
            numeric scores; columns whose name contains ``mase`` or ``coverage`` are drawn.
    """
    title = "Model leaderboard (rolling-origin backtest)"
    frame = _leaderboard_frame(model_leaderboard)
    if frame.empty:
        return _empty_figure(title, "No models in the leaderboard")
    numeric = [c for c in frame.columns if c != "model" and pd.api.types.is_numeric_dtype(frame[c])]
    mase = [c for c in numeric if "mase" in c.lower()]
    coverage = [c for c in numeric if "coverage" in c.lower()]
    if not mase:
        raise ValueError(f"model_leaderboard has no MASE column; it has {list(frame.columns)}")
    frame = frame.sort_values(mase[0], kind="stable")
    models = frame["model"].astype(str).tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=["MASE (lower is better)", "p10-p90 coverage"])
    for column in mase:
        fig.add_trace(go.Bar(x=models, y=frame[column], name=column, texttemplate="%{y:.3f}"), row=1, col=1)
    for column in coverage:
        fig.add_trace(go.Bar(x=models, y=frame[column], name=column, texttemplate="%{y:.2f}"), row=1, col=2)
    if coverage:
        fig.add_hline(y=0.8, line_dash="dot", line_color="#333333", row=1, col=2)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#b2182b", row=1, col=1)
    fig.update_layout(title=title, template=_TEMPLATE, height=450, barmode="group")
    return fig


def _usd(value: float) -> str:
    return f"-${-value:,.0f}" if value < 0 else f"${value:,.0f}"


def _monthly_fleet_cost(server_inventory: pd.DataFrame, hours_per_month: float) -> float:
    _require(server_inventory, ("server_id", "hourly_cost_usd"), "server_inventory")
    return float(server_inventory["hourly_cost_usd"].sum() * hours_per_month)


def _savings_by_archetype(
    consolidation_plan: pd.DataFrame, server_inventory: pd.DataFrame, savings_column: str
) -> pd.Series:
    if consolidation_plan.empty:
        return pd.Series(dtype="float64")
    _require(consolidation_plan, ("server_id", savings_column), "consolidation_plan")
    plan = consolidation_plan[["server_id", savings_column]].merge(
        server_inventory[["server_id", "archetype"]], on="server_id", how="left"
    )
    plan["archetype"] = plan["archetype"].fillna("unknown")
    savings = plan.groupby("archetype")[savings_column].sum().astype("float64")
    return savings[savings > 0].sort_values(ascending=False)


def plot_savings_waterfall(
    consolidation_plan: pd.DataFrame,
    server_inventory: pd.DataFrame,
    savings_column: str,
    hours_per_month: float,
) -> go.Figure:
    """Draws the monthly fleet cost, the consolidation savings per archetype and the cost after consolidation.

    Args:
        consolidation_plan: One row per planned move with ``server_id`` and the monthly saving in USD.
        server_inventory: Inventory with ``server_id``, ``archetype`` and ``hourly_cost_usd``.
        savings_column: Plan column holding the monthly saving (``params:reporting.savings_column``).
        hours_per_month: Hours billed per month (``params:reporting.hours_per_month``).
    """
    fleet = _monthly_fleet_cost(server_inventory, hours_per_month)
    savings = _savings_by_archetype(consolidation_plan, server_inventory, savings_column)
    total = float(savings.sum())
    share = total / fleet if fleet else 0.0
    fig = go.Figure(
        go.Waterfall(
            x=["fleet today", *[f"consolidate {a}" for a in savings.index], "after consolidation"],
            measure=["absolute", *["relative"] * len(savings), "total"],
            y=[fleet, *(-savings).tolist(), 0.0],
            text=[_usd(v) for v in (fleet, *(-savings).tolist(), fleet - total)],
            decreasing={"marker": {"color": "#1a9850"}},
            totals={"marker": {"color": "#2171b5"}},
            increasing={"marker": {"color": "#d73027"}},
        )
    )
    title = f"Monthly fleet cost: consolidation saves ${total:,.0f} ({share:.1%})"
    if savings.empty:
        title = "Monthly fleet cost: no consolidation candidates, no savings"
    fig.update_layout(
        title=title, template=_TEMPLATE, height=450, yaxis_title="USD per month", showlegend=False
    )
    return fig


def _flat_items(report: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flattens a JSON report into (key, value) rows; lists are summarised by their length."""
    if isinstance(report, dict):
        return [item for k, v in report.items() for item in _flat_items(v, f"{prefix}{k}.")]
    if isinstance(report, list):
        return [(prefix[:-1], f"{len(report)} entries")]
    if isinstance(report, float):
        return [(prefix[:-1], f"{report:,.4g}")]
    return [(prefix[:-1], str(report))]


_REPORT_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:24px;color:#222}h1{margin-bottom:4px}.sub{color:#666;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:8px;padding:12px 16px;min-width:150px}.card .n{font-size:28px;
font-weight:600}.card .l{color:#666;font-size:13px}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e5e5e5;padding:4px 10px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f5f5f5}.table{overflow-x:auto}td.col-reason{white-space:normal;min-width:380px}
.very_high{color:#b2182b;font-weight:600}.high{color:#d6604d}section{margin:28px 0}
details{margin:8px 0}
"""


def build_capacity_report(  # noqa: PLR0913, PLR0917 (one argument per node input)
    at_risk_servers: pd.DataFrame,
    risk_register: pd.DataFrame,
    consolidation_plan: pd.DataFrame,
    server_inventory: pd.DataFrame,
    data_quality_report: dict[str, Any],
    risk_summary: dict[str, Any],
    forecast_vs_actual: go.Figure,
    risk_heatmap: go.Figure,
    quarterly_trend: go.Figure,
    cluster_scatter: go.Figure,
    model_leaderboard_chart: go.Figure,
    savings_waterfall: go.Figure,
    savings_column: str,
    hours_per_month: float,
    report_title: str,
    table_rows: int | None = None,
) -> str:
    """Builds the capacity report: one self-contained HTML page that opens offline.

    It holds the tier counts, the consolidation savings, the data quality figures, the at-risk table and the
    figures, with plotly.js embedded once (no CDN, no network).

    Args:
        at_risk_servers: Output of ``select_at_risk_servers``.
        risk_register: Risk register (tier counts per server).
        consolidation_plan: Consolidation plan (number of moves and savings).
        server_inventory: Inventory (fleet size and cost).
        data_quality_report: ETL's data quality report (JSON).
        risk_summary: risk_analysis's summary (JSON), shown as a key/value table.
        forecast_vs_actual: Figure from ``plot_forecast_vs_actual``.
        risk_heatmap: Figure from ``plot_risk_heatmap``.
        quarterly_trend: Figure from ``plot_quarterly_trend``.
        cluster_scatter: Figure from ``plot_cluster_scatter``.
        model_leaderboard_chart: Figure from ``plot_model_leaderboard``.
        savings_waterfall: Figure from ``plot_savings_waterfall``.
        savings_column: Plan column holding the monthly saving (``params:reporting.savings_column``).
        hours_per_month: Hours billed per month (``params:reporting.hours_per_month``).
        report_title: Page title (``params:reporting.report_title``).
        table_rows: Most at-risk servers listed (``params:reporting.report_table_rows``; null for all): a big
            fleet's report lists the most urgent ones and says where the full list is (``at_risk_servers``
            CSV and the ``risk_register``, both written through the catalog), so its size stays bounded.

    Returns:
        The report as an HTML document.
    """
    ranked = _rank_servers_by_risk(risk_register)
    tiers = ranked["risk_level"].value_counts().reindex(list(RISK_LEVELS), fill_value=0)
    fleet_cost = _monthly_fleet_cost(server_inventory, hours_per_month)
    savings = float(_savings_by_archetype(consolidation_plan, server_inventory, savings_column).sum())
    share = savings / fleet_cost if fleet_cost else 0.0
    analysis_date = ""
    if "analysis_date" in risk_register.columns and risk_register["analysis_date"].notna().any():
        analysis_date = pd.Timestamp(risk_register["analysis_date"].max()).strftime("%Y-%m-%d")
    cards = [(f"{tiers[level]:,}", f"servers {level.replace('_', ' ')}") for level in RISK_LEVELS]
    cards += [
        (f"${savings:,.0f}", f"monthly savings ({share:.1%} of ${fleet_cost:,.0f})"),
        (f"{len(consolidation_plan):,}", "planned consolidation moves"),
    ]
    if "monthly_cost_change_usd" in risk_register.columns:
        per_server = risk_register.drop_duplicates("server_id")
        recommended = per_server["recommended_instance_type"].astype("string").fillna("")
        resized = recommended != ""
        if resized.any():
            change = float(per_server.loc[resized, "monthly_cost_change_usd"].sum())
            label = f"monthly cost change if {resized.sum():,} servers are right-sized"
            cards.append((f"${change:+,.0f}", label))
    if "stale" in risk_register.columns:
        stale = risk_register.loc[risk_register["stale"].fillna(False).astype(bool), "server_id"].nunique()
        cards.append((f"{stale:,}", "stale servers (check monitoring)"))
    card_html = "".join(
        f'<div class="card"><div class="n">{html.escape(number)}</div>'
        f'<div class="l">{html.escape(label)}</div></div>'
        for number, label in cards
    )
    days = {c: "Int64" for c in ("days_to_80", "days_to_90") if c in at_risk_servers.columns}
    shown = at_risk_servers.head(table_rows) if table_rows else at_risk_servers
    table = (
        _html_table(shown.astype(days))  # whole days, also after a CSV round trip (NaN -> float)
        if len(at_risk_servers)
        else "<p>No server is at risk in the horizon.</p>"
    )
    if len(shown) < len(at_risk_servers):
        table = (
            f'<p class="sub">The {len(shown):,} most urgent of {len(at_risk_servers):,} at-risk servers. '
            "The full list is the <code>at_risk_servers</code> CSV next to this report, and every server and "
            "metric is in the <code>risk_register</code> dataset (both written by the same run).</p>" + table
        )
    quality = pd.DataFrame(_flat_items(data_quality_report), columns=["check", "value"])
    details = pd.DataFrame(_flat_items(risk_summary), columns=["item", "value"])
    figures = [
        ("Forecast vs actual", forecast_vs_actual),
        ("Risk heatmap", risk_heatmap),
        ("Consolidation savings", savings_waterfall),
        ("Quarterly trend by archetype", quarterly_trend),
        ("Server clusters", cluster_scatter),
        ("Model leaderboard", model_leaderboard_chart),
    ]
    figure_html = "".join(
        f"<section><h2>{html.escape(name)}</h2>"
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{i}", default_width="100%")
        + "</section>"
        for i, (name, fig) in enumerate(figures)
    )
    subtitle = f"{len(ranked):,} servers"
    subtitle += f" · analysis date {analysis_date}" if analysis_date else ""
    logger.info("Capacity report: %s; savings $%.0f per month", tiers.to_dict(), savings)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report_title)}</title><style>{_REPORT_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f'<h1>{html.escape(report_title)}</h1><p class="sub">{html.escape(subtitle)}</p>'
        f'<section><h2>Summary</h2><div class="cards">{card_html}</div></section>'
        f"<section><h2>Servers at risk ({len(at_risk_servers)})</h2>{table}</section>"
        f"{figure_html}"
        f"<section><h2>Data quality</h2>{_html_table(quality)}</section>"
        f"<section><h2>Risk analysis summary</h2><details><summary>{len(details)} items</summary>"
        f"{_html_table(details)}</details></section>"
        "</body></html>\n"
    )
