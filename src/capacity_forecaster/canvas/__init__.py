"""SageMaker Canvas / Autopilot time-series forecasting, and its local stand-in.

- ``requests``: pure builders of the Autopilot, model and transform-job requests (no AWS import).
- ``output``: parser of the batch-transform forecast output into the ``forecasts`` schema.
- ``client``: ``AutopilotClient``, the only module of the project's canvas code that imports boto3.
- ``ensemble``: the local AutoML stand-in (backtest-weighted ensemble of the modelling candidates).
- ``metrics``: sMAPE, MASE and p10-p90 coverage used by the comparison.
"""
