"""Model managers. Only worker processes import this package (it imports torch).

Models are read from local directories only: hub downloads would send data
off the machine, so they are switched off before any Hugging Face import.
"""

import os
import sys

from config.offline import enforce_offline

# Hub downloads and telemetry (ONNX Runtime's too), before any library reads them.
enforce_offline()
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads spin between operations by default. On a node shared
# with the API, PostgreSQL and Redis that starves them: measured here, one-text
# jobs ran at 4 jobs/s spinning and 19 jobs/s passive. A dedicated inference
# node can set OMP_WAIT_POLICY=ACTIVE (about 20% more raw batch-64 throughput).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# On import, OpenVINO's model-conversion tools send a usage event to Google
# Analytics and write a client id under ~/intel/ unless a consent file there
# says no. With openvino_telemetry unimportable, OpenVINO uses its built-in
# no-op stub: nothing is written and nothing is sent.
sys.modules.setdefault("openvino_telemetry", None)
