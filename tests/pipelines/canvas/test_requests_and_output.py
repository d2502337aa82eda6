"""Pure canvas library code: job names, request shapes, output parsing, ensemble, metrics."""

import dataclasses
import re
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from capacity_forecaster.canvas.ensemble import ensemble_forecasts, ensemble_weights
from capacity_forecaster.canvas.metrics import score_forecasts, seasonal_naive_scale
from capacity_forecaster.canvas.output import parse_transform_output, split_item_id
from capacity_forecaster.canvas.requests import (
    AutopilotSettings,
    build_automl_request,
    build_model_request,
    build_transform_request,
    make_job_names,
    s3_uris,
)

NOW = datetime(2026, 11, 23, 14, 5, 9, tzinfo=UTC)
SETTINGS = AutopilotSettings(
    role_arn="arn:aws:iam::123456789012:role/SageMakerRole",
    s3_prefix="s3://bkt/canvas/autopilot/",
    horizon=90,
    country="US",
)


def test_job_names_are_valid_and_short():
    names = make_job_names("cf_canvas.prod run", NOW)
    assert names.automl == "cf-canvas-prod-run-261123-140509"
    assert len(names.automl) <= 32 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}", names.automl)
    assert names.model.startswith(names.automl) and len(names.transform) <= 63
    long = make_job_names("a" * 80, NOW).automl
    assert len(long) == 32


def test_job_names_reject_an_unusable_prefix():
    with pytest.raises(ValueError, match="empty or too long"):
        make_job_names("___", NOW)


def test_automl_request_is_a_capped_daily_quantile_forecast():
    names = make_job_names("cf-canvas", NOW)
    request = build_automl_request(SETTINGS, names)
    config = request["AutoMLProblemTypeConfig"]["TimeSeriesForecastingJobConfig"]
    assert config["ForecastFrequency"] == "1D" and config["ForecastHorizon"] == 90
    assert config["ForecastQuantiles"] == ["p10", "p50", "p90"]
    assert config["TimeSeriesConfig"] == {
        "TargetAttributeName": "target_value",
        "TimestampAttributeName": "timestamp",
        "ItemIdentifierAttributeName": "item_id",
    }
    assert config["HolidayConfig"] == [{"CountryCode": "US"}]
    assert config["CompletionCriteria"]["MaxAutoMLJobRuntimeInSeconds"] == 1800  # the plan: under 30 minutes
    uri = request["AutoMLJobInputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert uri == f"s3://bkt/canvas/autopilot/{names.automl}/input/"
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://bkt/canvas/autopilot/{names.automl}/output/"


def test_transform_reads_whole_files_below_the_payload_limit():
    names = make_job_names("cf-canvas", NOW)
    request = build_transform_request(SETTINGS, names)
    uris = s3_uris(SETTINGS, names)
    assert request["TransformInput"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": uris["transform_input"],
    }
    assert request["TransformInput"]["SplitType"] == "None"  # a file is one request: items stay whole
    assert "BatchStrategy" not in request  # botocore: only with SplitType Line/RecordIO/TFRecord
    assert request["MaxPayloadInMB"] == 100  # files are below 100 MiB; SageMaker's maximum
    small = build_transform_request(dataclasses.replace(SETTINGS, transform_max_file_mb=0.05), names)
    assert small["MaxPayloadInMB"] == 1
    assert request["TransformOutput"] == {"S3OutputPath": uris["transform_output"], "AssembleWith": "Line"}


def test_model_request_needs_inference_containers():
    names = make_job_names("cf-canvas", NOW)
    with pytest.raises(ValueError, match="no InferenceContainers"):
        build_model_request(SETTINGS, names, {"CandidateName": "c1", "InferenceContainers": []})


def test_s3_prefix_must_be_an_s3_uri():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        s3_uris(
            AutopilotSettings("arn:aws:iam::1:role/r", "bucket/canvas", 90, "US"), make_job_names("x", NOW)
        )


OUTPUT = """item_id,timestamp,p10,p50,p90,mean
srv|01|cpu_p95,2024-03-21,40.0,45.0,50.0,45.2
srv|01|cpu_p95,2024-03-22,41.0,46.0,52.0,46.1
db-2|memory_p95,2024-03-21 00:00:00,99.0,104.0,97.0,101.0
db-2|memory_p95,2024-03-22 00:00:00,-3.0,1.0,2.0,0.5
"""


def test_parse_documented_output():
    parsed = parse_transform_output(OUTPUT.encode())
    assert list(parsed.columns) == [
        "server_id",
        "metric",
        "date",
        "model",
        "p10",
        "p50",
        "p90",
        "is_selected",
    ]
    assert parsed["server_id"].tolist() == ["db-2", "db-2", "srv|01", "srv|01"]  # split at the last separator
    assert parsed["date"].dtype == "datetime64[ns]"
    assert (parsed["model"] == "canvas").all() and not parsed["is_selected"].any()
    crossed = parsed.iloc[0]  # 99, 104, 97 -> clipped to 100 and sorted
    assert (crossed["p10"], crossed["p50"], crossed["p90"]) == (97.0, 99.0, 100.0)
    assert parsed.iloc[1]["p10"] == 0.0
    assert (parsed["p10"] <= parsed["p50"]).all() and (parsed["p50"] <= parsed["p90"]).all()


def test_parse_accepts_numeric_quantile_headers():
    text = "item_id,timestamp,0.1,0.5,0.9\ns|cpu_p95,2024-01-01,1,2,3\n"
    assert parse_transform_output(text)[["p10", "p50", "p90"]].iloc[0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("item_id,timestamp,p10,p50\ns|cpu_p95,2024-01-01,1,2\n", "no p90 column"),
        ("id,timestamp,p10,p50,p90\ns|cpu_p95,2024-01-01,1,2,3\n", "no item_id column"),
        ("item_id,timestamp,p10,p50,p90\nnosep,2024-01-01,1,2,3\n", "without the '|' separator"),
        ("item_id,timestamp,p10,p50,p90\ns|cpu_p95,2024-01-01,1,,3\n", "rows without quantiles"),
    ],
)
def test_parse_rejects_malformed_output(text, message):
    with pytest.raises(ValueError, match=message):
        parse_transform_output(text)


def test_split_item_id_round_trip():
    keys = split_item_id(pd.Series(["a-1|cpu_p95", "b|x|network_p95"]))
    assert keys.to_dict("list") == {"server_id": ["a-1", "b|x"], "metric": ["cpu_p95", "network_p95"]}


def _candidates(values: dict[str, float]) -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=2)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "server_id": "s",
                    "metric": "cpu_p95",
                    "date": dates,
                    "model": m,
                    "p10": v - 1,
                    "p50": v,
                    "p90": v + 1,
                    "is_selected": False,
                }
            )
            for m, v in values.items()
        ],
        ignore_index=True,
    )


def test_inverse_mase_weights_keep_the_best_k():
    candidates = _candidates({"a": 10.0, "b": 20.0, "c": 90.0})
    metrics = pd.DataFrame(
        {
            "server_id": "s",
            "metric": "cpu_p95",
            "model": ["a", "a", "b", "b", "c", "c"],
            "fold": [0, 1, 0, 1, 0, 1],
            "mase": [0.4, 0.6, 1.0, 1.0, 3.0, 3.0],
        }
    )
    weights = ensemble_weights(candidates, metrics, "mase", top_k=2).set_index("model")["weight"]
    assert weights.to_dict() == pytest.approx({"a": 2 / 3, "b": 1 / 3})  # 1/0.5 : 1/1.0; c dropped
    combined = ensemble_forecasts(candidates, weights.reset_index().assign(server_id="s", metric="cpu_p95"))
    assert combined["p50"].tolist() == pytest.approx([40 / 3, 40 / 3])
    assert (combined["model"] == "canvas_local").all()


def test_series_without_scores_get_equal_weights():
    candidates = _candidates({"a": 10.0, "b": 20.0})
    for top_k in (None, 1):  # without scores, top_k cannot rank: every model is kept
        weights = ensemble_weights(
            candidates, pd.DataFrame({"server_id": [], "metric": [], "model": []}), "mase", top_k
        )
        assert weights["weight"].tolist() == [0.5, 0.5]
    partly = pd.DataFrame({"server_id": "s", "metric": "cpu_p95", "model": ["a"], "mase": [2.0]})
    weights = ensemble_weights(candidates, partly, "mase", None)  # b has no score: only a is used
    assert weights[["model", "weight"]].to_dict("list") == {"model": ["a"], "weight": [1.0]}


def test_scores_match_hand_computed_values():
    history = pd.DataFrame(
        {
            "server_id": "s",
            "metric": "cpu_p95",
            "date": pd.date_range("2024-01-01", periods=14),
            "value": [50.0] * 7 + [52.0] * 7,
        }
    )  # weekly naive error 2 on 7 points
    scale = seasonal_naive_scale(history)
    assert scale["scale"].tolist() == [2.0]
    dates = pd.date_range("2024-01-15", periods=2)
    forecasts = pd.DataFrame(
        {
            "server_id": "s",
            "metric": "cpu_p95",
            "date": dates,
            "model": "m",
            "p10": [35.0, 45.0],
            "p50": [40.0, 60.0],
            "p90": [45.0, 70.0],
        }
    )
    actuals = pd.DataFrame({"server_id": "s", "metric": "cpu_p95", "date": dates, "actual": [50.0, 50.0]})
    row = score_forecasts(forecasts, actuals, scale).iloc[0]
    assert row["smape"] == pytest.approx(100 * (20 / 90 + 20 / 110) / 2)
    assert row["mase"] == pytest.approx(10.0 / 2.0)
    assert row["coverage_p10_p90"] == 0.5 and row["n_points"] == 2 and row["n_series"] == 1
    assert np.isnan(seasonal_naive_scale(history.assign(value=50.0))["scale"].iloc[0])  # constant: undefined


def test_scale_and_scores_do_not_depend_on_row_order_or_key_dtype():
    rng = np.random.default_rng(3)
    dates = pd.date_range("2024-01-01", periods=40)
    history = pd.concat(
        [
            pd.DataFrame(
                {"server_id": s, "metric": m, "date": dates, "value": rng.uniform(10, 90, len(dates))}
            )
            for s in ("b", "a")
            for m in ("memory_p95", "cpu_p95")
        ],
        ignore_index=True,
    )
    history.loc[5, "value"] = np.nan
    ordered = history.sort_values(["server_id", "metric", "date"], ignore_index=True)
    shuffled = history.sample(frac=1.0, random_state=1).astype(
        {"server_id": "category", "metric": "category"}
    )
    by_key = ["server_id", "metric"]
    expected = seasonal_naive_scale(ordered).sort_values(by_key, ignore_index=True)
    for frame in (history, shuffled):
        pd.testing.assert_frame_equal(
            seasonal_naive_scale(frame).sort_values(by_key, ignore_index=True), expected
        )
    ahead = pd.date_range("2024-02-10", periods=5)
    forecasts = pd.concat(
        [
            pd.DataFrame(
                {"server_id": s, "metric": "cpu_p95", "date": ahead, "model": model, "p50": 50.0 + k}
            )
            for k, (s, model) in enumerate([("a", "z"), ("b", "y"), ("a", "y"), ("b", "z")])
        ],
        ignore_index=True,
    ).assign(p10=lambda f: f["p50"] - 5, p90=lambda f: f["p50"] + 5)
    actuals = forecasts[["server_id", "metric", "date"]].drop_duplicates().assign(actual=52.0)
    scores = score_forecasts(forecasts, actuals, expected)
    assert scores["model"].tolist() == ["y", "z"]  # one row per model, in name order
    reversed_rows = score_forecasts(forecasts.iloc[::-1], actuals, expected)
    pd.testing.assert_frame_equal(reversed_rows, scores)


def test_weights_use_the_folds_every_model_has():
    """An expensive model backtested on the last fold only is compared with the others on that fold."""
    candidates = _candidates({"a": 10.0, "b": 20.0})
    metrics = pd.DataFrame(
        {
            "server_id": "s",
            "metric": "cpu_p95",
            "model": ["a", "a", "b"],
            "fold": [0, 1, 1],
            "mase": [100.0, 1.0, 1.0],  # a's bad fold 0 has no counterpart for b: ignored
        }
    )
    weights = ensemble_weights(candidates, metrics, "mase", None).set_index("model")["weight"]
    assert weights.to_dict() == pytest.approx({"a": 0.5, "b": 0.5})
