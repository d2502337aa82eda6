# The image of the project's SageMaker Processing jobs: Python 3.11 and the project's dependencies, pinned.
# Dependencies only: the wheel and conf ship with every run (so a code change needs no new image).
#   kedro cloud image build && kedro cloud image push      (or: kedro cloud image build --codebuild)
# constraints.txt pins every dependency (generated from pyproject.toml); the tag is a hash of these files.
FROM --platform=linux/amd64 python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEDRO_DISABLE_TELEMETRY=true

WORKDIR /tmp/deps
COPY pyproject.toml constraints.txt ./
# The [project] dependencies of pyproject.toml and its [cloud] extra (jobs read and write S3), not the project
# itself, at the versions constraints.txt pins.
RUN python -c "import tomllib; \
        project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        deps = project['dependencies'] + project['optional-dependencies']['cloud']; \
        print('\n'.join(deps))" > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt \
    && rm -rf /tmp/deps

# Non-root user; it owns /opt/ml, where SageMaker Processing mounts inputs and collects outputs and where the
# job entrypoint unpacks the wheel (/opt/ml/processing/site).
RUN useradd --create-home --uid 1000 cf \
    && mkdir -p /opt/ml/processing \
    && chown -R cf /opt/ml
USER cf
WORKDIR /home/cf
