"""Per-series trend regression with calendar effects and one detected changepoint (level shift or trend kink).

Server utilisation is mostly a level and a slow trend, a weekly shape, month-end and end-of-quarter peaks and
holiday dips, plus noise that persists for a few days. Migrations, releases and new workloads break the
trend once in a while: the level steps, or the series starts to grow. This forecaster fits exactly that,
for thousands of series at once, with a handful of matrix products and no iterative optimiser.
"""

from statistics import NormalDist

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from capacity_forecaster.calendar import calendar_features
from capacity_forecaster.models.base import (
    QUANTILE_LEVELS,
    BaseForecaster,
    check_long_frame,
    finalise_quantiles,
    future_dates,
    unidentified_terms,
)

CHANGEPOINT_KINDS: tuple[str, ...] = ("level", "trend")
"""``level``: the series steps up or down on the changepoint; ``trend``: its slope changes there."""

_DAYS_PER_YEAR = 365.25
_TERM_COLUMNS = {"quarter_end": "end_of_quarter", "month_end": "month_end"}  # seasonal term -> design column


class ChangepointRegressionForecaster(BaseForecaster):
    """Linear trend + calendar regression per series, with the best single changepoint when it is significant.

    Each series' last ``window_days`` days are regressed (ordinary least squares) on an intercept, a linear
    trend, weekday dummies, the month-end and end-of-quarter windows and public holidays. Every day on a
    ``changepoint_step_days`` grid is then tried as a ``level`` step or a ``trend`` kink — at least
    ``min_segment_days`` after the first day, and ``min_level_days`` (step) or ``min_trend_days`` (kink)
    before the last: a recent step must be seen as a step, since a new slope needs far more support before
    it is extrapolated for months. A series keeps its best candidate when it passes a BIC-style test,
    ``n * log(SSE_without / SSE_with) > changepoint_penalty * log(n)``. The forecast extrapolates the chosen
    fit and adds the last residual, decaying with the residuals' AR(1) coefficient ``phi``.

    p10/p90 are normal quantiles around p50 with the h-step variance
    ``s2 * (1 - phi ** (2 h)) + s2 * leverage_h * (1 + phi) / (1 - phi)``: the AR(1) noise still to come
    plus the uncertainty of the extrapolated fit (its leverage, inflated for autocorrelated residuals).

    A calendar window with no day in a series' history (``unidentified_terms``: e.g. no quarter-end in 77
    days) is left out of its design and recorded in ``seasonal_terms_off_``.

    Series sharing a date range share one design matrix, so a fit is one projection for all of them plus one
    matrix product over all candidate changepoints (the SSE drop of each candidate follows from the
    residuals of the fit without it).

    Args:
        window_days: Trailing days of history each series is fitted on.
        changepoints: Changepoint kinds to try (``level``, ``trend``); empty for a plain trend regression.
        changepoint_penalty: Multiplier of ``log(n)`` a changepoint must beat (higher: fewer changepoints).
        changepoint_step_days: Spacing of the candidate changepoints.
        min_segment_days: Days of history a changepoint needs before it.
        min_level_days: Days of history a level step needs after it.
        min_trend_days: Days of history a trend change needs after it.
        min_history_days: Shortest series accepted.
        horizon: Longest forecast the fit prepares (``predict(h)`` needs ``h <= horizon``).
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end window (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter window (``params:calendar.quarter_end_business_days``).
        alias: Model name in forecast tables.

    Attributes:
        changepoints_: ``unique_id, kind, date, sse_reduction``: the changepoint kept per series (a share of
            the residual sum of squares it removed), for the series that have one.
        coefficients_: Per series, the fitted coefficients by design column (NaN where a column is unused);
            ``trend`` is in points per year, ``changepoint`` the step (points) or the slope change (points
            per year) of the series' changepoint.
    """

    def __init__(
        self,
        *,
        window_days: int = 730,
        changepoints: tuple[str, ...] | list[str] = CHANGEPOINT_KINDS,
        changepoint_penalty: float = 6.0,
        changepoint_step_days: int = 7,
        min_segment_days: int = 28,
        min_level_days: int = 14,
        min_trend_days: int = 56,
        min_history_days: int = 14,
        horizon: int = 90,
        country: str = "US",
        month_end_business_days: int = 2,
        quarter_end_business_days: int = 5,
        alias: str = "changepoint_regression",
    ):
        self.window_days = window_days
        self.changepoints = changepoints
        self.changepoint_penalty = changepoint_penalty
        self.changepoint_step_days = changepoint_step_days
        self.min_segment_days = min_segment_days
        self.min_level_days = min_level_days
        self.min_trend_days = min_trend_days
        self.min_history_days = min_history_days
        self.horizon = horizon
        self.country = country
        self.month_end_business_days = month_end_business_days
        self.quarter_end_business_days = quarter_end_business_days
        self.alias = alias

    def fit(self, df: pd.DataFrame) -> "ChangepointRegressionForecaster":
        """Fits every series on its last ``window_days`` days and prepares ``horizon`` days of quantiles."""
        unknown = set(self.changepoints) - set(CHANGEPOINT_KINDS)
        if unknown:
            raise ValueError(f"unknown changepoint kinds {sorted(unknown)}; choose from {CHANGEPOINT_KINDS}")
        frame = check_long_frame(df)
        last = frame.groupby("unique_id", sort=True)["ds"].transform("max")
        frame = frame[frame["ds"] > last - pd.Timedelta(days=self.window_days)]
        spans = frame.groupby("unique_id", sort=True)["ds"].agg(["min", "max", "size"])
        short = spans[spans["size"] < self.min_history_days]
        if len(short):
            raise ValueError(
                f"{len(short)} series have fewer than min_history_days={self.min_history_days} days, "
                f"e.g. {short.index[0]!r} ({short['size'].iloc[0]} days)"
            )
        span_of_series = spans.groupby(["min", "max"], sort=False).ngroup().to_numpy()
        codes = pd.factorize(frame["unique_id"], sort=True)[0]  # row of ``spans`` (sorted ids) per frame row
        fits = []
        for _, rows in frame.groupby(span_of_series[codes], sort=False):
            ids = pd.Index(rows["unique_id"].unique())  # sorted, like the frame
            dates = pd.date_range(rows["ds"].iloc[0], periods=len(rows) // len(ids) + self.horizon, freq="D")
            fits.append(self._fit_group(ids, dates, rows["y"].to_numpy().reshape(len(ids), -1)))
        position = pd.Index(np.concatenate([f["ids"] for f in fits])).get_indexer(spans.index)
        self.last_dates_ = spans["max"]
        self.quantiles_ = np.concatenate([f["quantiles"] for f in fits])[position]  # (series, horizon, 3)
        self.changepoints_ = pd.concat([f["changepoints"] for f in fits], ignore_index=True)
        columns = [*self._design(pd.DatetimeIndex(spans["max"].iloc[:1]), 1).columns, "changepoint"]
        self.coefficients_ = pd.concat([f["coefficients"] for f in fits]).reindex(
            index=spans.index, columns=columns
        )
        self.seasonal_terms_off_ = pd.concat([f["terms_off"] for f in fits]).reindex(spans.index)
        return self

    def _calendar(self) -> dict:
        return {
            "country": self.country,
            "month_end_business_days": self.month_end_business_days,
            "quarter_end_business_days": self.quarter_end_business_days,
        }

    def predict(self, h: int) -> pd.DataFrame:
        """Returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day."""
        check_is_fitted(self)
        if h > self.horizon:
            raise ValueError(f"h={h} is beyond the horizon the model was fitted for ({self.horizon})")
        out = future_dates(self.last_dates_, h)
        out[["p10", "p50", "p90"]] = self.quantiles_[:, :h].reshape(-1, 3)
        return finalise_quantiles(out.drop(columns="step"))

    def _design(self, dates: pd.DatetimeIndex, n_history: int) -> pd.DataFrame:
        """Intercept, trend (years since the last history day), weekday dummies, calendar windows."""
        cal = calendar_features(
            dates, self.country, self.month_end_business_days, self.quarter_end_business_days
        )
        end_of_quarter = cal["is_end_of_quarter"].to_numpy()
        columns = {
            "intercept": np.ones(len(dates)),
            "trend": (np.arange(len(dates)) - (n_history - 1)) / _DAYS_PER_YEAR,
            **{
                f"weekday_{day}": (cal["day_of_week"] == day).to_numpy()
                for day in range(1, 7)  # Monday is the reference day
            },
            "month_end": cal["is_month_end"].to_numpy() & ~end_of_quarter,
            "end_of_quarter": end_of_quarter,
            "holiday": cal["is_holiday"].to_numpy(),
        }
        return pd.DataFrame(columns).astype("float64")

    def _candidates(self, n_history: int, n_days: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """Candidate changepoint columns over history + horizon and their ``(kind, day index)``."""
        t = np.arange(n_days)
        shapes = {
            "level": lambda day: (t >= day).astype(float),
            "trend": lambda day: np.maximum(t - day, 0) / _DAYS_PER_YEAR,
        }
        after = {"level": self.min_level_days, "trend": self.min_trend_days}
        labels = [
            (kind, day)
            for kind in self.changepoints
            for day in range(self.min_segment_days, n_history - after[kind] + 1, self.changepoint_step_days)
        ]
        columns = [shapes[kind](day) for kind, day in labels]
        return (np.column_stack(columns) if columns else np.zeros((n_days, 0))), labels

    def _fit_group(self, ids: pd.Index, dates: pd.DatetimeIndex, y: np.ndarray) -> dict:
        """Fits series sharing ``dates`` (history + horizon); ``y`` is ``(series, history days)``."""
        n = y.shape[1]
        off = unidentified_terms(dates[:n], self._calendar())
        design = self._design(dates, n).drop(columns=[_TERM_COLUMNS[t] for t in _TERM_COLUMNS if off[t]])
        design = design.loc[:, design.iloc[:n].abs().sum() > 0]  # e.g. no holiday in a short history
        X = design.to_numpy()
        basis = _orthonormal_basis(X[:n])
        residual = y - (y @ basis) @ basis.T
        sse = (residual**2).sum(axis=1)
        Z, labels = self._candidates(n, len(dates))
        choice = np.full(len(ids), -1)
        reduction = np.zeros(len(ids))
        if labels:
            Zh = Z[:n] - basis @ (basis.T @ Z[:n])  # the part of each candidate the base fit cannot explain
            energy = (Zh**2).sum(axis=0)
            usable = energy > 1e-9
            drop = np.where(usable, (residual @ Zh) ** 2 / np.where(usable, energy, 1.0), 0.0)
            best = drop.argmax(axis=1)
            best_drop = np.minimum(drop[np.arange(len(ids)), best], sse * (1 - 1e-12))
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = n * np.log(sse / (sse - best_drop))
            significant = np.nan_to_num(gain) > self.changepoint_penalty * np.log(n)
            choice = np.where(significant, best, -1)
            reduction = np.where(significant, best_drop / np.maximum(sse, 1e-12), 0.0)
        quantiles = np.empty((len(ids), self.horizon, 3))
        coefficients = pd.DataFrame(np.nan, index=ids, columns=[*design.columns, "changepoint"])
        for candidate in np.unique(choice):
            rows = np.flatnonzero(choice == candidate)
            full = X if candidate < 0 else np.column_stack([X, Z[:, candidate]])
            beta, quantiles[rows] = _extrapolate(full[:n], full[n:], y[rows])
            coefficients.iloc[rows] = _pad(beta, coefficients.shape[1])
        chosen = np.flatnonzero(choice >= 0)
        changepoints = pd.DataFrame(
            {
                "unique_id": ids[chosen],
                "kind": [labels[c][0] for c in choice[chosen]],
                "date": dates[[labels[c][1] for c in choice[chosen]]],
                "sse_reduction": reduction[chosen],
            }
        )
        return {
            "ids": ids,
            "quantiles": quantiles,
            "changepoints": changepoints,
            "coefficients": coefficients,
            "terms_off": pd.DataFrame({t: off[t] for t in _TERM_COLUMNS}, index=ids),
        }


def _orthonormal_basis(X: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``X`` (rank-revealing, so collinear columns are harmless)."""
    u, s, _ = np.linalg.svd(X, full_matrices=False)
    return u[:, s > s.max() * 1e-10]


def _pad(beta: np.ndarray, width: int) -> np.ndarray:
    return np.pad(beta, ((0, 0), (0, width - beta.shape[1])), constant_values=np.nan)


def _extrapolate(history: np.ndarray, future: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of ``y`` (series x days) on ``history`` and its p10/p50/p90 over ``future`` rows.

    Returns:
        The coefficients ``(series, columns)`` and the quantiles ``(series, future days, 3)``.
    """
    pinv = np.linalg.pinv(history)
    beta = y @ pinv.T
    residual = y - beta @ history.T
    n, rank = history.shape[0], np.linalg.matrix_rank(history)
    variance = (residual**2).sum(axis=1) / max(n - rank, 1)
    lagged = (residual[:, :-1] ** 2).sum(axis=1)
    phi = np.clip((residual[:, :-1] * residual[:, 1:]).sum(axis=1) / np.maximum(lagged, 1e-12), 0.0, 0.95)
    steps = np.arange(1, future.shape[0] + 1)
    decay = phi[:, None] ** steps[None, :]
    point = beta @ future.T + residual[:, -1:] * decay
    leverage = np.einsum("hk,kl,hl->h", future, pinv @ pinv.T, future)  # x' (X'X)^+ x per future day
    spread = variance[:, None] * (1 - decay**2 + leverage[None, :] * ((1 + phi) / (1 - phi))[:, None])
    z = NormalDist().inv_cdf(QUANTILE_LEVELS["p90"]) * np.sqrt(spread)
    return beta, np.stack([point - z, point, point + z], axis=-1)
