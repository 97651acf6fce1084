# One image for every role: `api` (the default) or `consumer`, chosen by the command.
# In production MONGODB_URL and AMQP_URL name real servers; the embedded MongoDB stand-in is
# for local use only.

# --- build: wheels of the project and its dependencies, with whatever compiling needs ---
FROM python:3.11-slim AS build
WORKDIR /src
# The client (client/) is a distribution of its own that the service requires: both are built
# in one pip command, so that `medevents-client` resolves to this one, not to an index's.
COPY client/pyproject.toml client/README.md ./client/
COPY client/src ./client/src
COPY pyproject.toml setup.cfg README.md ./
COPY service ./service
COPY consumers ./consumers
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./client .

# --- runtime: the wheels installed, no build tools, a user without privileges ---
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    HTTP_HOST=0.0.0.0 \
    METRICS_PORT=9464 \
    DATA_DIR=/var/lib/medevents
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels medevents medevents-client \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/medevents --create-home medevents
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/k8s).
USER 10001
WORKDIR /var/lib/medevents
EXPOSE 8080 9464
# Liveness of the API; a consumer container overrides it (see docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('HTTP_PORT', '8080'), timeout=2)"
# SIGTERM stops either role cleanly: in-flight work finishes (30 s at most) or goes back.
STOPSIGNAL SIGTERM
ENTRYPOINT ["medevents"]
CMD ["api"]
