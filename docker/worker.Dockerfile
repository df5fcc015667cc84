# The worker image: base dependencies plus the [worker] extra, with torch from the PyTorch wheel index.
#   docker build -f docker/worker.Dockerfile -t lrlab-worker:cuda .
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t lrlab-worker:cpu .
# python:3.11-slim is enough for the GPU build: the CUDA wheels bring their own CUDA runtime libraries;
# the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# torch 2.13 publishes no cu128 wheels; cu130 (the build PyPI ships too) needs an NVIDIA driver >= 580.
# For an older driver build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LRLAB_DATA_DIR=/data

# Same uid/gid as the api image. /data holds the worker's cache of stored datasets (a volume of its own).
RUN groupadd --gid 1000 lrlab \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin lrlab \
 && mkdir -p /data/datasets \
 && chown -R lrlab:lrlab /data

# torch first, in its own layer (gigabytes): the version must equal the [worker] extra's pin in
# pyproject.toml (tests/test_compose.py checks), so the next step finds it already satisfied.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

WORKDIR /src
# The other dependencies (base + [worker] extra), read from pyproject.toml, before the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['worker'], sep='\n')" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY lrlab ./lrlab
COPY api ./api
COPY worker ./worker
COPY trainer ./trainer
# The extra installs nothing new here; pip checks it is satisfied (torch above included).
# hadolint ignore=DL3013
RUN pip install ".[worker]" \
 && pip check \
 && rm -rf /src

WORKDIR /home/lrlab
# Numeric, so that runtimes can tell it is not root (Kubernetes' runAsNonRoot).
USER 1000:1000

CMD ["lrlab", "worker", "--queues", "gpu,cpu", "--concurrency", "1"]
