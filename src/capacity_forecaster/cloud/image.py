"""``kedro cloud image build|push``: the project's container image (the project's Dockerfile) in ECR.

The image holds Python 3.11 and the project's dependencies pinned by ``constraints.txt``; the code and conf
still ship with every run, so only a dependency change needs a new image. Its tag is derived from the build
context (``deps-<hash of Dockerfile, .dockerignore, pyproject.toml, constraints.txt>``), so the same
dependencies always give the same tag.

Locally the first of ``docker``, ``podman`` or ``finch`` on ``PATH`` builds and pushes; ``--codebuild``
builds and pushes on AWS CodeBuild from a build context uploaded to the project's bucket (for SageMaker
Studio and other machines without a container engine).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from .settings import CloudSettings

log = logging.getLogger(__name__)

REPOSITORY = "capacity-forecaster"
CODEBUILD_PROJECT = "capacity-forecaster-image"
BUILDERS = ("docker", "podman", "finch")
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "constraints.txt")
PLATFORM = "linux/amd64"  # SageMaker Processing instances are x86_64
CODEBUILD_IMAGE = "aws/codebuild/amazonlinux2-x86_64-standard:5.0"
BUILDSPEC = """version: 0.2
phases:
  pre_build:
    commands:
      - aws ecr get-login-password --region "$AWS_DEFAULT_REGION" | docker login --username AWS --password-stdin "${REPOSITORY_URI%%/*}"
  build:
    commands:
      - docker build --platform linux/amd64 --tag "$REPOSITORY_URI:$IMAGE_TAG" .
  post_build:
    commands:
      - docker push "$REPOSITORY_URI:$IMAGE_TAG"
"""  # noqa: E501 (one shell line)


class ImageError(RuntimeError):
    """Building or pushing the image failed; the message says why and what to do."""


def context_files(project_root: Path) -> list[Path]:
    """The build context: what the Dockerfile copies, and the Dockerfile.

    Raises:
        ImageError: Naming a missing file (``constraints.txt`` is generated from ``pyproject.toml``).
    """
    paths = [project_root / name for name in CONTEXT_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ImageError(
            f"{project_root} lacks {missing} needed to build the image; constraints.txt pins the "
            "dependencies and is generated from pyproject.toml (see the README, 'Container image')"
        )
    return paths


def image_tag(project_root: Path) -> str:
    """``deps-<12 hex>``: a hash of the build context, so the same dependencies give the same tag."""
    digest = hashlib.sha256()
    for path in context_files(project_root):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"deps-{digest.hexdigest()[:12]}"


def find_builder(preferred: str | None = None) -> str:
    """The container CLI to use: ``preferred``, else the first of docker, podman, finch on ``PATH``.

    Raises:
        ImageError: When none is installed, pointing at ``--codebuild``.
    """
    for name in (preferred,) if preferred else BUILDERS:
        path = shutil.which(name)
        if path:
            return path
    raise ImageError(
        f"No container engine found ({preferred or ', '.join(BUILDERS)} not on PATH): install one, or build "
        "on AWS with `kedro cloud image build --codebuild`"
    )


def _run(command: list[str], *, cwd: Path | None = None, stdin: str | None = None) -> None:
    log.info("running %s", " ".join(command[:2] + ["..."] if stdin else command))
    proc = subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise ImageError(
            f"{Path(command[0]).name} {command[1]} failed (exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout)[-2000:]}"
        )


def build_local(
    builder: str, project_root: Path, repository: str = REPOSITORY, tag: str | None = None
) -> str:
    """Builds the image for linux/amd64 with the local container CLI; returns its local name."""
    context_files(project_root)
    name = f"{repository}:{tag or image_tag(project_root)}"
    _run([builder, "build", "--platform", PLATFORM, "--tag", name, "."], cwd=project_root)
    return name


def ensure_repository(ecr: Any, name: str = REPOSITORY) -> str:
    """The repository's URI, creating the repository (scan on push) when it does not exist."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
            raise
    log.info("creating ECR repository %s", name)
    created = ecr.create_repository(
        repositoryName=name,
        imageScanningConfiguration={"scanOnPush": True},
        tags=[{"Key": "project", "Value": "capacity-forecaster"}],
    )
    return created["repository"]["repositoryUri"]


def registry_login(ecr: Any, builder: str) -> str:
    """Logs the container CLI in to the account's registry with an ECR token; returns the registry host."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    registry = data["proxyEndpoint"].removeprefix("https://")
    _run([builder, "login", "--username", user, "--password-stdin", registry], stdin=password)
    return registry


def push(
    ecr: Any, builder: str, project_root: Path, repository: str = REPOSITORY, tag: str | None = None
) -> str:
    """Pushes the locally built image to ECR (creating the repository if missing); returns the image URI."""
    tag = tag or image_tag(project_root)
    uri = f"{ensure_repository(ecr, repository)}:{tag}"
    registry_login(ecr, builder)
    _run([builder, "tag", f"{repository}:{tag}", uri])
    _run([builder, "push", uri])
    return uri


def context_zip(project_root: Path) -> bytes:
    """The build context as a zip (CodeBuild's S3 source)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in context_files(project_root):
            archive.write(path, path.name)
    return buffer.getvalue()


def _project_settings(source: str, service_role_arn: str, repository_uri: str) -> dict[str, Any]:
    return {
        "source": {"type": "S3", "location": source, "buildspec": BUILDSPEC},
        "artifacts": {"type": "NO_ARTIFACTS"},
        "environment": {
            "type": "LINUX_CONTAINER",
            "image": CODEBUILD_IMAGE,
            "computeType": "BUILD_GENERAL1_SMALL",
            "privilegedMode": True,  # docker builds need it
            "environmentVariables": [
                {"name": "REPOSITORY_URI", "value": repository_uri, "type": "PLAINTEXT"}
            ],
        },
        "serviceRole": service_role_arn,
        "timeoutInMinutes": 60,
    }


def build_remote(  # noqa: PLR0913
    clients: dict[str, Any],
    settings: CloudSettings,
    project_root: Path,
    service_role_arn: str,
    *,
    repository: str = REPOSITORY,
    tag: str | None = None,
    poll_s: float = 15.0,
    timeout_s: float = 3600.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Builds and pushes the image on CodeBuild; returns the image URI.

    The context goes to ``<bucket>/<prefix>/sagemaker/image/context-<tag>.zip``; the CodeBuild project
    ``capacity-forecaster-image`` is created (or updated) with ``service_role_arn`` (``kedro cloud setup-role
    --codebuild`` creates one from docs/iam/codebuild-role-*.json).

    Args:
        clients: boto3 ``s3``, ``ecr`` and ``codebuild`` clients.

    Raises:
        ImageError: The build failed, stopped or timed out (with CodeBuild's phase messages).
    """
    tag = tag or image_tag(project_root)
    repository_uri = ensure_repository(clients["ecr"], repository)
    key = settings.key("sagemaker", "image", f"context-{tag}.zip")
    clients["s3"].put_object(Bucket=settings.bucket, Key=key, Body=context_zip(project_root))
    source = f"{settings.bucket}/{key}"
    project = _project_settings(source, service_role_arn, repository_uri)
    codebuild = clients["codebuild"]
    if codebuild.batch_get_projects(names=[CODEBUILD_PROJECT]).get("projects"):
        codebuild.update_project(name=CODEBUILD_PROJECT, **project)
    else:
        codebuild.create_project(name=CODEBUILD_PROJECT, **project)
    build = codebuild.start_build(
        projectName=CODEBUILD_PROJECT,
        sourceLocationOverride=source,
        environmentVariablesOverride=[{"name": "IMAGE_TAG", "value": tag, "type": "PLAINTEXT"}],
    )["build"]
    log.info(
        "CodeBuild build %s started: https://%s.console.aws.amazon.com/codesuite/codebuild/projects/%s/history",
        build["id"],
        settings.region,
        CODEBUILD_PROJECT,
    )
    waited = 0.0
    while build.get("buildStatus", "IN_PROGRESS") == "IN_PROGRESS":
        if waited >= timeout_s:
            codebuild.stop_build(id=build["id"])
            raise ImageError(f"CodeBuild build {build['id']} still running after {timeout_s:.0f} s; stopped")
        sleep(poll_s)
        waited += poll_s
        build = codebuild.batch_get_builds(ids=[build["id"]])["builds"][0]
    if build["buildStatus"] != "SUCCEEDED":
        messages = [
            f"{p.get('phaseType')}: {c.get('message')}"
            for p in build.get("phases", [])
            for c in p.get("contexts", [])
            if c.get("message")
        ]
        raise ImageError(
            f"CodeBuild build {build['id']} ended {build['buildStatus']}: {messages or 'no message'}"
        )
    return f"{repository_uri}:{tag}"
