"""Search latency at 100k stored vectors, against the raw model plus raw Milvus.

    python -m bench.search [--vectors 100000] [--queries 200]

In one run, on this machine, with ``--vectors`` vectors of one tenant in
the memory collection:

1. raw: in process, ``encode`` the query (batch 1), then pymilvus search
   (top 10, the tenant's filter), sequentially;
2. convoq: ``POST /v1/search`` through gunicorn, the query embedded by the
   gpu worker over Celery (an RPC at high priority), then Milvus, sequentially.

It prints p50 and p95 of both and the ratio of the p50s. Not a test.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import requests
from pymilvus import MilvusClient

from bench.figures import record
from bench.stack import bench_settings, local_services, running_stack
from config import Settings
from vectorstore import MemoryKind, MemoryStore, memory_id

QUERIES = [
    "how do I reset my password",
    "my invoice shows the wrong address",
    "where is my parcel",
    "cancel my subscription",
    "the app crashes when I upload a photo",
    "can I change my delivery date",
    "refund for a damaged item",
    "how much does the annual plan cost",
]


def fill(settings: Settings, tenant: str, vectors: int, dimensions: int = 384) -> None:
    """``vectors`` random unit vectors for ``tenant``. Set-up, not measured: plain
    inserts, since Milvus Lite's upserts of this many rows take many minutes."""
    client = MilvusClient(settings.milvus_uri, timeout=300)
    rng = np.random.default_rng(0)
    batch = 5000
    for start in range(0, vectors, batch):
        block = rng.standard_normal((min(batch, vectors - start), dimensions)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        rows = [
            {
                "id": memory_id(tenant, "bench", start + i),
                "tenant": tenant,
                "user_id": f"user-{(start + i) % 100}",
                "conversation_id": "",
                "kind": MemoryKind.TEXT.value,
                "text": f"stored text {start + i}",
                "metadata": {},
                "vector": vector.tolist(),
            }
            for i, vector in enumerate(block)
        ]
        client.insert(settings.milvus_collection, rows, timeout=300)
    # Seal the segments so that they are indexed, as a long-running collection's are.
    client.flush(settings.milvus_collection, timeout=300)
    client.close()


def log_progress(message: str) -> None:
    print(message, flush=True)


def latencies(run: Callable[[str], object], queries: int) -> list[float]:
    for query in QUERIES:  # warm-up
        run(query)
    times = []
    for i in range(queries):
        started = time.perf_counter()
        run(QUERIES[i % len(QUERIES)])
        times.append(time.perf_counter() - started)
    return sorted(times)


def p(times: list[float], q: float) -> float:
    return times[min(len(times) - 1, int(q * len(times)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    settings = bench_settings()
    with local_services(settings) as log_dir, running_stack(settings, log_dir, cpu=False) as stack:
        started = time.perf_counter()
        fill(settings, stack.tenant_id, args.vectors)
        # Counting 100k rows takes Milvus Lite longer than a request may.
        store = MemoryStore(settings.milvus_uri, settings.milvus_collection, timeout=300)
        filled = time.perf_counter() - started
        assert store.count(stack.tenant_id) == args.vectors

        from inference.embedder import get_embedder

        embedder = get_embedder(None)

        log_progress(f"inserted {args.vectors} vectors in {filled:.0f} s")

        def raw(query: str) -> object:
            vector = embedder.encode([query], batch_size=1)[0]
            return store.search(stack.tenant_id, vector, top_k=10)

        session = requests.Session()
        session.headers.update(stack.headers)

        def convoq(query: str) -> object:
            response = session.post(f"{stack.base_url}/v1/search", json={"query": query})
            response.raise_for_status()
            return response.json()

        raw_times = latencies(raw, args.queries)
        convoq_times = latencies(convoq, args.queries)

    print(f"stored vectors: {args.vectors} (inserted in {filled:.1f} s)")
    for name, times in (
        ("raw encode + pymilvus search", raw_times),
        ("convoq POST /v1/search", convoq_times),
    ):
        print(f"{name:<30} p50 {p(times, 0.5):7.1f} ms   p95 {p(times, 0.95):7.1f} ms")
        record(f"{args.vectors} vectors, {name}: p50", p(times, 0.5), "ms")
        record(f"{args.vectors} vectors, {name}: p95", p(times, 0.95), "ms")
    ratio = statistics.median(convoq_times) / statistics.median(raw_times)
    print(f"ratio of p50s (convoq ÷ raw): {ratio:7.2f}   goal ≤ 1.5")
    record("ratio of p50s, convoq ÷ raw (goal ≤ 1.5)", ratio, digits=2)


if __name__ == "__main__":
    main()
