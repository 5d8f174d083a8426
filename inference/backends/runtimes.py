"""Writing a graph in a backend's format, and opening it with that backend's runtime.

Each backend keeps a graph ``name`` as: ``onnx``/``onnx-int8`` ``name.onnx``,
``openvino`` ``name.xml`` and ``name.bin``. OpenVINO's IR is converted from
the ONNX export, which is then deleted.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import openvino
import sentence_transformers
import torch
import transformers

from inference.backends.cache import Entry, ExportCache, cache_key, directory_digest
from inference.backends.choice import Backend, BackendOptions
from inference.backends.graph import Graph, Session
from inference.backends.onnx import OnnxSession, export_onnx, quantize_int8
from inference.backends.openvino import OpenVinoSession, convert_onnx


def export_graph(graph: Graph, backend: Backend, directory: Path) -> None:
    target = directory / f"{graph.name}.onnx"
    if backend == "onnx":
        export_onnx(graph, target)
        return
    intermediate = directory / f".{graph.name}.fp32.onnx"
    export_onnx(graph, intermediate)
    if backend == "onnx-int8":
        quantize_int8(intermediate, target)
    elif backend == "openvino":
        convert_onnx(intermediate, directory / f"{graph.name}.xml")
    else:
        raise ValueError(f"{backend} does not run exported graphs")
    intermediate.unlink()


def open_graph(backend: Backend, directory: Path, name: str, options: BackendOptions) -> Session:
    if backend in ("onnx", "onnx-int8"):
        return OnnxSession(directory / f"{name}.onnx", options)
    if backend == "openvino":
        return OpenVinoSession(directory / f"{name}.xml", options)
    raise ValueError(f"{backend} does not run exported graphs")


def runtime_versions(backend: Backend) -> dict[str, str]:
    """The library versions an export of ``backend`` depends on (part of its cache key)."""
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    if backend == "openvino":
        versions["openvino"] = openvino.__version__
    else:
        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def cached_export(
    options: BackendOptions,
    name: str,
    backend: Backend,
    model_path: Path,
    export_format: str,
    build: Callable[[Path], dict[str, Any]],
) -> Entry:
    """The cache entry of ``model_path`` exported for ``backend``; built by ``build``
    when missing or corrupt. The key covers the model's files, the export format and
    every library the export depends on."""
    identity = {
        "format": export_format,
        "model": directory_digest(model_path),
        "backend": backend,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        **runtime_versions(backend),
    }
    return ExportCache(options.cache_dir).get_or_build(cache_key(name, backend, identity), build)
