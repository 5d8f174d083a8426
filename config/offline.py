"""No egress: the switches that keep the libraries convoq runs from reaching the internet.

Set in every convoq process when ``config`` is imported, before any library
that reads them (the API, both worker pools, beat, Flower, the commands), and
inherited by the processes they start (the local stack's Milvus Lite server).
The image, the compose file and the Kubernetes ConfigMap set them too, for
anything that starts before Python.

- Hugging Face: models are read from local directories only; no hub request,
  no telemetry (huggingface_hub also honours ``DO_NOT_TRACK``).
- ONNX Runtime: its Linux wheels start Microsoft's 1DS telemetry when the
  library loads (a device id and an event store under ~/.cache/Microsoft/);
  the variable is read at load, so ``disable_telemetry_events()`` comes too late.
- OpenVINO's telemetry is kept from being imported by ``inference``.

pymilvus, milvus-lite, Celery, kombu, Flower, gunicorn and sentence-transformers
send nothing of their own accord (read in their sources): they connect only
to the URLs in the settings. The one outbound request by design is a job's
``callback_url`` webhook, to the address its tenant gave.
"""

import os

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DO_NOT_TRACK": "1",
    "ORT_DISABLE_TELEMETRY": "1",
}


def enforce_offline() -> None:
    """Set every switch, over any other value: no setting of convoq turns egress on."""
    os.environ.update(OFFLINE_ENVIRONMENT)
