# One image, four services: `agentbus orchestrator | worker | archiver | gateway` (plus the
# `provision` and client commands). Multi-stage: a builder makes a virtualenv, the final
# stage copies only that venv onto the same base; no compiler, no pip, no sources.
#
#   docker build -t agentbus:dev .
#   docker build --build-arg BASE_IMAGE=agentbus-base:bookworm -t agentbus:dev .  # local base
#
# BASE_IMAGE must provide `python3` (>= 3.11) with the venv module; both stages use it, so
# the venv's interpreter path is valid in the final image whatever the base puts it at.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS builder
LABEL io.agentbus.stage=builder
# Optional extras baked in: PostgreSQL for the archiver, the OTLP trace exporter.
ARG EXTRAS=postgres,otlp
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/agentbus
WORKDIR /src
COPY pyproject.toml README.md ./
# Dependencies first, from pyproject.toml alone: this layer stays cached while only the
# sources change. Use the system CA bundle when there is one (private mirrors, proxies).
RUN python3 -c 'import sys, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [e.strip() for e in sys.argv[1].split(",") if e.strip()]; \
print("\n".join(p["dependencies"] + [r for e in extras for r in p["optional-dependencies"][e]]))' \
    "$EXTRAS" > /tmp/requirements.txt
RUN set -eu; \
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
      export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    /opt/agentbus/bin/pip install --quiet -r /tmp/requirements.txt
COPY services ./services
RUN set -eu; \
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
      export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    /opt/agentbus/bin/pip install --quiet --no-deps .; \
    /opt/agentbus/bin/agentbus --help >/dev/null; \
    /opt/agentbus/bin/pip uninstall --quiet --yes pip setuptools wheel; \
    rm -f /opt/agentbus/bin/activate* /opt/agentbus/bin/Activate.ps1

FROM ${BASE_IMAGE}
ARG UID=10001
# A fixed non-root uid/gid (Kubernetes runAsUser matches it); the archive lives under
# /var/lib/agentbus (a volume in Kubernetes), nothing else is written but /tmp.
RUN set -eu; \
    groupadd --system --gid "$UID" agentbus; \
    useradd --system --uid "$UID" --gid "$UID" --home-dir /var/lib/agentbus \
      --no-create-home --shell /usr/sbin/nologin agentbus; \
    install -d -o "$UID" -g "$UID" -m 0750 /var/lib/agentbus
COPY --from=builder /opt/agentbus /opt/agentbus
ENV PATH=/opt/agentbus/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGENTBUS_LOG_FORMAT=json \
    AGENTBUS_ARCHIVER__DATABASE_URL=sqlite+aiosqlite:////var/lib/agentbus/archive.db
WORKDIR /var/lib/agentbus
USER ${UID}:${UID}
# 9090: every service's metrics and health; 8080: the gateway's API and console
EXPOSE 9090 8080
LABEL io.agentbus.stage=final \
      org.opencontainers.image.title="agentbus" \
      org.opencontainers.image.description="Multi-agent summarization pipeline on NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["agentbus"]
CMD ["--help"]
