"""Every AWS operation the code can call is allowed by the documented policy of the identity that runs it.

The scan reads the source (AST): a call ``<receiver>.<operation>(...)``, or a call whose first argument is the
string ``"<operation>"`` (``get_paginator("list_objects_v2")``, ``self._call("create_processing_job")``),
where the name is an operation of an AWS service the project uses, plus boto3's S3 transfer methods. Calls on
an imported module or name (``re.search``) are not AWS calls. Each module that calls AWS must be mapped to the
policy files of the identities that run it; a new module that calls AWS and is not mapped fails here, so its
permissions get documented. Resources are checked by the restricted-user run on moto
(test_restricted_user.py), which evaluates S3 resources for real.
"""

import ast
import fnmatch
import json
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from tests.conftest import PROJECT_PATH

SRC = PROJECT_PATH / "src"
POLICIES = PROJECT_PATH / "docs" / "iam"
SERVICES = ("s3", "sagemaker", "logs", "ecr", "codebuild", "iam", "sts", "cloudwatch")
IDENTITIES = {  # module -> policy files of the identities running it (each must allow every call)
    "capacity_forecaster/runner/sagemaker_client.py": ["submitter-policy.json"],  # the submitting machine
    "capacity_forecaster/cloud/s3.py": ["submitter-policy.json", "job-role-policy.json"],  # push/check, hooks
    "capacity_forecaster/canvas/client.py": ["canvas-policy.json"],  # the canvas job (or a local run)
    "capacity_forecaster/cloud/image.py": ["setup-policy.json"],  # kedro cloud image build|push
    "capacity_forecaster/cloud/iam.py": ["setup-policy.json"],  # kedro cloud setup-role
    "capacity_forecaster/cloud/cloudwatch.py": ["pull-metrics-policy.json"],  # kedro cloud pull-metrics
}
TRANSFER_METHODS = {  # boto3's S3 transfer manager -> the operations it sends
    "upload_file": [
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    ],
    "download_file": ["HeadObject", "GetObject"],
}
S3_ACTIONS = {  # S3 operations authorised by an action of another name
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "HeadObject": "GetObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "DeleteObjects": "DeleteObject",
}
IMPLIED = {  # actions AWS also checks for these calls as the code makes them (tags, a role passed)
    "sagemaker:CreateProcessingJob": ["sagemaker:AddTags", "iam:PassRole"],
    "sagemaker:CreateAutoMLJobV2": ["sagemaker:AddTags", "iam:PassRole"],
    "sagemaker:CreateModel": ["iam:PassRole"],
    "sagemaker:CreateTransformJob": ["sagemaker:AddTags"],
    "codebuild:CreateProject": ["iam:PassRole"],
    "codebuild:UpdateProject": ["iam:PassRole"],
    "ecr:CreateRepository": ["ecr:TagResource"],
    "iam:CreateRole": ["iam:TagRole"],
}
SERVICE_OF = {  # (module, operation of several services) -> the service that module calls
    ("capacity_forecaster/cloud/image.py", "create_project"): "codebuild",
    ("capacity_forecaster/cloud/image.py", "update_project"): "codebuild",
}
OUTSIDE_BOTO3 = {  # AWS calls the module causes through another client: `docker push` to ECR
    "capacity_forecaster/cloud/image.py": [
        "ecr:BatchCheckLayerAvailability",
        "ecr:InitiateLayerUpload",
        "ecr:UploadLayerPart",
        "ecr:CompleteLayerUpload",
        "ecr:PutImage",
    ],
}


def _operations() -> dict[str, list[tuple[str, str]]]:
    """snake_case operation name -> [(service, OperationName)] over the services the project uses."""
    session = botocore.session.get_session()
    names: dict[str, list[tuple[str, str]]] = {}
    for service in SERVICES:
        for operation in session.get_service_model(service).operation_names:
            names.setdefault(xform_name(operation), []).append((service, operation))
    return names


OPERATIONS = _operations()


def _root_name(expr: ast.expr) -> str | None:
    """The name a call chain starts from: ``importlib`` for ``importlib.import_module(x).create_pipeline``."""
    while isinstance(expr, ast.Attribute | ast.Call):
        expr = expr.value if isinstance(expr, ast.Attribute) else expr.func
    return expr.id if isinstance(expr, ast.Name) else None


def aws_calls(source: str) -> set[str]:
    """snake_case names of the AWS operations (and S3 transfer methods) a module's source refers to."""
    tree = ast.parse(source)
    imported = {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            root = _root_name(node.func.value)
            on_import = root in imported and root not in {"boto3", "botocore"}  # boto3.client(...).x is AWS
            if not on_import and (node.func.attr in OPERATIONS or node.func.attr in TRANSFER_METHODS):
                found.add(node.func.attr)
        if isinstance(node, ast.Call) and node.args:  # get_paginator("list_objects_v2"), _call("create_...")
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value in OPERATIONS:
                found.add(first.value)
    return found


def iam_actions(module: str, name: str) -> list[str]:
    """The IAM actions one call needs."""
    if name in TRANSFER_METHODS:
        return sorted({f"s3:{S3_ACTIONS.get(op, op)}" for op in TRANSFER_METHODS[name]})
    candidates = OPERATIONS[name]
    if (module, name) in SERVICE_OF:
        candidates = [c for c in candidates if c[0] == SERVICE_OF[module, name]]
    if len(candidates) > 1:
        pytest.fail(f"{module}: {name} is an operation of {candidates}: add it to SERVICE_OF")
    service, operation = candidates[0]
    action = f"s3:{S3_ACTIONS.get(operation, operation)}" if service == "s3" else f"{service}:{operation}"
    return [action, *IMPLIED.get(action, [])]


def allowed_actions(files: list[str]) -> list[list[str]]:
    """Per policy file, the action patterns its Allow statements grant."""
    granted = []
    for file in files:
        patterns = []
        for statement in json.loads((POLICIES / file).read_text())["Statement"]:
            if statement["Effect"] == "Allow":
                action = statement["Action"]
                patterns += [action] if isinstance(action, str) else action
        granted.append(patterns)
    return granted


def _allows(patterns: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


MODULES = sorted(SRC.rglob("*.py"))


def test_the_scan_finds_what_the_code_is_known_to_call():
    calls = aws_calls((SRC / "capacity_forecaster/runner/sagemaker_client.py").read_text())
    assert {
        "create_processing_job",
        "describe_processing_job",
        "stop_processing_job",
        "list_objects_v2",
        "get_log_events",
        "upload_file",
        "download_file",
    } <= calls
    canvas = aws_calls((SRC / "capacity_forecaster/canvas/client.py").read_text())
    assert {"create_auto_ml_job_v2", "stop_transform_job", "delete_object", "put_object"} <= canvas


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_aws_call_is_allowed_by_the_policy_of_its_identity(path: Path):
    module = path.relative_to(SRC).as_posix()
    calls = aws_calls(path.read_text())
    if not calls:
        return
    assert module in IDENTITIES, (
        f"{module} calls AWS ({sorted(calls)}) but no identity is mapped to it: add it to IDENTITIES with "
        "the docs/iam policy files of whoever runs it (and document the permissions there)"
    )
    files = IDENTITIES[module]
    missing_files = [f for f in files if not (POLICIES / f).is_file()]
    if missing_files:  # only pull-metrics-policy.json may come from another branch
        assert missing_files == ["pull-metrics-policy.json"], missing_files
        pytest.skip(f"{missing_files[0]} is not in this branch yet")
    needed = sorted(
        {a for call in calls for a in iam_actions(module, call)} | set(OUTSIDE_BOTO3.get(module, []))
    )
    for file, patterns in zip(files, allowed_actions(files), strict=True):
        denied = [action for action in needed if not _allows(patterns, action)]
        assert not denied, f"{module} needs {denied}, not allowed by docs/iam/{file}"


@pytest.mark.parametrize("file", sorted(p.name for p in POLICIES.glob("*.json")))
def test_policy_files_use_only_the_documented_placeholders(file: str):
    text = (POLICIES / file).read_text()
    json.loads(text)
    import re  # noqa: PLC0415

    used = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert used <= {"BUCKET", "PREFIX", "REGION", "ACCOUNT_ID", "JOB_ROLE_NAME"}
    assert "$" not in re.sub(r"\$\{[A-Z_]+\}", "", text)
