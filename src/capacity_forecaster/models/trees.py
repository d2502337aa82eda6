"""Global tree forecasters trained on direct multi-horizon features (one model across many series).

Every training row is a triple (series, origin ``T``, step ``h``) and its target is ``y[T + h]`` minus the
series' 28-day mean at the origin. Features use only values at or before the origin (the origin's level,
trend and volatility, the weekday and last-year values at or before ``T``, the past month-end and
end-of-quarter uplift) plus the target date's calendar and ``h`` itself, so a 90-day forecast never sees a
value the forecaster could not have seen at its origin. Seasonal features a series' history cannot identify
(``unidentified_terms``: a yearly pattern on less than two years, no quarter-end or month-end day seen) are
zero for that series; histories shorter than the horizon train the steps they can and reuse the longest.
"""

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.models.base import (
    MIN_YEARLY_DAYS,
    BaseForecaster,
    budget_series,
    check_long_frame,
    finalise_quantiles,
    future_dates,
)

FEATURES: tuple[str, ...] = (
    "h", "level", "last", "mean_7", "std_28", "trend_28", "trend_91", "seasonal_naive", "weekday_profile",
    "year_ago", "has_year_ago", "quarter_end_uplift", "month_end_uplift", "day_of_week", "month",
    "day_of_month", "is_month_end", "is_end_of_quarter", "days_to_quarter_end", "is_holiday",
)  # fmt: skip
"""Columns of the direct design matrix, in order."""

TERM_FEATURES: dict[str, tuple[str, ...]] = {
    "yearly": ("month", "year_ago", "has_year_ago"),
    "quarter_end": ("quarter_end_uplift", "is_end_of_quarter", "days_to_quarter_end"),
    "month_end": ("month_end_uplift", "is_month_end", "day_of_month"),
}
"""Features of each seasonal term; they are zero on the rows of a series whose history cannot identify it."""

_HORIZON_BUCKETS = np.array([7, 14, 28, 56])  # residual quantiles of RF/GB are kept per bucket of h
PANEL_SERIES = 2000
"""Series per panel chunk: a panel holds ~13 float64 arrays of series x days (~250 MB for 2,000 series
of 1,220 days), so memory stays bounded by the chunk however large the fleet."""


class _Panel:
    """Series on one daily axis: ``values[i, t]`` (NaN outside a series' span) plus windowed statistics."""

    def __init__(
        self,
        frame: pd.DataFrame,
        horizon: int,
        calendar: dict,
        axis: tuple[pd.DatetimeIndex, pd.DataFrame] | None = None,
    ):
        """``axis``: the days and their calendar features to use (shared by the chunks of one fleet);
        by default the frame's own days plus ``horizon``."""
        if axis is None:
            start, end = frame["ds"].min(), frame["ds"].max()
            dates = pd.date_range(start, end + pd.Timedelta(days=horizon), freq="D")
            axis = dates, calendar_features(dates, **calendar)
        self.dates, self.calendar = axis
        rows, uniques = pd.factorize(frame["unique_id"], sort=True)  # row of each frame row, ids sorted
        self.ids = np.asarray(uniques, dtype=object)
        cols = ((frame["ds"] - self.dates[0]) // pd.Timedelta(days=1)).to_numpy()
        self.values = np.full((len(self.ids), len(self.dates)), np.nan)
        self.values[rows, cols] = frame["y"].to_numpy()
        self.first = np.full(len(self.ids), len(self.dates))
        np.minimum.at(self.first, rows, cols)
        self.last = np.zeros(len(self.ids), dtype=int)
        np.maximum.at(self.last, rows, cols)
        self.terms_off = self._terms_off()
        observed = ~np.isnan(self.values)
        filled = np.where(observed, self.values, 0.0)
        zero = np.zeros((len(self.ids), 1))
        self._sum = np.hstack([zero, np.cumsum(filled, axis=1)])
        self._sq = np.hstack([zero, np.cumsum(filled**2, axis=1)])
        self._count = np.hstack([zero, np.cumsum(observed, axis=1)])
        uplift_windows = {}
        for name, column in (
            ("quarter_end_uplift", "is_end_of_quarter"),
            ("month_end_uplift", "is_month_end"),
        ):
            mask = self.calendar[column].to_numpy()
            uplift_windows[name] = tuple(
                np.hstack([zero, np.cumsum(np.where(observed & m, filled, 0.0), axis=1)])
                for m in (mask, ~mask)
            ) + tuple(np.hstack([zero, np.cumsum(observed & m, axis=1)]) for m in (mask, ~mask))
        self._uplift = uplift_windows
        weekday_sum, weekday_count = np.zeros_like(filled), np.zeros_like(filled)
        for weeks in range(8):
            lag = 7 * weeks
            if lag >= filled.shape[1]:  # a panel shorter than 8 weeks
                break
            weekday_sum[:, lag:] += filled[:, : filled.shape[1] - lag]
            weekday_count[:, lag:] += observed[:, : filled.shape[1] - lag]
        with np.errstate(invalid="ignore", divide="ignore"):
            self.weekday_mean = weekday_sum / weekday_count  # mean of the same weekday over 8 weeks up to t

    def _terms_off(self) -> pd.DataFrame:
        """``unidentified_terms`` of each series' span (rows in ``ids`` order, one column per term)."""
        eoq = self.calendar["is_end_of_quarter"].to_numpy()
        table = {"yearly": self.last - self.first + 1 < MIN_YEARLY_DAYS}
        month_end = self.calendar["is_month_end"].to_numpy() & ~eoq
        for term, flags in (("quarter_end", eoq), ("month_end", month_end)):
            seen = np.concatenate([[0], np.cumsum(flags)])
            table[term] = seen[self.last + 1] - seen[self.first] == 0
        return pd.DataFrame(table, index=self.ids)[list(TERM_FEATURES)]

    @staticmethod
    def _window(cum: np.ndarray, rows: np.ndarray, end: np.ndarray, days: int) -> np.ndarray:
        """Sum of ``days`` values up to column ``end`` inclusive, from a zero-prefixed cumulative array."""
        hi = np.clip(end + 1, 0, cum.shape[1] - 1)
        lo = np.clip(end + 1 - days, 0, cum.shape[1] - 1)
        return cum[rows, hi] - cum[rows, lo]

    def mean(self, rows: np.ndarray, end: np.ndarray, days: int) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._window(self._sum, rows, end, days) / self._window(self._count, rows, end, days)

    def std(self, rows: np.ndarray, end: np.ndarray, days: int) -> np.ndarray:
        n = self._window(self._count, rows, end, days)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self._window(self._sum, rows, end, days) / n
            return np.sqrt(np.maximum(self._window(self._sq, rows, end, days) / n - mean**2, 0.0))

    def uplift(self, name: str, rows: np.ndarray, end: np.ndarray, days: int = 364) -> np.ndarray:
        in_sum, out_sum, in_count, out_count = self._uplift[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._window(in_sum, rows, end, days) / self._window(in_count, rows, end, days) - (
                self._window(out_sum, rows, end, days) / self._window(out_count, rows, end, days)
            )

    def value(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        ok = cols >= 0
        return np.where(ok, self.values[rows, np.clip(cols, 0, None)], np.nan)

    def design(
        self, rows: np.ndarray, origins: np.ndarray, steps: np.ndarray, max_step: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Builds the feature matrix for (series, origin column, step) triples; returns ``(X, level)``.

        The feature ``h`` is capped at ``max_step`` (the longest step trained on); the features of a seasonal
        term are zero on the rows of series in ``terms_off``.
        """
        target = origins + steps
        seasons = -(-steps // 7)
        level = self.mean(rows, origins, 28)
        year_ago = self.value(rows, target - 364) - self.mean(rows, origins - 364, 28)
        cal = self.calendar.iloc[target]
        columns = {
            "h": steps if max_step is None else np.minimum(steps, max_step),
            "level": level,
            "last": self.value(rows, origins) - level,
            "mean_7": self.mean(rows, origins, 7) - level,
            "std_28": self.std(rows, origins, 28),
            "trend_28": level - self.mean(rows, origins - 28, 28),
            "trend_91": self.mean(rows, origins, 91) - self.mean(rows, origins - 91, 91),
            "seasonal_naive": self.value(rows, target - 7 * seasons) - level,
            "weekday_profile": self.weekday_mean[rows, target - 7 * seasons] - self.mean(rows, origins, 56),
            "year_ago": year_ago,
            "has_year_ago": (~np.isnan(year_ago)).astype(float),
            "quarter_end_uplift": self.uplift("quarter_end_uplift", rows, origins),
            "month_end_uplift": self.uplift("month_end_uplift", rows, origins),
            "day_of_week": cal["day_of_week"].to_numpy(),
            "month": cal["month"].to_numpy(),
            "day_of_month": cal["date"].dt.day.to_numpy(),
            "is_month_end": cal["is_month_end"].to_numpy(),
            "is_end_of_quarter": cal["is_end_of_quarter"].to_numpy(),
            "days_to_quarter_end": cal["days_to_quarter_end"].to_numpy(),
            "is_holiday": cal["is_holiday"].to_numpy(),
        }
        for term, names in TERM_FEATURES.items():
            off = self.terms_off[term].to_numpy()[rows]
            for name in names:
                columns[name] = np.where(off, 0.0, columns[name])
        X = np.column_stack([np.asarray(columns[name], dtype="float64") for name in FEATURES])
        return np.nan_to_num(X, nan=0.0), level


class _DirectForecaster(BaseForecaster):
    """Shared fit/predict of the global direct forecasters; subclasses build the estimators."""

    def _calendar(self) -> dict:
        return {
            "country": self.country,
            "month_end_business_days": self.month_end_business_days,
            "quarter_end_business_days": self.quarter_end_business_days,
        }

    def _training_rows(
        self, first: np.ndarray, last: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, ...]:
        """Samples ``max_train_rows`` (series, origin, step) triples from the series' spans alone.

        Series are gap-free, so every origin at least 27 days after a series' first day whose target day is
        at or before its last day has an observed target: no value is needed to sample.
        """
        n = self.max_train_rows * 2  # oversample, then drop rows without room for an origin
        rows = rng.integers(0, len(first), n)
        steps = rng.integers(1, self.max_step_ + 1, n)
        lo = np.maximum(first[rows] + 27, last[rows] - self.train_window_days)
        hi = last[rows] - steps
        ok = hi >= lo
        rows, steps, lo, hi = rows[ok], steps[ok], lo[ok], hi[ok]
        origins = lo + np.floor(rng.random(len(rows)) * (hi - lo + 1)).astype(int)
        keep = slice(0, self.max_train_rows)
        if len(rows) == 0:
            raise ValueError("no training rows: at least one series needs more than 28 days of history")
        return rows[keep], origins[keep], steps[keep]

    def fit(self, df: pd.DataFrame) -> "_DirectForecaster":
        """Fits the global model on direct multi-horizon rows sampled from every series in ``df``.

        The training rows are sampled from the series' spans first; the panel is then built
        :data:`PANEL_SERIES` series at a time, each chunk giving the features of its sampled rows and of its
        series' last day, so no more than ``max_train_rows`` training rows and one chunk's panel are ever
        held. With ``max_series`` set, only that many series (``budget_series``) are forecast; training rows
        still come from every series. ``fitted_on_`` records the series and rows trained on, the panel
        chunks and the series forecast.
        """
        frame = check_long_frame(df)
        needed = pd.Timedelta(days=self.train_window_days + 400)  # features look back at most 364 + 28 days
        frame = frame[frame["ds"] > frame.groupby("unique_id")["ds"].transform("max") - needed]
        start = frame["ds"].min()
        dates = pd.date_range(start, frame["ds"].max() + pd.Timedelta(days=self.horizon), freq="D")
        axis = dates, calendar_features(dates, **self._calendar())
        codes, ids = pd.factorize(frame["unique_id"], sort=True)
        cols = ((frame["ds"] - start) // pd.Timedelta(days=1)).to_numpy()
        first, last = np.full(len(ids), len(dates)), np.zeros(len(ids), dtype=int)
        np.minimum.at(first, codes, cols)
        np.maximum.at(last, codes, cols)
        # A short history cannot teach the longest steps: train the steps it can, reuse the last beyond.
        self.max_step_ = int(np.clip((last - first - 27).max(), 1, self.horizon))
        rng = np.random.default_rng(self.random_state)
        rows, origins, steps = self._training_rows(first, last, rng)
        spans = pd.DataFrame({"days": last - first + 1}, index=pd.Index(ids, name="unique_id"))
        forecast = pd.Index(ids).isin(budget_series(spans, self.max_series, MIN_YEARLY_DAYS))
        position = np.cumsum(forecast) - forecast  # row of each forecast series in the origin state
        X = np.empty((len(rows), len(FEATURES)))
        level, target = np.empty(len(rows)), np.empty(len(rows))
        origin_X = np.empty((forecast.sum() * self.horizon, len(FEATURES)), dtype="float32")
        origin_level = np.empty(forecast.sum() * self.horizon)
        terms_off = []
        starts = np.arange(0, len(ids) + PANEL_SERIES, PANEL_SERIES).clip(max=len(ids))
        bounds = np.searchsorted(codes, starts)  # frame rows of each chunk of series (rows sorted by id)
        for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if lo == hi:
                continue
            panel = _Panel(frame.iloc[lo:hi], self.horizon, self._calendar(), axis)
            offset = chunk * PANEL_SERIES
            take = np.flatnonzero((rows >= offset) & (rows < offset + len(panel.ids)))
            local = rows[take] - offset
            X[take], level[take] = panel.design(local, origins[take], steps[take], self.max_step_)
            target[take] = panel.values[local, origins[take] + steps[take]]
            wanted = np.flatnonzero(forecast[offset : offset + len(panel.ids)])
            if len(wanted):
                first_row = position[offset + wanted[0]] * self.horizon
                state = slice(first_row, first_row + len(wanted) * self.horizon)
                origin_X[state], origin_level[state] = self._origin_state(panel, wanted)
            terms_off.append(panel.terms_off)
        self._fit_estimators(X, target - level, steps, rng)
        self.last_dates_ = frame.groupby("unique_id", sort=True)["ds"].max()[forecast]
        self.origin_features_ = {"X": origin_X, "level": origin_level}
        self.seasonal_terms_off_ = pd.concat(terms_off).sort_index()
        self.fitted_on_ = {"series": len(ids), "rows": len(rows), "panel_chunks": len(terms_off),
                           "series_forecast": int(forecast.sum())}  # fmt: skip
        return self

    def _origin_state(self, panel: _Panel, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The design rows of the last day of the panel's ``series`` (row numbers) for every step, so
        predict needs no history."""
        steps = np.tile(np.arange(1, self.horizon + 1), len(series))
        rows = np.repeat(series, self.horizon)
        X, level = panel.design(rows, panel.last[rows], steps, self.max_step_)
        return X.astype("float32"), level

    def predict(self, h: int) -> pd.DataFrame:
        """Returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day."""
        check_is_fitted(self)
        if h > self.horizon:
            raise ValueError(f"h={h} is beyond the horizon the model was trained for ({self.horizon})")
        out = future_dates(self.last_dates_, h)
        take = (np.arange(len(self.last_dates_))[:, None] * self.horizon + np.arange(h)[None, :]).ravel()
        X = self.origin_features_["X"][take].astype("float64")
        level = self.origin_features_["level"][take]
        p10, p50, p90 = self._predict_quantiles(X, X[:, 0].astype(int))
        out["p10"], out["p50"], out["p90"] = level + p10, level + p50, level + p90
        return finalise_quantiles(out.drop(columns="step"))


class _PointForecaster(_DirectForecaster):
    """A point regressor whose p10/p90 are volatility-scaled residual quantiles from held-out rows."""

    def _make_estimator(self):  # pragma: no cover - interface
        raise NotImplementedError

    def _fit_estimators(
        self, X: np.ndarray, y: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> None:
        self.estimator_, self.residual_quantiles_ = _fit_with_residual_quantiles(
            self._make_estimator(), X, y, steps, rng=rng, share=self.calibration_share
        )

    def _predict_quantiles(self, X: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, ...]:
        return _residual_interval(self.estimator_, self.residual_quantiles_, X, steps)


def _fit_with_residual_quantiles(
    estimator, X: np.ndarray, y: np.ndarray, steps: np.ndarray, *, rng: np.random.Generator, share: float
) -> tuple[Any, np.ndarray]:
    """Fits ``estimator`` on the rows not held out and returns it with the p10/p90 residual quantiles.

    Residuals of the held-out ``share`` of rows are divided by the origin's 28-day volatility (``std_28``,
    at least 0.5) and their 10 % and 90 % quantiles kept per bucket of ``h`` (all rows where a bucket has
    fewer than 20), so one point model yields all three quantiles.
    """
    held_out = rng.random(len(y)) < share
    fitted = estimator.fit(X[~held_out], y[~held_out])
    scale = np.maximum(X[held_out, FEATURES.index("std_28")], 0.5)
    residual = (y[held_out] - fitted.predict(X[held_out])) / scale
    bucket = np.searchsorted(_HORIZON_BUCKETS, steps[held_out])
    overall = np.quantile(residual, [0.1, 0.9]) if len(residual) else np.zeros(2)
    quantiles = np.array(
        [
            np.quantile(residual[bucket == b], [0.1, 0.9]) if (bucket == b).sum() >= 20 else overall
            for b in range(len(_HORIZON_BUCKETS) + 1)
        ]
    )
    return fitted, quantiles


def _residual_interval(
    estimator, residual_quantiles: np.ndarray, X: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, ...]:
    """p10, p50, p90 of a point model: its prediction plus the volatility-scaled residual quantiles."""
    point = estimator.predict(X)
    scale = np.maximum(X[:, FEATURES.index("std_28")], 0.5)
    q = residual_quantiles[np.searchsorted(_HORIZON_BUCKETS, steps)]
    return point + q[:, 0] * scale, point, point + q[:, 1] * scale


_DIRECT_DOC = """
    Args:
        horizon: Longest step ``h`` the model is trained for (``predict(h)`` needs ``h <= horizon``).
        train_window_days: Origins are sampled from this many days before each series' last day.
        max_train_rows: Training rows sampled (series, origin, step); caps the fit cost at any fleet size.
        max_series: Most series forecast per fit (``None``: all), chosen by ``models.base.budget_series``;
            the rest get no forecast from this model (prediction is the cost that grows with the fleet).
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).
        random_state: Seed of the row sampling and of the estimator.
"""


class RandomForestForecaster(_PointForecaster):
    __doc__ = (
        "Global random forest on direct features; p10/p90 from held-out residuals.\n"
        + _DIRECT_DOC
        + "        n_estimators, max_depth, min_samples_leaf, max_features, max_samples, n_jobs: forest.\n"
        "        calibration_share: Share of sampled rows held out for the residual quantiles.\n"
        "        alias: Model name in forecast tables.\n"
    )

    def __init__(
        self,
        *,
        n_estimators: int = 200,
        max_depth: int = 10,
        min_samples_leaf: int = 5,
        max_features: float = 0.5,
        max_samples: float = 0.3,
        n_jobs: int = 1,
        horizon: int = 90,
        train_window_days: int = 730,
        max_train_rows: int = 40_000,
        max_series: int | None = None,
        calibration_share: float = 0.2,
        country: str = "US",
        month_end_business_days: int = 2,
        quarter_end_business_days: int = 5,
        random_state: int = 0,
        alias: str = "random_forest",
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_samples = max_samples
        self.n_jobs = n_jobs
        self.horizon = horizon
        self.train_window_days = train_window_days
        self.max_train_rows = max_train_rows
        self.max_series = max_series
        self.calibration_share = calibration_share
        self.country = country
        self.month_end_business_days = month_end_business_days
        self.quarter_end_business_days = quarter_end_business_days
        self.random_state = random_state
        self.alias = alias

    def _make_estimator(self) -> RandomForestRegressor:
        return RandomForestRegressor(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            max_samples=self.max_samples,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        )


class GradientBoostingForecaster(_PointForecaster):
    __doc__ = (
        "Global gradient boosting (squared error) on direct features; p10/p90 from held-out residuals.\n"
        + _DIRECT_DOC
        + "        n_estimators, learning_rate, max_depth, subsample: of the boosting.\n"
        "        calibration_share: Share of sampled rows held out for the residual quantiles.\n"
        "        alias: Model name in forecast tables.\n"
    )

    def __init__(
        self,
        *,
        n_estimators: int = 150,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        subsample: float = 0.8,
        horizon: int = 90,
        train_window_days: int = 730,
        max_train_rows: int = 40_000,
        max_series: int | None = None,
        calibration_share: float = 0.2,
        country: str = "US",
        month_end_business_days: int = 2,
        quarter_end_business_days: int = 5,
        random_state: int = 0,
        alias: str = "gradient_boosting",
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.horizon = horizon
        self.train_window_days = train_window_days
        self.max_train_rows = max_train_rows
        self.max_series = max_series
        self.calibration_share = calibration_share
        self.country = country
        self.month_end_business_days = month_end_business_days
        self.quarter_end_business_days = quarter_end_business_days
        self.random_state = random_state
        self.alias = alias

    def _make_estimator(self) -> GradientBoostingRegressor:
        return GradientBoostingRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            subsample=self.subsample,
            random_state=self.random_state,
        )


class QuantileGBMForecaster(_DirectForecaster):
    __doc__ = (
        "Global histogram gradient boosting: the fast model that scales to fleets of 10,000+ servers.\n\n"
        "    ``intervals='residual'`` (default) fits ONE point model (``loss``) and takes p10/p90 from\n"
        "    the volatility-scaled quantiles of its held-out residuals per horizon bucket (conformalised\n"
        "    residuals): one binning and one boosting per fit. ``intervals='quantile'`` fits one\n"
        "    quantile-loss model per p10/p50/p90 instead (about three times the fit cost).\n"
        + _DIRECT_DOC
        + "        max_iter, learning_rate, max_leaf_nodes, min_samples_leaf: of each boosting model.\n"
        "        n_threads: OpenMP threads of the boosting (more than the free cores makes it crawl).\n"
        "        intervals: ``'residual'`` or ``'quantile'`` (see above).\n"
        "        loss: Loss of the point model when ``intervals='residual'`` (``'squared_error'``,\n"
        "            ``'absolute_error'`` or ``'quantile'`` at 0.5).\n"
        "        calibration_share: Share of sampled rows held out for the residual quantiles\n"
        "            (residual mode).\n"
        "        alias: Model name in forecast tables.\n"
    )

    def __init__(
        self,
        *,
        max_iter: int = 50,
        learning_rate: float = 0.2,
        max_leaf_nodes: int = 31,
        min_samples_leaf: int = 40,
        n_threads: int = 1,
        intervals: str = "residual",
        loss: str = "squared_error",
        calibration_share: float = 0.2,
        horizon: int = 90,
        train_window_days: int = 730,
        max_train_rows: int = 30_000,
        max_series: int | None = None,
        country: str = "US",
        month_end_business_days: int = 2,
        quarter_end_business_days: int = 5,
        random_state: int = 0,
        alias: str = "quantile_gbm",
    ):
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.n_threads = n_threads
        self.intervals = intervals
        self.loss = loss
        self.calibration_share = calibration_share
        self.horizon = horizon
        self.train_window_days = train_window_days
        self.max_train_rows = max_train_rows
        self.max_series = max_series
        self.country = country
        self.month_end_business_days = month_end_business_days
        self.quarter_end_business_days = quarter_end_business_days
        self.random_state = random_state
        self.alias = alias

    def _boosting(self, loss: str, quantile: float | None = None) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            loss=loss,
            quantile=quantile,
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            early_stopping=False,
            random_state=self.random_state,
        )

    def _fit_estimators(
        self, X: np.ndarray, y: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> None:
        if self.intervals not in ("residual", "quantile"):
            raise ValueError(f"intervals must be 'residual' or 'quantile', got {self.intervals!r}")
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            if self.intervals == "quantile":
                self.estimators_ = {
                    name: self._boosting("quantile", q).fit(X, y)
                    for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
                }
                return
            point = self._boosting(self.loss, 0.5 if self.loss == "quantile" else None)
            self.estimators_ = {}
            self.estimators_["p50"], self.residual_quantiles_ = _fit_with_residual_quantiles(
                point, X, y, steps, rng=rng, share=self.calibration_share
            )

    def _predict_quantiles(self, X: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, ...]:
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            if self.intervals == "quantile":
                return tuple(self.estimators_[name].predict(X) for name in ("p10", "p50", "p90"))
            return _residual_interval(self.estimators_["p50"], self.residual_quantiles_, X, steps)
