# The service image. In production MONGODB_URL and AMQP_URL name real servers; the embedded
# MongoDB stand-in is for local use only.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    HTTP_HOST=0.0.0.0 \
    DATA_DIR=/var/lib/medevents

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY service ./service
COPY consumers ./consumers
COPY schemas ./schemas
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/medevents --create-home medevents

USER medevents
EXPOSE 8080
ENTRYPOINT ["medevents"]
CMD ["api"]
