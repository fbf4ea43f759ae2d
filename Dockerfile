# syntax=docker/dockerfile:1
#
# realtime-relay container image.
#   docker build -t realtime-relay .
#   docker run --rm -p 8080:8080 -e OPENAI_API_KEY=sk-... \
#     -v "$PWD/my-policies:/etc/relay/policies:ro" realtime-relay
#
# Two stages: the builder installs the package and its dependencies into a virtualenv; the
# runtime stage copies only that virtualenv onto a fresh slim Python, so no compiler, pip cache or
# source tree ships. The runtime runs as uid 10001 and works with a read-only root filesystem:
# the only writable paths are the spool and recording volumes (and /tmp, mounted by the runtime).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/relay
COPY pyproject.toml README.md ./
COPY relay ./relay
# Build a wheel of the relay, install it with its dependencies (all published as binary wheels for
# linux x86_64 and aarch64, so no compiler is needed), then drop the installer from the venv.
RUN /opt/relay/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/relay/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/relay/bin/pip uninstall --yes pip setuptools \
 && /opt/relay/bin/relay --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="realtime-relay" \
      org.opencontainers.image.description="Auditing relay for the OpenAI Realtime API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/realtime-relay/realtime-relay"
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/relay --no-create-home \
      --shell /usr/sbin/nologin relay \
 && mkdir -p /etc/relay/policies/tenants /var/lib/relay/spool /var/lib/relay/recordings \
 && chown -R 10001:10001 /var/lib/relay
COPY --from=builder /opt/relay /opt/relay
COPY deploy/docker/relay.yaml /etc/relay/relay.yaml
# Relay-wide default policies only: tenant files (client key hashes) are never baked in.
COPY policies/default.yaml /etc/relay/policies/default.yaml
WORKDIR /var/lib/relay
USER 10001:10001
EXPOSE 8080 9464
VOLUME ["/var/lib/relay/spool", "/var/lib/relay/recordings"]
# SIGTERM starts the drain (readyz 503, new sessions 503, live ones run up to drain_seconds):
# give `docker stop` a timeout above drain_seconds plus upload time (--time 75; compose
# stop_grace_period).
STOPSIGNAL SIGTERM
# The admin listener's liveness endpoint; python is the only tool the slim image is sure to have.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["relay"]
CMD ["serve", "--config", "/etc/relay/relay.yaml"]
