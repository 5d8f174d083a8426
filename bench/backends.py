"""Inference backends side by side: torch, OpenVINO, ONNX Runtime fp32 and int8.

    python -m bench.backends [--raw-texts 1024] [--t5-texts 32] [--jobs 600] [--clients 32]

In one run, on this machine:

1. raw ``Embedder.encode`` of ``--raw-texts`` short texts (about 23 tokens) at
   batch 1, 16 and 64, for every backend, with each backend's min cosine to
   torch on those texts;
2. T5 summaries per second for every backend: a t5-small-sized model with
   random weights (as ``bench.summarize``), ``--t5-texts`` texts of 100 words,
   batch 16, exactly ``--new-tokens`` tokens each;
3. end to end with the fastest fp32 backend at batch 64 (or ``--e2e-backend``): ``--clients`` HTTP
   clients each submitting one-text embed jobs with ``"store": true`` and
   polling each to ``succeeded`` (the whole path, as ``bench.throughput``),
   divided by raw torch ``encode`` at batch 64 (goal: at least 2.0).

Exports go to the ``EXPORT_CACHE_DIR`` (a first run exports, later runs load).
A benchmark, not a test.
"""

import argparse
import tempfile
import time
from pathlib import Path

import inference  # noqa: F401  # isort: skip  (before torch: env as in a worker)

from bench.figures import record
from bench.stack import bench_settings, local_services, run_clients, running_stack
from bench.summarize import make_texts, save_t5_small_sized
from bench.texts import text
from inference.backends.choice import Backend
from inference.backends.fidelity import APPROXIMATE, min_cosine
from inference.embedder import Embedder, default_model_path
from inference.loaders import backend_options
from inference.t5 import T5Summarizer

BACKENDS: tuple[Backend, ...] = ("torch", "openvino", "onnx", "onnx-int8")
BATCHES = (1, 16, 64)


def rate(embedder: Embedder, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        embedder.encode(texts[start : start + batch_size], batch_size=batch_size)
    return len(texts) / (time.perf_counter() - started)


def raw_encode(texts: list[str]) -> tuple[dict[Backend, dict[int, float]], dict[Backend, float]]:
    """Texts/s per backend and batch size, and each backend's min cosine to torch."""
    options = backend_options(bench_settings())
    embedders = {b: Embedder(default_model_path(), "cpu", b, options) for b in BACKENDS}
    reference = embedders["torch"].encode(texts[:64], batch_size=64)
    cosines = {b: min_cosine(reference, e.encode(texts[:64], 64)) for b, e in embedders.items()}
    for embedder in embedders.values():
        embedder.encode(texts[:64], batch_size=64)  # warm-up
    rates: dict[Backend, dict[int, float]] = {b: {} for b in BACKENDS}
    # Batch size outermost: the backends of one batch size run close together in time.
    for batch_size in BATCHES:
        sample = texts[: max(64, len(texts) // 4)] if batch_size == 1 else texts
        for backend, embedder in embedders.items():
            rates[backend][batch_size] = rate(embedder, sample, batch_size)
    return rates, cosines


def t5_rates(texts: list[str], new_tokens: int) -> dict[Backend, float | str]:
    """Summaries/s per backend (or why the backend could not run)."""
    options = backend_options(bench_settings())
    results: dict[Backend, float | str] = {}
    with tempfile.TemporaryDirectory() as directory:
        path = save_t5_small_sized(Path(directory) / "t5-small-random")
        for backend in BACKENDS:
            try:
                summarizer = T5Summarizer(
                    path, "cpu", batch_size=16, backend=backend, options=options
                )
            except Exception as error:
                results[backend] = f"not run: {type(error).__name__}: {error}"
                continue
            summarizer.summarize_many(texts[:16], max_length=4, min_length=4)  # warm-up
            started = time.perf_counter()
            summarizer.summarize_many(texts, max_length=new_tokens, min_length=new_tokens)
            results[backend] = len(texts) / (time.perf_counter() - started)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__)
    parser.add_argument("--raw-texts", type=int, default=1024)
    parser.add_argument("--t5-texts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--e2e-backend", choices=BACKENDS, help="default: the fastest fp32 backend at batch 64"
    )
    args = parser.parse_args()

    texts = [text(i) for i in range(args.raw_texts)]
    raw, cosines = raw_encode(texts)
    print("raw encode, texts/s       " + "".join(f"{f'batch {b}':>11}" for b in BATCHES), end="")
    print("   min cosine to torch")
    for backend in BACKENDS:
        figures = "".join(f"{raw[backend][b]:11.1f}" for b in BATCHES)
        print(f"  {backend:<23}{figures}   {cosines[backend]:.6f}")
        for b in BATCHES:
            record(f"raw encode, {backend}, batch {b}", raw[backend][b], "texts/s")
        record(f"min cosine of {backend} to torch", cosines[backend], digits=6)

    summaries = t5_rates(make_texts(args.t5_texts, 100), args.new_tokens)
    print(f"T5 (t5-small size, batch 16, {args.new_tokens} new tokens), summaries/s")
    for backend, figure in summaries.items():
        shown = f"{figure:8.2f}" if isinstance(figure, float) else figure
        print(f"  {backend:<23}{shown}")
        if isinstance(figure, float):
            record(f"T5 summaries, {backend}, batch 16", figure, "texts/s", digits=2)

    exact = [b for b in BACKENDS if b not in APPROXIMATE]
    fastest = args.e2e_backend or max(exact, key=lambda b: raw[b][64])
    settings = bench_settings()
    worker_env = {
        "INFERENCE_BACKEND": fastest,
        "EXPORT_CACHE_DIR": str(settings.export_cache_dir),
    }
    with (
        local_services(settings) as log_dir,
        running_stack(settings, log_dir, worker_env=worker_env) as stack,
    ):
        jobs_per_second, p50 = run_clients(
            stack,
            "/v1/jobs/embed",
            lambda i: {"texts": [text(i)], "store": True},
            args.jobs,
            args.clients,
        )
    torch_64 = raw["torch"][64]
    print(
        f"convoq 1-text jobs, {args.clients} clients, store, {fastest}: "
        f"{jobs_per_second:8.1f} texts/s (p50 submit→succeeded {p50 * 1000:.0f} ms)"
    )
    print(
        f"ratio end to end ({fastest}) ÷ raw torch encode at batch 64 ({torch_64:.1f}): "
        f"{jobs_per_second / torch_64:6.3f}  goal ≥ 2.0"
    )
    print(f"(min cosine of {fastest} to torch on the bench texts: {cosines[fastest]:.6f})")
    record(f"1-text jobs, {args.clients} clients, store, {fastest}", jobs_per_second, "texts/s")
    record(f"1-text jobs, {fastest}: p50 submit→succeeded", p50 * 1000, "ms", digits=0)
    record(
        f"ratio 1-text jobs ({fastest}) ÷ raw torch encode batch 64",
        jobs_per_second / torch_64,
        digits=3,
    )


if __name__ == "__main__":
    main()
