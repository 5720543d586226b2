# syntax=docker/dockerfile:1
# The Serval image: one image for every component, chosen by sub-command
# (`serval registry`, `serval dns`, `serval agent`, `serval dashboard`, and the CLI);
# the Helm chart (helm/serval) runs it that way.
#
#   docker build -t serval:0.1.0 .
#
# Stage 1 builds the wheel the way `pip wheel .` builds it from this tree: through the
# PEP 517 back-end pyproject.toml names (maturin, within its version bounds), with the
# Rust dependencies pinned by Cargo.lock (--locked). Stage 2 installs that wheel on
# python:3.11-slim and runs it as an unprivileged user. Both stages are on the same
# Debian release, so the extension links against the glibc it runs with.
# tests/unit/test_container_image.py checks this file against the tree and the chart.

ARG DEBIAN_RELEASE=bookworm
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# Debian bookworm's python3 is 3.11: the wheel is abi3 for Python >= 3.11.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir --upgrade pip
WORKDIR /src
COPY . .
ENV MATURIN_PEP517_ARGS=--locked
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim-${DEBIAN_RELEASE}
LABEL org.opencontainers.image.title="serval" \
      org.opencontainers.image.description="Serval service registry, DNS bridge, host agent and dashboard" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/ /tmp/dist/
RUN pip install /tmp/dist/serval-*.whl \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 serval \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin serval
# Numeric, so that Kubernetes can verify runAsNonRoot (the chart's securityContext uses it).
USER 10001:10001
ENTRYPOINT ["serval"]
CMD ["--help"]
