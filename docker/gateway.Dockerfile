# syntax=docker/dockerfile:1.7
# The gateway image: websockets + HTTP front, no Kaldi (the base install of the package).
#
#   docker build -f docker/gateway.Dockerfile -t REGISTRY/ksc-gateway:0.1.0 .
#
# The base is pinned by tag; pin it by digest where you build (docs/deploy.md shows how):
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
COPY decoder_worker/ decoder_worker/
COPY shared/ shared/
COPY batch_worker/ batch_worker/
COPY ksc/ ksc/
# Every dependency ships manylinux wheels: no compiler in this stage either. pip's
# downloads stay in a build cache between builds, never in a layer. Bytecode is compiled
# here, once, and kept: the root filesystem is read-only at run time, so without it every
# start and every probe (`ksc check`) compiles the whole import graph again (see
# docs/deploy.md). unchecked-hash: the image never changes, so Python need not compare
# sources with the bytecode, and layer mtimes cannot make it look stale.
RUN --mount=type=cache,id=ksc-pip,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile . \
 && /opt/venv/bin/python -m compileall -q -f -j0 --invalidation-mode unchecked-hash /opt/venv

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kaldi-stream-cluster gateway" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
RUN groupadd --system --gid 10001 ksc \
 && useradd --system --uid 10001 --gid ksc --home-dir /nonexistent --no-create-home ksc
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KSC_HOST=0.0.0.0 \
    KSC_PORT=8888
USER 10001:10001
EXPOSE 8888
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["ksc", "check", "gateway", "--url", "http://127.0.0.1:8888"]
ENTRYPOINT ["ksc"]
CMD ["gateway"]
