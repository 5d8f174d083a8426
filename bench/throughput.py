"""Embedding throughput end to end, against the model's own best, and its CPU per job.

    python -m bench.throughput [--clients 32] [--small-jobs 600] [--large-jobs 48]

In one run, on this machine:

1. raw ``encode`` of short texts in process, at batch 1, 16, 32, 64 and 128,
   with the backend the gpu worker runs (``INFERENCE_BACKEND``, ``auto`` by
   default: the choice it measured and cached); the best of these is the
   baseline;
2. convoq, ``--clients`` concurrent HTTP clients each submitting embed jobs
   with ``"store": true`` and ``Prefer: wait`` (one request per job): HTTP →
   row → queue → gpu worker (batched across jobs) → cpu worker → Milvus and
   PostgreSQL → done. Once with one-text jobs, once with 64-text jobs.

It prints texts/s, each ratio to the raw baseline, and the server's CPU per
job by process (bench/procstat.py). A benchmark, not a test.
"""

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.cost import SERVER_ROLES, roles
from bench.figures import record
from bench.procstat import CpuMeter, cpu_description
from bench.stack import bench_settings, local_services, run_clients, running_stack
from bench.texts import text


def raw_encode(batch_sizes: tuple[int, ...], texts: int) -> tuple[str, dict[int, float]]:
    """The backend the gpu worker runs, and texts per second through its ``encode`` at
    each batch size (the model alone)."""
    from inference.loaders import load_embedder

    embedder = load_embedder(bench_settings())
    sample = [text(i) for i in range(texts)]
    embedder.encode(sample[:64], batch_size=64)
    rates = {}
    for batch_size in batch_sizes:
        started = time.perf_counter()
        for start in range(0, texts, batch_size):
            embedder.encode(sample[start : start + batch_size], batch_size=batch_size)
        rates[batch_size] = texts / (time.perf_counter() - started)
    return embedder.info.backend, rates


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--small-jobs", type=int, default=600)
    parser.add_argument("--large-jobs", type=int, default=48)
    parser.add_argument("--raw-texts", type=int, default=1024)
    args = parser.parse_args()

    settings = bench_settings()
    with local_services(settings) as log_dir:
        backend, raw = raw_encode((1, 16, 32, 64, 128), args.raw_texts)
        with running_stack(settings, log_dir) as stack:
            meter = CpuMeter(roles(stack))
            small_cpu: list = []
            small, small_p50 = run_clients(
                stack,
                "/v1/jobs/embed",
                lambda i: {"texts": [text(i)], "store": True},
                args.small_jobs,
                args.clients,
                during=lambda: _measured(meter, small_cpu),
            )
            large_cpu: list = []
            large, large_p50 = run_clients(
                stack,
                "/v1/jobs/embed",
                lambda i: {"texts": [text(100_000 + 64 * i + k) for k in range(64)], "store": True},
                args.large_jobs,
                args.clients,
                during=lambda: _measured(meter, large_cpu),
            )

    best_batch, best = max(raw.items(), key=lambda item: item[1])
    print(cpu_description())
    for batch_size, rate in raw.items():
        print(f"raw encode ({backend}), batch {batch_size:>3}:          {rate:8.1f} texts/s")
        record(f"raw encode ({backend}), batch {batch_size}", rate, "texts/s")
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
    for label, reading, jobs in (
        ("1-text jobs", small_cpu[0], args.small_jobs),
        ("64-text jobs", large_cpu[0], args.large_jobs),
    ):
        server = sum(v for role, v in reading.seconds.items() if role in SERVER_ROLES)
        parts = ", ".join(
            f"{role} {reading.seconds[role] / jobs * 1000:.1f}" for role in SERVER_ROLES
        )
        print(f"CPU ms per job, {label}: server {server / jobs * 1000:.1f} ({parts})")
        record(f"CPU ms per job, {label}: server total", server / jobs * 1000, "ms")
    where = f"{args.clients} clients, store"
    record(f"1-text jobs, {where}", small, "texts/s")
    record(f"1-text jobs, {where}: p50 submit→succeeded", small_p50 * 1000, "ms", digits=0)
    record(f"64-text jobs, {where}", large * 64, "texts/s")
    record(f"64-text jobs, {where}: p50 submit→succeeded", large_p50 * 1000, "ms", digits=0)
    record(f"ratio 1-text jobs ÷ raw best, batch {best_batch} (goal ≥ 0.80)", small / best, "", 3)
    record(
        f"ratio 64-text jobs ÷ raw best, batch {best_batch} (goal ≥ 0.90)",
        large * 64 / best,
        digits=3,
    )


@contextmanager
def _measured(meter: CpuMeter, into: list) -> Iterator[None]:
    with meter.measure() as reading:
        yield
    into.append(reading)


if __name__ == "__main__":
    main()
