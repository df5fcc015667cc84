# The api image (also runs `lrlab db upgrade` for compose's migrate service): base dependencies only.
#   docker build -f docker/api.Dockerfile -t lrlab-api .
# It must stay free of the [worker] extra: the api sends tasks by name and never imports the trainer.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LRLAB_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

# uid/gid 1000 in both images. /data (where an upload is staged while it is checked) is created here, owned by
# that user, so it is writable by the service, as is a fresh named volume mounted on it.
RUN groupadd --gid 1000 lrlab \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin lrlab \
 && mkdir -p /data/datasets \
 && chown -R lrlab:lrlab /data

WORKDIR /src
# Dependencies first, in their own layer, read from pyproject.toml: editing code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], sep='\n')" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY lrlab ./lrlab
COPY api ./api
COPY worker ./worker
COPY trainer ./trainer
RUN pip install . \
 && pip check \
 && rm -rf /src

WORKDIR /home/lrlab
# Charts are drawn with matplotlib: build its font cache now, not on the first request.
RUN mkdir -p /tmp/matplotlib && python -c "import matplotlib.font_manager" && chown -R 1000:1000 /tmp/matplotlib
# Numeric, so that runtimes can tell it is not root (Kubernetes' runAsNonRoot).
USER 1000:1000
EXPOSE 8000

# Liveness only (the process answers); /readyz also checks the database and the broker.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["lrlab", "api", "--host", "0.0.0.0", "--port", "8000"]
