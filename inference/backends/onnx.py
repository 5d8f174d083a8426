"""ONNX: exporting a torch module, quantizing it, and running it with ONNX Runtime."""

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from inference.backends.choice import BackendOptions
from inference.backends.graph import Graph

# ORT_DISABLE_TELEMETRY (inference/__init__.py) keeps telemetry from starting
# when the library loads; this turns off its events too, should it have started.
onnxruntime.disable_telemetry_events()
onnxruntime.set_default_logger_severity(3)

OPSET = 17


def export_onnx(graph: Graph, path: Path) -> None:
    """``graph`` traced with example inputs into an ONNX file, batch and lengths dynamic.

    The TorchScript exporter, not the dynamo one: with torch 2.13 the dynamo
    exporter took 13 s on MiniLM and wrote a graph ONNX Runtime refused
    ("Duplicate definition of name"); the traced one takes 2 s and matches torch.
    """
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The deprecation notice, and the tracer's notes on the shape checks
        # transformers makes (each is checked by the fidelity test instead).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            graph.module.eval(),
            graph.example,
            str(path),
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_axes={name: dict(axes) for name, axes in graph.dynamic_axes.items()},
            opset_version=OPSET,
            dynamo=False,
        )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization: int8 weights, activations quantized at run time.

    Per channel: on MiniLM the min cosine to torch was 0.979 against 0.894 per tensor.
    """
    # The quantizer logs every tensor it leaves alone on the root logger.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


class OnnxSession:
    def __init__(self, path: Path, options: BackendOptions) -> None:
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.onnx_intra_op_threads
        session_options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if options.onnx_allow_spinning else "0"
        )
        self._session = onnxruntime.InferenceSession(
            str(path), session_options, providers=["CPUExecutionProvider"]
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))
