# syntax=docker/dockerfile:1
# funasr-fleet container image: `funasr-fleet supervise` (N consumer processes + /healthz /readyz /metrics on :9100).
#
#   docker build -t funasr-fleet:cpu .
#   docker build -t funasr-fleet:gpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker build -t funasr-fleet:cpu-baked --build-arg BAKE_MODELS=1 .       # models inside the image
#
# Build arguments:
#   TORCH_VERSION    torch release (must satisfy the pin in pyproject.toml)
#   TORCH_INDEX_URL  PyTorch wheel index: .../whl/cpu (default, CPU build) or a CUDA one (.../whl/cu128 ...):
#                    the CUDA wheels bring their CUDA/cuDNN libraries as pip packages, so the slim base works
#                    on any host with an NVIDIA driver and the NVIDIA container toolkit.
#   BAKE_MODELS      1 = download the engine's models (FLEET_ENGINE__* names, defaults paraformer-zh, fsmn-vad,
#                    ct-punc, cam++) into /opt/funasr-models at build time and point the image's config file at
#                    them, so pods start without reaching a model hub. 0 (default) = models are downloaded on
#                    first start into the model cache volume (/models).
#   INSTALL_FFMPEG   1 = add Debian's ffmpeg. Not needed: PyAV's wheels bundle the FFmpeg libraries.
# No secrets are baked in: credentials come at run time (environment / mounted secret files).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with torch (CPU or CUDA) and the project --------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from the PyTorch index: an unpinned torch pulled in by funasr would be the multi-GB CUDA build
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY funasr_fleet ./funasr_fleet
# the local version label (+cpu, +cu128) satisfies pyproject's torch==X pin, so pip keeps the build chosen above
RUN pip install --no-cache-dir . \
    && python -c "import torch, funasr_fleet; print('torch', torch.__version__)"

# ---- models: optionally bake the engine's models into the image ---------------------------------------------------
FROM build AS models
ARG BAKE_MODELS=0
COPY deploy/fetch-models.py /usr/local/bin/fetch-models.py
RUN mkdir -p /opt/funasr-models /etc/funasr-fleet \
    && if [ "${BAKE_MODELS}" = "1" ]; then \
         python /usr/local/bin/fetch-models.py --dest /opt/funasr-models --toml /etc/funasr-fleet/fleet.toml; \
       else \
         printf '# funasr-fleet image config (FLEET_CONFIG). No models baked in: see BAKE_MODELS.\n' \
           > /etc/funasr-fleet/fleet.toml; \
       fi

# ---- runtime ------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG INSTALL_FFMPEG=0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if [ "${INSTALL_FFMPEG}" = "1" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ffmpeg \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 fleet \
    && useradd --system --uid 10001 --gid fleet --home-dir /home/fleet --create-home --shell /usr/sbin/nologin fleet \
    && mkdir -p /models \
    && chown fleet:fleet /models
COPY --from=build /opt/venv /opt/venv
COPY --from=models /opt/funasr-models /opt/funasr-models
COPY --from=models /etc/funasr-fleet /etc/funasr-fleet

# Runtime defaults; every FLEET_* key can be overridden at run time.
# OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spin-waiting (spinning consumers stall each other).
# Caches that libraries write go to /tmp, so the image also runs with a read-only root file system.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    FLEET_CONFIG=/etc/funasr-fleet/fleet.toml \
    FLEET_ENGINE__MODEL_CACHE_DIR=/models \
    FLEET_SUPERVISOR__HTTP_PORT=9100 \
    FLEET_LOG__FORMAT=json

# model cache (downloaded models survive container restarts when a volume is mounted here)
VOLUME ["/models"]
USER 10001:10001
WORKDIR /home/fleet
EXPOSE 9100

# liveness of the supervisor; readiness (consumers ready for jobs) is /readyz
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FLEET_SUPERVISOR__HTTP_PORT', '9100'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["funasr-fleet"]
CMD ["supervise"]
