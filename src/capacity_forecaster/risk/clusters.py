"""K-Means clusters of servers by utilisation profile, with words for each cluster."""

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from threadpoolctl import threadpool_limits

from capacity_forecaster.schema import METRICS

from .packing import UNKNOWN
from .profiles import WEEKDAYS

logger = logging.getLogger(__name__)


def server_features(utilisation_profiles: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One row per server: level, spread and period-end uplift per metric, and the mean weekly shape.

    A feature no server has (e.g. the quarter-end uplift of a history without an end-of-quarter day) is
    absent, and said so in the log; a feature only some servers lack is NaN for them.
    """
    kinds = ("level", "spread", "month_end_uplift", "quarter_end_uplift")
    per_metric = utilisation_profiles.groupby(["server_id", "metric"], observed=True)[list(kinds)].first()
    per_metric = per_metric.unstack("metric")
    present = set(per_metric.columns.get_level_values(1))
    metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    features = pd.DataFrame(index=per_metric.index)
    groups: dict[str, list[str]] = {"level": [], "spread": [], "weekly": [], "period_end": []}
    absent = []
    for kind, group in zip(kinds, ("level", "spread", "period_end", "period_end"), strict=True):
        for metric in metrics:
            name = f"{kind}_{metric}"
            values = per_metric[(kind, metric)]
            if values.isna().all():
                absent.append(name)
                continue
            features[name] = values
            groups[group].append(name)
    if absent:
        logger.warning("No server has these clustering features, left out: %s", absent)
    weekly = utilisation_profiles.groupby("server_id")[[f"weekday_{d}" for d in WEEKDAYS]].mean()
    features = features.join(weekly)
    groups["weekly"] = list(weekly.columns)
    return features, {group: columns for group, columns in groups.items() if columns}


def _describe_cluster(centroid: pd.Series) -> str:
    """Words for a cluster centroid in original units, e.g. "low utilisation (cpu 9 %, ...), flat week"."""
    levels = {c.removeprefix("level_"): centroid[c] for c in centroid.index if c.startswith("level_")}
    mean_level = float(np.nanmean(list(levels.values())))
    word = (
        "idle"
        if mean_level < 15
        else "low"
        if mean_level < 35  # noqa: PLR2004 - % bands for words
        else "moderate"
        if mean_level < 60
        else "high"
    )  # noqa: PLR2004
    spread = float(np.nanmean([centroid[c] for c in centroid.index if c.startswith("spread_")]))
    steadiness = "steady" if spread < 5 else "variable" if spread < 10 else "volatile"  # noqa: PLR2004
    top = max(levels, key=lambda m: levels[m])
    shown = ", ".join(f"{m.removesuffix('_p95')} {levels[m]:.0f} %" for m in levels)
    parts = [f"{steadiness} {word} utilisation ({shown})"]
    if word != "idle" and levels[top] - mean_level > 10:  # noqa: PLR2004
        parts.append(f"{top.removesuffix('_p95')}-heavy")
    weekend = (
        centroid[["weekday_sat", "weekday_sun"]].mean()
        / centroid[[f"weekday_{d}" for d in WEEKDAYS[:5]]].mean()
    )
    week = (
        "weekday-heavy (weekend dip)"
        if weekend < 0.8
        else "slight weekend dip"
        if weekend < 0.95
        else "flat week"
    )
    parts.append("weekend peaks" if weekend > 1.04 else week)

    for kind, label in (("quarter_end_uplift", "quarter-end"), ("month_end_uplift", "month-end")):
        uplift = {c.removeprefix(f"{kind}_"): centroid[c] for c in centroid.index if c.startswith(f"{kind}_")}
        if not uplift:
            continue
        metric = max(uplift, key=lambda m: np.nan_to_num(uplift[m], nan=-np.inf))
        if np.nan_to_num(uplift[metric]) >= 3:  # noqa: PLR2004 - points
            parts.append(f"{label} peaks (+{uplift[metric]:.0f} pts {metric.removesuffix('_p95')})")
    return ", ".join(parts)


def cluster_profiles(  # noqa: PLR0914, PLR0917 - one argument per parameter leaf
    utilisation_profiles: pd.DataFrame,
    server_inventory: pd.DataFrame,
    k_min: int,
    k_max: int,
    sample_size: int,
    random_seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Groups servers by utilisation profile with K-Means (k by silhouette) and describes each cluster.

    Features per server: level and spread of every metric, the weekly shape and the month-end and
    end-of-quarter uplifts. Each feature is standardised and each of the four groups (level, spread,
    weekly, period end) is
    scaled to the same total weight. Cluster numbers go from the lowest mean level (0) up.

    Args:
        utilisation_profiles: Output of ``profile_utilisation``.
        server_inventory: Inventory; its ``archetype`` column, when present, gives the adjusted Rand index.
        k_min: Smallest number of clusters tried (>= 2).
        k_max: Largest number of clusters tried (capped at the number of servers - 1).
        sample_size: Servers sampled (at random) to choose k: K-Means and its silhouette score are computed on
            the sample for each k, then K-Means with the best k runs on every server.
        random_seed: Seed of K-Means and of the sample.

    Returns:
        ``server_clusters`` (``server_id``, ``cluster``, ``description``, ``archetype`` when known, and the
        unscaled features) and a cluster report (k, silhouette per k, adjusted Rand index, descriptions).
    """
    if not 2 <= k_min <= k_max:  # noqa: PLR2004
        raise ValueError(f"need 2 <= cluster_k_min <= cluster_k_max, got {k_min} and {k_max}")
    features, groups = server_features(utilisation_profiles)
    standardised = (features - features.mean()) / features.std(ddof=0).replace(0.0, 1.0)
    for columns in groups.values():
        standardised[columns] = standardised[columns] / np.sqrt(len(columns))
    matrix = standardised.fillna(0.0).to_numpy()
    n_servers = len(features)
    sample = np.sort(np.random.default_rng(random_seed).permutation(n_servers)[:sample_size])
    candidates = list(range(k_min, min(k_max, len(sample) - 1) + 1))
    scores: dict[int, float] = {}
    # One thread: K-Means' OpenMP threads spin when the cores are busy; on a loaded 2-core machine 10,000
    # servers took 94 s with the default threads and 3.3 s with one.
    with threadpool_limits(limits=1):
        for k in candidates:
            labels = KMeans(n_clusters=k, n_init=4, random_state=random_seed).fit_predict(matrix[sample])
            if len(np.unique(labels)) >= 2:  # noqa: PLR2004 - otherwise identical profiles
                scores[k] = float(silhouette_score(matrix[sample], labels))
        best_k = max(scores, key=lambda k: scores[k]) if scores else 1
        if scores:
            labels = KMeans(n_clusters=best_k, n_init=4, random_state=random_seed).fit_predict(matrix)
    if not scores:
        logger.warning(
            "Too few distinct server profiles among %d servers: every server goes in one cluster", n_servers
        )
        labels = np.zeros(n_servers, dtype=int)
    order = features.filter(like="level_").mean(axis=1).groupby(labels).mean().sort_values().index
    labels = pd.Series(labels).map({old: new for new, old in enumerate(order)}).to_numpy()
    centroids = features.groupby(labels).mean()
    descriptions = {int(c): _describe_cluster(centroids.loc[c]) for c in centroids.index}

    clusters = pd.DataFrame({"server_id": features.index.astype("str"), "cluster": labels.astype("int64")})
    clusters["description"] = clusters["cluster"].map(descriptions).astype("str")
    report: dict[str, Any] = {
        "k": int(best_k),
        "silhouette": scores.get(best_k),
        "silhouette_by_k": {str(k): round(v, 4) for k, v in scores.items()},
        "selection_sample": int(len(sample)),
        "features": list(features.columns),
    }
    archetypes = None
    if "archetype" in server_inventory.columns:
        archetypes = clusters["server_id"].map(
            server_inventory.drop_duplicates("server_id").set_index("server_id")["archetype"]
        )
    known = (archetypes.notna() & (archetypes != UNKNOWN)) if archetypes is not None else None
    if known is not None and known.any():
        clusters["archetype"] = archetypes.fillna(UNKNOWN).astype("str")
        report["adjusted_rand_index"] = float(
            adjusted_rand_score(clusters.loc[known, "archetype"], clusters.loc[known, "cluster"])
        )
        if not known.all():
            report["adjusted_rand_index_note"] = (
                f"{int((~known).sum())} server(s) without a known archetype are left out of the index"
            )
    else:
        report["adjusted_rand_index"] = None
        report["adjusted_rand_index_note"] = "server_inventory has no archetype for the clustered servers"
    sizes = clusters["cluster"].value_counts()
    report["clusters"] = [
        {
            "cluster": c,
            "n_servers": int(sizes.get(c, 0)),
            "description": descriptions[c],
            **(
                {"archetypes": clusters.loc[clusters["cluster"] == c, "archetype"].value_counts().to_dict()}
                if "archetype" in clusters.columns
                else {}
            ),
        }
        for c in sorted(descriptions)
    ]
    clusters = clusters.merge(
        features.reset_index(names="server_id").astype({"server_id": "str"}), on="server_id"
    )
    logger.info(
        "K-Means on %d servers: k=%d (silhouette %s), ARI vs archetype %s",
        n_servers,
        best_k,
        report["silhouette"],
        report["adjusted_rand_index"],
    )
    return clusters, report
