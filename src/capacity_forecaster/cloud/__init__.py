"""The cloud environment's storage: S3 settings (``settings``), clear S3 errors (``errors``), all-or-nothing
saves and a bucket check before runs (``hooks``), and the ``kedro cloud push|check`` commands (``cli``).

Only ``s3`` imports boto3; ``settings`` and ``hooks`` are imported by the project's ``settings.py`` and
stay light.
"""
