# The service's image, one target per role, built by `make image` (scripts/build-image):
#   api       (the last stage: the default) `medevents api`: EXPOSE 8080, liveness on /health/live
#   consumer  `medevents consumer`: EXPOSE 9464 (its /metrics), liveness on /health/live there
# Both share every layer; they differ in their command, port and HEALTHCHECK only. The webhook
# worker runs from the consumer image with the command `webhooks` (same metrics port and check).
# In production MONGODB_URL and AMQP_URL name real servers: the image has no stand-in database.
#
# BASE_IMAGE: any Debian-like image with Python 3.11 and its venv module, the official one by
# default; scripts/make-debian-base makes one from Debian's packages (python3 in /usr/bin) for
# machines that reach no image registry.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- deps: the locked third-party dependencies alone, in the virtualenv the image runs ---
# Its own layer, made before any of the project's source is copied: rebuilt only when the lock
# changes. /opt/venv has no pip: /opt/pip (a virtualenv of the build alone) installs into it.
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY requirements/service.txt /tmp/requirements/service.txt
# Wheels only (no compiler anywhere), each checked against the lock's hashes.
RUN python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install \
        --require-hashes --no-deps --only-binary=:all: -r /tmp/requirements/service.txt

# --- build: the service's and the client's wheels (setuptools from its own lock), installed ---
# under /staging: the runtime stage takes the project's files alone from there.
FROM deps AS build
COPY requirements/build.txt /tmp/requirements/build.txt
RUN /opt/pip/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r /tmp/requirements/build.txt
WORKDIR /src
# The client (client/) is a distribution of its own that the service requires.
COPY client/pyproject.toml client/README.md ./client/
COPY client/src ./client/src
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
COPY consumers ./consumers
COPY schemas ./schemas
RUN /opt/pip/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ./client . \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-deps --no-index \
        --no-warn-script-location --root /staging /wheels/*.whl

# --- runtime: the dependencies' layer as built, the project's on top; no pip, no compiler ---
FROM ${BASE_IMAGE} AS runtime
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/k8s).
RUN groupadd --system --gid 10001 medevents \
    && useradd --system --uid 10001 --gid 10001 --no-log-init \
        --home-dir /var/lib/medevents --create-home medevents
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /staging/opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080 \
    METRICS_PORT=9464 \
    DATA_DIR=/var/lib/medevents
ARG BASE_IMAGE
ARG VERSION=0.0.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="medevents" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.description="Asynchronous job service for medical-event submissions" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"
USER 10001
WORKDIR /var/lib/medevents
# SIGTERM stops either role cleanly: in-flight work finishes (30 s at most) or goes back.
STOPSIGNAL SIGTERM
ENTRYPOINT ["medevents"]

# --- consumer: takes jobs from RabbitMQ; serves /metrics and /health/live on METRICS_PORT ---
FROM runtime AS consumer
EXPOSE 9464
# 503 once the event loop is wedged (the check raises, exits 1), as when nothing answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('METRICS_PORT', '9464'), timeout=2)"]
CMD ["consumer"]

# --- api (the default target): the HTTP API, its /metrics on the same port ---
FROM runtime AS api
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('HTTP_PORT', '8080'), timeout=2)"]
CMD ["api"]
