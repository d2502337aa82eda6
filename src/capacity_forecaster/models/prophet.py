"""Prophet per series (weekly + yearly seasonality, month/quarter-end regressors, holidays), in parallel."""

import logging

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from prophet import Prophet
from prophet.serialize import model_from_json, model_to_json
from sklearn.utils.validation import check_is_fitted

from capacity_forecaster.calendar import calendar_features, holiday_dates
from capacity_forecaster.models.base import (
    MIN_YEARLY_DAYS,
    SEASONAL_TERMS,
    BaseForecaster,
    budget_series,
    check_long_frame,
    finalise_quantiles,
    future_dates,
    terms_off_per_series,
)
from capacity_forecaster.progress import track

logger = logging.getLogger(__name__)
_REGRESSORS = {"is_month_end": "month_end", "is_end_of_quarter": "quarter_end"}  # regressor -> its term
_CHUNKS_PER_JOB = 10  # fit chunks per joblib worker: the progress of the fits moves in steps of ~10 %


def _quiet_stan() -> None:
    """Silences cmdstanpy's per-fit INFO chatter and Prophet's notices (also inside joblib workers)."""
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("cmdstanpy").disabled = True


def _regressors(dates: pd.Series, calendar: dict) -> pd.DataFrame:
    features = calendar_features(pd.DatetimeIndex(dates), **calendar)
    return pd.DataFrame(
        {"ds": pd.DatetimeIndex(dates), **{r: features[r].to_numpy(float) for r in _REGRESSORS}}
    )


def _fit_chunk(
    series: list[tuple[str, pd.DataFrame]],
    settings: dict,
    calendar: dict,
    holidays: pd.DataFrame,
    terms_off: dict[str, dict[str, bool]],
):
    """Fits one Prophet per series; returns ``{unique_id: (model JSON, residual p10/p90)}``.

    A term in ``terms_off[unique_id]`` (yearly, quarter_end, month_end) is left out of that series' model.
    """
    _quiet_stan()
    fitted = {}
    for uid, frame in series:
        off = terms_off[uid]
        model = Prophet(
            growth="linear",
            weekly_seasonality=settings["weekly_seasonality"],
            yearly_seasonality=False if off["yearly"] else settings["yearly_seasonality"],
            daily_seasonality=False,
            holidays=holidays,
            changepoint_prior_scale=settings["changepoint_prior_scale"],
            interval_width=0.8,
            uncertainty_samples=settings["uncertainty_samples"],
        )
        for regressor, term in _REGRESSORS.items():
            if not off[term]:
                model.add_regressor(regressor, mode="additive")
        history = _regressors(frame["ds"], calendar).assign(y=frame["y"].to_numpy())
        model.fit(history, algorithm="LBFGS")
        residual = history["y"].to_numpy() - model.predict(history.assign(y=np.nan).drop(columns="y"))["yhat"]
        fitted[uid] = (model_to_json(model), np.quantile(residual, [0.1, 0.9]))
    return fitted


def _predict_chunk(
    models: list[tuple[str, tuple]], h: int, calendar: dict, samples: int
) -> list[pd.DataFrame]:
    _quiet_stan()
    out = []
    for uid, (spec, residual) in models:
        model = model_from_json(spec)
        last = model.history["ds"].max()
        future = _regressors(pd.date_range(last + pd.Timedelta(days=1), periods=h, freq="D"), calendar)
        forecast = model.predict(future)
        point = forecast["yhat"].to_numpy()
        if samples > 0:
            lower, upper = forecast["yhat_lower"].to_numpy(), forecast["yhat_upper"].to_numpy()
        else:
            lower, upper = point + residual[0], point + residual[1]
        out.append(
            pd.DataFrame({"unique_id": uid, "ds": future["ds"], "p10": lower, "p50": point, "p90": upper})
        )
    return out


def _chunks(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)] if items else []


class ProphetForecaster(BaseForecaster):
    """One Prophet model per ``unique_id``, fitted on a trailing window in parallel with joblib.

    Terms a series' history cannot identify (yearly seasonality on less than two years, the end-of-quarter
    or month-end regressor without such a day in the history) are switched off for that series and
    recorded in ``seasonal_terms_off_`` (``unique_id`` x term, True = off).

    Prophet costs ~0.1 s of a core per series and fit, linear in series: with ``max_series`` set, a fit
    with more series fits Prophet on ``max_series`` of them (:func:`budget_series`: long histories first,
    then a stable hash) and ``predict`` forecasts only those; the other series have no Prophet forecast and
    selection chooses among the other models for them. ``fitted_on_`` records the series fitted and skipped.

    p10/p90 are Prophet's 80 % interval when ``uncertainty_samples > 0``; with 0 (the fast default) they are
    the 10 %/90 % quantiles of the in-sample residuals around the forecast. Fitted models are kept as
    Prophet JSON (``prophet.serialize``) so they pickle and load anywhere.

    Args:
        weekly_seasonality: Weekly Fourier terms (``True`` or their order).
        yearly_seasonality: Yearly Fourier terms (``True`` or their order).
        changepoint_prior_scale: Trend flexibility.
        fit_window_days: Days of history (ending at the last day) each series is fitted on.
        uncertainty_samples: Prophet's simulated draws for its interval; 0 uses residual quantiles.
        n_jobs: joblib workers.
        max_series: Most series fitted per ``fit`` (``None``: all); see above.
        country: Holiday calendar (``params:calendar.country``).
        month_end_business_days: Month-end regressor window (``params:calendar.month_end_business_days``).
        quarter_end_business_days: End-of-quarter regressor window
            (``params:calendar.quarter_end_business_days``).
        alias: Model name in forecast tables.
    """

    def __init__(
        self,
        *,
        weekly_seasonality: bool | int = True,
        yearly_seasonality: bool | int = True,
        changepoint_prior_scale: float = 0.05,
        fit_window_days: int = 731,
        uncertainty_samples: int = 0,
        n_jobs: int = 1,
        max_series: int | None = None,
        country: str = "US",
        month_end_business_days: int = 2,
        quarter_end_business_days: int = 5,
        alias: str = "prophet",
    ):
        self.weekly_seasonality = weekly_seasonality
        self.yearly_seasonality = yearly_seasonality
        self.changepoint_prior_scale = changepoint_prior_scale
        self.fit_window_days = fit_window_days
        self.uncertainty_samples = uncertainty_samples
        self.n_jobs = n_jobs
        self.max_series = max_series
        self.country = country
        self.month_end_business_days = month_end_business_days
        self.quarter_end_business_days = quarter_end_business_days
        self.alias = alias

    def _calendar(self) -> dict:
        return {
            "country": self.country,
            "month_end_business_days": self.month_end_business_days,
            "quarter_end_business_days": self.quarter_end_business_days,
        }

    def fit(self, df: pd.DataFrame) -> "ProphetForecaster":
        """Fits a new Prophet per series (at most ``max_series``) on its last ``fit_window_days`` days."""
        _quiet_stan()
        spans = df.groupby("unique_id", sort=True, observed=True)["ds"].agg(["min", "max"])
        spans.index = spans.index.astype(str)
        spans["days"] = (pd.to_datetime(spans["max"]) - pd.to_datetime(spans["min"])).dt.days + 1
        chosen = budget_series(spans, self.max_series, min(self.fit_window_days, MIN_YEARLY_DAYS))
        if len(chosen) < len(spans):  # only the budget's rows are checked and copied
            df = df[df["unique_id"].isin(chosen)]
            logger.info("Prophet fits %d of %d series (max_series=%d)", len(chosen), len(spans),
                        self.max_series)  # fmt: skip
        frame = check_long_frame(df)
        frame = frame[
            frame["ds"]
            > frame.groupby("unique_id")["ds"].transform("max") - pd.Timedelta(days=self.fit_window_days)
        ]
        self.fitted_on_ = {"series": len(chosen), "series_skipped": len(spans) - len(chosen),
                           "rows": len(frame)}  # fmt: skip
        start, end = frame["ds"].min(), frame["ds"].max() + pd.Timedelta(days=731)
        days = holiday_dates(self.country, start, end)
        holidays = pd.DataFrame({"holiday": "public_holiday", "ds": days})
        settings = {
            "weekly_seasonality": self.weekly_seasonality,
            "yearly_seasonality": self.yearly_seasonality,
            "changepoint_prior_scale": self.changepoint_prior_scale,
            "uncertainty_samples": self.uncertainty_samples,
        }
        self.seasonal_terms_off_ = terms_off_per_series(frame, self._calendar(), SEASONAL_TERMS)
        terms_off = self.seasonal_terms_off_.to_dict(orient="index")
        series = list(frame.groupby("unique_id", sort=True))
        chunks = _chunks(series, min(len(series), max(1, self.n_jobs) * _CHUNKS_PER_JOB))
        parts = track(
            Parallel(n_jobs=self.n_jobs, return_as="generator")(
                delayed(_fit_chunk)(chunk, settings, self._calendar(), holidays, terms_off)
                for chunk in chunks
            ),
            "Prophet fits",
            total=len(series),
            size=len,
            unit="series",
        )
        self.models_ = {uid: fitted for part in parts for uid, fitted in part.items()}
        self.last_dates_ = frame.groupby("unique_id", sort=True)["ds"].max()
        return self

    def predict(self, h: int) -> pd.DataFrame:
        """Returns ``unique_id, ds, p10, p50, p90`` for the ``h`` days after each series' last day."""
        check_is_fitted(self)
        items = [(uid, self.models_[uid]) for uid in self.last_dates_.index]
        parts = Parallel(n_jobs=self.n_jobs)(
            delayed(_predict_chunk)(chunk, h, self._calendar(), self.uncertainty_samples)
            for chunk in _chunks(items, max(1, self.n_jobs))
        )
        out = pd.concat([frame for part in parts for frame in part], ignore_index=True)
        out = out.merge(future_dates(self.last_dates_, h)[["unique_id", "ds"]], on=["unique_id", "ds"])
        return finalise_quantiles(out.sort_values(["unique_id", "ds"], ignore_index=True))
