"""Which backend runs a model: the setting, the device, and the fallback to torch.

On a CPU, ``auto`` measures: the first time a model starts on a machine, every
backend whose export passes its fidelity check runs the same small workload,
and the fastest is kept. The decision is stored beside the exports, keyed by
the model, the CPU, the thread settings and the library versions, so later
starts load only the chosen backend.
"""

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Literal, TypeVar, get_args

log = logging.getLogger(__name__)

Backend = Literal["torch", "openvino", "onnx", "onnx-int8"]
EXPORTED: tuple[Backend, ...] = ("openvino", "onnx", "onnx-int8")
# What auto measures on a CPU; int8 is left out: it changes the vectors. The
# order only breaks ties and is the fallback order when a measured choice fails.
AUTO_ON_CPU: tuple[Backend, ...] = ("openvino", "onnx", "torch")
RUNTIME_PACKAGES = ("torch", "onnxruntime", "openvino", "transformers")

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


def load_first(
    requested: str,
    device: str,
    model: str,
    load: Callable[[Backend], T],
    *,
    measure: tuple[Path, BackendOptions, Callable[[T], object]] | None = None,
) -> T:
    """``load`` of the backend asked for.

    ``auto`` on a CPU with ``measure`` (the model directory, the options, and a
    small workload) is ``load_fastest``. Otherwise, with ``auto``, a backend whose
    export, check or load fails is logged with the reason and the next one is
    tried; torch comes last. A backend named explicitly is the only one tried:
    its failure is raised.
    """
    if requested == "auto" and device == "cpu" and measure is not None:
        model_dir, options, workload = measure
        return load_fastest(model, decision_path(model_dir, model, options), load, workload)
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _model_files(model_dir: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    return [
        (p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]


def decision_path(model_dir: Path, model: str, options: BackendOptions) -> Path:
    """Where ``auto``'s measured choice for this model on this machine is kept."""
    versions = {}
    for package in RUNTIME_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = ""
    identity = {
        "model": _model_files(Path(model_dir)),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "threads": [options.onnx_intra_op_threads, options.onnx_allow_spinning],
        "openvino": [options.openvino_threads, options.openvino_performance_hint],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return Path(options.cache_dir).expanduser() / "auto" / f"{safe}-{digest}.json"


def _seconds(workload: Callable[[], object], rounds: int = 3) -> float:
    workload()  # warm-up: first calls allocate
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        workload()
        best = min(best, time.perf_counter() - started)
    return best


def _write_decision(path: Path, decision: dict[str, object]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(decision, indent=2))
        temporary.replace(path)
    except OSError as error:
        log.warning("auto backend choice not stored: %s", error, extra={"path": str(path)})


def _stored_choice(path: Path) -> Backend | None:
    try:
        choice = json.loads(path.read_text())["choice"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice if choice in AUTO_ON_CPU else None


def load_fastest(
    model: str,
    decision: Path,
    load: Callable[[Backend], T],
    workload: Callable[[T], object],
) -> T:
    """``auto`` on a CPU: the stored choice if there is one, else the fastest
    backend on ``workload`` among those that load (export and check included)."""
    stored = _stored_choice(decision)
    if stored is not None:
        try:
            return load(stored)
        except Exception as error:
            log.warning(
                "stored auto choice %s failed for %s (%s: %s); measuring again",
                stored, model, type(error).__name__, error,
            )  # fmt: skip
    loaded: dict[Backend, T] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    for name in AUTO_ON_CPU:
        try:
            model_object = loaded[name] = load(name)
            seconds[name] = _seconds(partial(workload, model_object))
        except Exception as error:
            loaded.pop(name, None)
            failed[name] = f"{type(error).__name__}: {error}"
            log.warning(
                "inference backend %s not used for %s: %s",
                name, model, failed[name], extra={"backend": name, "model": model},
            )  # fmt: skip
    if not loaded:
        raise RuntimeError(f"no inference backend could load {model}: {failed}")
    # Ties go to the earlier backend; torch wins unless another is 5% faster.
    choice = min(seconds, key=lambda name: seconds[name] * (1.05 if name != "torch" else 1.0))
    log.info(
        "inference backend %s chosen for %s (measured seconds: %s)",
        choice, model, {name: round(value, 4) for name, value in seconds.items()},
        extra={"backend": choice, "model": model},
    )  # fmt: skip
    _write_decision(decision, {"choice": choice, "seconds": seconds, "failed": failed})
    return loaded[choice]
