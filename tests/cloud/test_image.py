"""``kedro cloud image build|push`` against moto (ECR, S3, CodeBuild), with ``docker`` replaced by a recording
fake on PATH for the docker calls themselves (no container engine runs here)."""

import base64
import io
import json
import os
import shutil
import stat
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from capacity_forecaster.cloud.cli import cloud
from capacity_forecaster.cloud.image import image_tag
from tests.conftest import PROJECT_PATH

FAKE_DOCKER = """#!{python}
import json, os, sys
record = {{"argv": sys.argv[1:], "cwd": os.getcwd()}}
if "--password-stdin" in sys.argv:
    record["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
if sys.argv[1] == os.environ.get("FAKE_DOCKER_FAIL"):
    print("denied: requested access to the resource is denied", file=sys.stderr)
    sys.exit(1)
"""


def pinned_constraints() -> str:
    """``name==version`` for the project's dependencies and theirs, as installed here.

    A stand-in for the generated constraints.txt (issue 18 generates the real one from pyproject with pip's
    resolver); these tests only need a realistic file to hash and ship.
    """
    seen: dict[str, str] = {}
    todo = [Requirement(r) for r in metadata.requires("capacity_forecaster") or []]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        try:
            seen[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        todo += [Requirement(r) for r in metadata.requires(name) or []]
    return "".join(f"{name}=={version}\n" for name, version in sorted(seen.items()))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The image's build context and the project's conf, in a temp folder (no constraints.txt in the repo)."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy2(PROJECT_PATH / name, root / name)
    (root / "constraints.txt").write_text(pinned_constraints())
    shutil.copytree(PROJECT_PATH / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copytree(PROJECT_PATH / "docs" / "iam", root / "docs" / "iam")
    return root


@pytest.fixture
def docker_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``docker`` first on PATH that records every call (argv, cwd, stdin of a login)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    return log


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _cli(project: Path, *args: str):
    return CliRunner().invoke(cloud, list(args), obj=SimpleNamespace(project_path=project))


def test_build_is_for_linux_amd64_with_a_tag_from_the_dependencies(project, docker_log):
    result = _cli(project, "image", "build")
    assert result.exit_code == 0, result.output
    tag = image_tag(project)
    assert tag.startswith("deps-") and f"built capacity-forecaster:{tag}" in result.output
    [call] = _calls(docker_log)
    assert call["argv"] == ["build", "--platform", "linux/amd64", "--tag", f"capacity-forecaster:{tag}", "."]
    assert Path(call["cwd"]).resolve() == project.resolve()
    assert image_tag(project) == tag  # same dependencies, same tag
    (project / "constraints.txt").write_text(pinned_constraints() + "extra-package==1.0\n")
    assert image_tag(project) != tag


def test_push_creates_the_repository_logs_in_with_an_ecr_token_and_prints_the_uri(
    bucket, project, docker_log
):
    result = _cli(project, "image", "push")
    assert result.exit_code == 0, result.output
    ecr = boto3.client("ecr")
    [repo] = ecr.describe_repositories()["repositories"]
    uri = f"{repo['repositoryUri']}:{image_tag(project)}"
    assert repo["repositoryName"] == "capacity-forecaster"
    assert f"export CF_SAGEMAKER_IMAGE_URI={uri}" in result.output
    login, tag, push = _calls(docker_log)
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(token["authorizationToken"]).decode().partition(":")
    registry = token["proxyEndpoint"].removeprefix("https://")
    assert login["argv"] == ["login", "--username", user, "--password-stdin", registry]
    assert login["stdin"] == password  # the password never appears in argv
    assert tag["argv"] == ["tag", f"capacity-forecaster:{image_tag(project)}", uri]
    assert push["argv"] == ["push", uri]

    again = _cli(project, "image", "push")  # the repository exists now: reused, not an error
    assert again.exit_code == 0, again.output
    assert len(ecr.describe_repositories()["repositories"]) == 1


def test_a_failed_push_says_what_docker_said(bucket, project, docker_log, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "push")
    result = _cli(project, "image", "push")
    assert result.exit_code == 1
    assert "docker push failed (exit 1)" in result.output and "requested access" in result.output


def test_without_a_container_engine_the_error_points_at_codebuild(project, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = _cli(project, "image", "build")
    assert result.exit_code == 1 and "kedro cloud image build --codebuild" in result.output


def test_codebuild_builds_from_a_context_in_the_bucket_and_pushes(bucket, project, docker_log):
    role = _cli(project, "setup-role", "--codebuild")
    assert role.exit_code == 0, role.output
    role_arn = role.output.strip().splitlines()[-1].removeprefix("export CF_CODEBUILD_ROLE_ARN=")
    assert role_arn.endswith(":role/capacity-forecaster-image-build")

    result = _cli(
        project, "image", "build", "--codebuild", "--service-role-arn", role_arn, "--poll-seconds", "0"
    )
    assert result.exit_code == 0, result.output
    tag = image_tag(project)
    repo_uri = boto3.client("ecr").describe_repositories()["repositories"][0]["repositoryUri"]
    assert f"export CF_SAGEMAKER_IMAGE_URI={repo_uri}:{tag}" in result.output
    assert _calls(docker_log) == []  # nothing ran locally

    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"sagemaker/image/context-{tag}.zip")["Body"]
    names = zipfile.ZipFile(io.BytesIO(body.read())).namelist()
    assert sorted(names) == [".dockerignore", "Dockerfile", "constraints.txt", "pyproject.toml"]
    codebuild = boto3.client("codebuild")
    [project_info] = codebuild.batch_get_projects(names=["capacity-forecaster-image"])["projects"]
    assert project_info["environment"]["privilegedMode"] is True
    assert project_info["serviceRole"] == role_arn
    assert "--platform linux/amd64" in project_info["source"]["buildspec"]
    [build_id] = codebuild.list_builds_for_project(projectName="capacity-forecaster-image")["ids"]
    assert codebuild.batch_get_builds(ids=[build_id])["builds"][0]["buildStatus"] == "SUCCEEDED"


def test_codebuild_needs_a_service_role(bucket, project, monkeypatch):
    monkeypatch.delenv("CF_CODEBUILD_ROLE_ARN", raising=False)
    result = _cli(project, "image", "build", "--codebuild")
    assert result.exit_code == 2 and "--service-role-arn" in result.output


def test_dockerfile_holds_pinned_dependencies_only_for_linux_amd64_as_a_non_root_user():
    """No engine runs here, so the Dockerfile's promises are checked as text."""
    lines = [line.strip() for line in (PROJECT_PATH / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM --platform=linux/amd64 python:3.11-slim"
    copies = [line for line in instructions if line.startswith("COPY")]
    assert copies == ["COPY pyproject.toml constraints.txt ./"]  # no src/, no conf/: they ship per run
    assert any("pip install -c constraints.txt -r requirements.txt" in line for line in instructions)
    users = [line for line in instructions if line.startswith("USER")]
    assert users == ["USER cf"]
    ignored = [line for line in (PROJECT_PATH / ".dockerignore").read_text().splitlines() if line[:1] != "#"]
    assert ignored == ["*", "!pyproject.toml", "!constraints.txt"]  # the builder gets nothing else
