"""OpenVINO: converting an ONNX file to OpenVINO IR and running it on the CPU.

OpenVINO's telemetry is switched off in ``inference/__init__.py``, before any
import of openvino.
"""

import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import openvino

from inference.backends.choice import BackendOptions


@lru_cache(maxsize=1)
def _core() -> openvino.Core:
    return openvino.Core()


def convert_onnx(source: Path, target: Path) -> None:
    """``source`` (ONNX) saved as ``target`` (``.xml`` and ``.bin``), weights kept in fp32."""
    model = openvino.convert_model(str(source))
    # save_model halves the weights to fp16 unless told not to.
    openvino.save_model(model, str(target), compress_to_fp16=False)


class OpenVinoSession:
    def __init__(self, path: Path, options: BackendOptions) -> None:
        config: dict[str, object] = {
            "PERFORMANCE_HINT": options.openvino_performance_hint,
            # On CPUs with bf16 units OpenVINO would otherwise compute in bf16.
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if options.openvino_threads:
            config["INFERENCE_NUM_THREADS"] = options.openvino_threads
        self._compiled = _core().compile_model(str(path), "CPU", config)
        self._outputs = list(self._compiled.outputs)
        # An infer request runs one call at a time: one per thread.
        self._local = threading.local()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        # Inputs are read in place (T5's cross-attention cache is fed at every step);
        # outputs are copies (share_outputs=False), safe to feed back.
        result = request.infer(dict(feeds), share_inputs=True)
        return [result[output] for output in self._outputs]
