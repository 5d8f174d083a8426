"""Model managers. Only worker processes import this package (it imports torch).

Models are read from local directories only: hub downloads would send data
off the machine, so they are switched off before any Hugging Face import.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads spin between operations by default. On a node shared
# with the API, PostgreSQL and Redis that starves them: measured here, one-text
# jobs ran at 4 jobs/s spinning and 19 jobs/s passive. A dedicated inference
# node can set OMP_WAIT_POLICY=ACTIVE (about 20% more raw batch-64 throughput).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ONNX Runtime's Linux wheels start Microsoft's 1DS telemetry when the library
# loads (a device id and an event store under ~/.cache/Microsoft/); this
# variable, read at load, keeps it off. disable_telemetry_events() comes too late.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# On import, OpenVINO's model-conversion tools send a usage event to Google
# Analytics and write a client id under ~/intel/ unless a consent file there
# says no. With openvino_telemetry unimportable, OpenVINO uses its built-in
# no-op stub: nothing is written and nothing is sent.
sys.modules.setdefault("openvino_telemetry", None)
