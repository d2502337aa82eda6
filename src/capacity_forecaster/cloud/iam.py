"""The project's IAM policies as files (``docs/iam/*.json``) and ``kedro cloud setup-role``.

The files hold the placeholders ``${BUCKET}``, ``${PREFIX}``, ``${REGION}``, ``${ACCOUNT_ID}`` and
``${JOB_ROLE_NAME}``; ``${PREFIX}`` is ``CF_PREFIX`` with a trailing slash, or empty at the bucket root (so
``arn:aws:s3:::${BUCKET}/${PREFIX}raw/*`` is right either way).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from botocore.exceptions import ClientError

from .settings import CloudSettings

log = logging.getLogger(__name__)

POLICY_DIR = Path("docs") / "iam"
JOB_ROLE_NAME = "capacity-forecaster-jobs"
BUILD_ROLE_NAME = "capacity-forecaster-image-build"


@dataclass(frozen=True)
class RoleTemplate:
    """A role: its trust policy file and its inline policies (policy name -> file)."""

    trust: str
    policies: dict[str, str]
    description: str


JOB_ROLE = RoleTemplate(
    "job-role-trust-policy.json",
    {"capacity-forecaster-jobs": "job-role-policy.json"},
    "Capacity Forecaster SageMaker Processing jobs (S3 data, ECR pull, CloudWatch Logs)",
)
CANVAS_POLICY = ("capacity-forecaster-canvas", "canvas-policy.json")
BUILD_ROLE = RoleTemplate(
    "codebuild-role-trust-policy.json",
    {"capacity-forecaster-image-build": "codebuild-role-policy.json"},
    "Capacity Forecaster image build on CodeBuild (S3 build context, ECR push, build logs)",
)


def placeholder_values(settings: CloudSettings, account_id: str, job_role_name: str) -> dict[str, str]:
    """Values of the placeholders for this bucket, prefix, region and account."""
    prefix = settings.key()
    return {
        "BUCKET": settings.bucket,
        "PREFIX": f"{prefix}/" if prefix else "",
        "REGION": settings.region,
        "ACCOUNT_ID": account_id,
        "JOB_ROLE_NAME": job_role_name,
    }


def render_policy(path: Path, values: dict[str, str]) -> dict[str, Any]:
    """The policy document of ``path`` with its placeholders filled.

    Raises:
        KeyError: Naming a placeholder without a value.
    """
    return json.loads(Template(path.read_text()).substitute(values))


def account_id(sts: Any) -> str:
    return sts.get_caller_identity()["Account"]


def _same(a: Any, b: Any) -> bool:
    """Policy documents compare equal regardless of key order (IAM returns them parsed)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def ensure_role(
    iam: Any,
    name: str,
    trust: dict[str, Any],
    policies: dict[str, dict[str, Any]],
    *,
    description: str = "",
    check_only: bool = False,
) -> tuple[str, list[str]]:
    """Creates the role or brings its trust and inline policies to the documents given.

    Args:
        iam: boto3 ``iam`` client.
        name: Role name.
        trust: Trust (assume-role) policy document.
        policies: Inline policy name -> document.
        description: Role description when it is created.
        check_only: Change nothing; only report what differs.

    Returns:
        The role ARN (empty when ``check_only`` and the role does not exist) and what was done (or, with
        ``check_only``, what would be done).
    """
    changes: list[str] = []
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise
        role = None
    if role is None:
        changes.append(f"create role {name}")
        if check_only:
            return "", changes + [f"put inline policy {p}" for p in policies]
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=description,
            Tags=[{"Key": "project", "Value": "capacity-forecaster"}],
        )["Role"]
    elif not _same(role.get("AssumeRolePolicyDocument"), trust):
        changes.append(f"update the trust policy of {name}")
        if not check_only:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
    for policy_name, document in policies.items():
        try:
            current = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise
            current = None
        if current is None or not _same(current, document):
            changes.append(f"{'put' if current is None else 'update'} inline policy {policy_name}")
            if not check_only:
                iam.put_role_policy(
                    RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document)
                )
    return role["Arn"], changes


def role_documents(
    template: RoleTemplate, policy_dir: Path, values: dict[str, str], extra: tuple[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Trust and inline policy documents of a role template, rendered (plus one extra inline policy)."""
    trust = render_policy(policy_dir / template.trust, values)
    files = dict(template.policies)
    if extra:
        files[extra[0]] = extra[1]
    return trust, {name: render_policy(policy_dir / file, values) for name, file in files.items()}
