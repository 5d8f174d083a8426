"""Which backend runs a model: the setting, the device, and the fallback to torch."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal, TypeVar, get_args

log = logging.getLogger(__name__)

Backend = Literal["torch", "openvino", "onnx", "onnx-int8"]
EXPORTED: tuple[Backend, ...] = ("openvino", "onnx", "onnx-int8")
# Fastest first, as measured on a 2-core CPU at batch 64 (OpenVINO 3.4x torch,
# ONNX Runtime 1.8x). int8 is left out: it changes the vectors.
AUTO_ON_CPU: tuple[Backend, ...] = ("openvino", "onnx", "torch")

T = TypeVar("T")


@dataclass(frozen=True)
class BackendOptions:
    """Where exports are cached, and how the runtimes use the CPU."""

    cache_dir: Path
    onnx_intra_op_threads: int = 0
    onnx_allow_spinning: bool = False
    openvino_threads: int = 0
    openvino_performance_hint: str = "LATENCY"


def candidates(requested: str, device: str) -> tuple[Backend, ...]:
    """The backends to try, in order: ``auto`` is torch on a GPU, else the fastest first."""
    if requested == "auto":
        return AUTO_ON_CPU if device == "cpu" else ("torch",)
    if requested not in get_args(Backend):
        raise ValueError(f"unknown inference backend {requested!r}")
    return (requested,)


def load_first(requested: str, device: str, model: str, load: Callable[[Backend], T]) -> T:
    """``load`` of the first backend that works.

    With ``auto``, a backend whose export, check or load fails is logged with the
    reason and the next one is tried; torch comes last. A backend named
    explicitly is the only one tried: its failure is raised.
    """
    names = candidates(requested, device)
    for name, next_name in pairwise(names):
        try:
            return load(name)
        except Exception as error:
            log.warning(
                "inference backend %s not used for %s, falling back to %s: %s: %s",
                name,
                model,
                next_name,
                type(error).__name__,
                error,
                extra={"backend": name, "model": model, "fallback": next_name},
            )
    return load(names[-1])
