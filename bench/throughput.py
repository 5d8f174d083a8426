"""Embedding throughput end to end, against the model's own best.

    python -m bench.throughput [--clients 32] [--small-jobs 600] [--large-jobs 48]

In one run, on this machine:

1. raw ``encode`` of short texts in process, at batch 1, 16, 32, 64 and 128;
   the best of these is the baseline;
2. convoq, ``--clients`` concurrent HTTP clients each submitting embed jobs
   with ``"store": true`` and polling each to ``succeeded`` (with backoff):
   HTTP → row → queue → gpu worker (batched across jobs) → cpu worker →
   Milvus and PostgreSQL → done. Once with one-text jobs, once with 64-text
   jobs.

It prints texts/s and each ratio to the raw baseline. A benchmark, not a test.
"""

import argparse
import time

from bench.stack import bench_settings, local_services, run_clients, running_stack

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "near",
    "the",
    "river",
    "bank",
    "at",
    "dawn",
]


def text(i: int) -> str:
    """About twenty words, different for every i."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(18)) + f" number {i}"


def raw_encode(batch_sizes: tuple[int, ...], texts: int) -> dict[int, float]:
    """Texts per second through ``encode`` at each batch size (the model alone)."""
    from inference.embedder import get_embedder

    embedder = get_embedder(None)
    sample = [text(i) for i in range(texts)]
    embedder.encode(sample[:64], batch_size=64)
    rates = {}
    for batch_size in batch_sizes:
        started = time.perf_counter()
        for start in range(0, texts, batch_size):
            embedder.encode(sample[start : start + batch_size], batch_size=batch_size)
        rates[batch_size] = texts / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--small-jobs", type=int, default=600)
    parser.add_argument("--large-jobs", type=int, default=48)
    parser.add_argument("--raw-texts", type=int, default=1024)
    args = parser.parse_args()

    settings = bench_settings()
    with local_services(settings) as log_dir:
        raw = raw_encode((1, 16, 32, 64, 128), args.raw_texts)
        with running_stack(settings, log_dir) as stack:
            small, small_p50 = run_clients(
                stack,
                "/v1/jobs/embed",
                lambda i: {"texts": [text(i)], "store": True},
                args.small_jobs,
                args.clients,
            )
            large, large_p50 = run_clients(
                stack,
                "/v1/jobs/embed",
                lambda i: {"texts": [text(64 * i + k) for k in range(64)], "store": True},
                args.large_jobs,
                args.clients,
            )

    best_batch, best = max(raw.items(), key=lambda item: item[1])
    for batch_size, rate in raw.items():
        print(f"raw encode, batch {batch_size:>3}:                {rate:8.1f} texts/s")
    print(
        f"convoq 1-text jobs, {args.clients} clients, store:  {small:8.1f} texts/s"
        f"   (p50 submit→succeeded {small_p50 * 1000:.0f} ms)"
    )
    print(
        f"convoq 64-text jobs, {args.clients} clients, store: {large * 64:8.1f} texts/s"
        f"   (p50 submit→succeeded {large_p50 * 1000:.0f} ms)"
    )
    print(f"ratio 1-text jobs ÷ raw best (batch {best_batch}):  {small / best:8.3f}  goal ≥ 0.80")
    print(
        f"ratio 64-text jobs ÷ raw best (batch {best_batch}): {large * 64 / best:8.3f}  goal ≥ 0.90"
    )


if __name__ == "__main__":
    main()
