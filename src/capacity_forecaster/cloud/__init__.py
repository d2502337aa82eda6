"""The cloud environment's storage: S3 settings (``settings``), clear S3 errors (``errors``), all-or-nothing
saves and a bucket check before runs (``hooks``), the ``kedro cloud push|check|pull-metrics`` commands
(``cli``), EC2 instances and CloudWatch metrics as raw data (``cloudwatch``) and the shipped EC2 price table
(``prices``).

Only ``s3`` and ``cloudwatch`` import boto3; ``settings`` and ``hooks`` are imported by the project's
``settings.py`` and stay light.
"""
