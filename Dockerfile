# syntax=docker/dockerfile:1
# The production image: dagster-webserver, dagster-daemon and every run task (docs/production.md).
#   docker build -t shopify-pipeline .
#   docker run shopify-pipeline webserver | daemon | dagster api execute_run ...

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shopify_pipeline ./shopify_pipeline
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

# tini as PID 1 passes ECS's SIGTERM (StopTask, a run terminated from the UI) on to Dagster.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Exactly the versions the tests ran against (deploy/pin_requirements.py), then the project without resolving again.
COPY deploy/requirements.txt /tmp/requirements.txt
RUN pip install --no-deps -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && pip check && rm -rf /tmp/wheels

RUN useradd --system --uid 10001 --user-group --create-home dagster \
    && mkdir -p "$DAGSTER_HOME" \
    && chown dagster:dagster "$DAGSTER_HOME"
COPY deploy/dagster.yaml $DAGSTER_HOME/dagster.yaml
WORKDIR /opt/dagster/app
COPY workspace.yaml ./
COPY --chmod=755 deploy/entrypoint.sh /usr/local/bin/shopify-pipeline-entrypoint

USER dagster
EXPOSE 3000
ENTRYPOINT ["tini", "--", "shopify-pipeline-entrypoint"]
CMD ["webserver"]
