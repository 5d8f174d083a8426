"""Interactive requests behind bulk work: search latency and another tenant's small job.

    python -m bench.interactive [--jobs 10] [--texts 256] [--markdown]

Against the local stack, in one run:

1. **idle**: ``POST /v1/search`` one after another, nothing else running
   (the baseline p50/p95);
2. **backlog**: tenant A submits ``--jobs`` embed jobs of ``--texts`` texts
   each (about twenty words per text) at once; while they run, a client sends
   searches back to back, and half a second after the backlog was submitted
   tenant B submits one one-text embed job and follows it to ``succeeded``
   (``Prefer: wait``).

It prints search p50/p95/max in both phases, B's submit→succeeded time, how
long A's backlog took to drain, and the CPU per text embedded of every process of
the path over the backlog phase (bench/procstat.py). Goals (issue 11): search p95
≤ 500 ms during the backlog, B's job ≤ 2 s. A benchmark, not a test.
"""

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.cost import markdown, plain, roles
from bench.figures import record
from bench.procstat import CpuMeter, cpu_description
from bench.stack import RunningStack, bench_settings, local_services, running_stack
from bench.texts import text
from services.tenants import create_api_key

QUERY = {"query": "when is the meeting about the river bank", "top_k": 5}
TIMEOUT = 120


def search_latencies(stack: RunningStack, until: threading.Event, minimum: int) -> list[float]:
    """Searches one after another: at least ``minimum``, and on until ``until`` is set."""
    session = requests.Session()
    session.headers.update(stack.headers)
    latencies: list[float] = []
    while not until.is_set() or len(latencies) < minimum:
        started = time.perf_counter()
        response = session.post(f"{stack.base_url}/v1/search", json=QUERY, timeout=TIMEOUT)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"search answered {response.status_code}: {response.text}")
    return latencies


def wait_for(stack: RunningStack, headers: dict[str, str], job: dict[str, Any]) -> dict[str, Any]:
    url = f"{stack.base_url}/v1/jobs/{job['id']}"
    while job["status"] not in {"succeeded", "failed", "canceled"}:
        job = requests.get(url, params={"wait": 30}, headers=headers, timeout=TIMEOUT).json()
    return job


def submit(stack: RunningStack, headers: dict[str, str], texts: list[str]) -> dict[str, Any]:
    response = requests.post(
        f"{stack.base_url}/v1/jobs/embed",
        json={"texts": texts},
        headers={**headers, "Prefer": "wait=30"},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response.json()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.interactive", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--idle-searches", type=int, default=30)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    settings = bench_settings()
    with local_services(settings) as log_dir, running_stack(settings, log_dir) as stack:
        _, key_b = create_api_key(settings.database_url, "bench-b", actor="bench")
        tenant_b = {"Authorization": f"Bearer {key_b}"}
        meter = CpuMeter(roles(stack))
        # Warm-up, and something to search.
        wait_for(stack, stack.headers, submit(stack, stack.headers, [text(i) for i in range(8)]))
        nothing_to_wait_for = threading.Event()
        nothing_to_wait_for.set()
        idle = search_latencies(stack, nothing_to_wait_for, args.idle_searches)

        drained = threading.Event()
        with meter.measure() as reading, ThreadPoolExecutor(args.jobs + 2) as pool:
            started = time.perf_counter()
            backlog = [
                pool.submit(
                    lambda j: wait_for(
                        stack,
                        stack.headers,
                        submit(
                            stack,
                            stack.headers,
                            [text(10_000 + j * args.texts + i) for i in range(args.texts)],
                        ),
                    ),
                    j,
                )
                for j in range(args.jobs)
            ]
            searches = pool.submit(search_latencies, stack, drained, 5)
            time.sleep(0.5)
            b_started = time.perf_counter()
            b_job = wait_for(stack, tenant_b, submit(stack, tenant_b, ["tenant b's one text"]))
            b_seconds = time.perf_counter() - b_started
            for job in backlog:
                assert job.result()["status"] == "succeeded"
            drain_seconds = time.perf_counter() - started
            drained.set()
            busy = searches.result()
        assert b_job["status"] == "succeeded", b_job

    jobs = args.jobs + 1 + len(busy)
    rows = [
        ["figure", "value", "goal"],
        ["search p50 / p95 idle, ms", f"{quantile(idle, 0.5) * 1e3:.0f} / "
         f"{quantile(idle, 0.95) * 1e3:.0f}", ""],
        ["search p50 / p95 / max during the backlog, ms",
         f"{quantile(busy, 0.5) * 1e3:.0f} / {quantile(busy, 0.95) * 1e3:.0f} / "
         f"{max(busy) * 1e3:.0f} ({len(busy)} searches)", "p95 ≤ 500"],
        ["tenant B's one-text job behind the backlog, submit → succeeded, s",
         f"{b_seconds:.2f}", "≤ 2"],
        [f"tenant A's backlog ({args.jobs} x {args.texts} texts) drained in, s",
         f"{drain_seconds:.1f}", ""],
        ["texts/s of the backlog", f"{args.jobs * args.texts / drain_seconds:.0f}", ""],
    ]  # fmt: skip
    texts = args.jobs * args.texts + 1 + len(busy)
    for role, seconds in reading.seconds.items():
        rows.append(
            [f"CPU ms per text embedded in the phase: {role}", f"{seconds / texts * 1e3:.2f}", ""]
        )
    rows.append(["requests in the backlog phase (jobs and searches)", str(jobs), ""])
    record("search p50 idle", quantile(idle, 0.5) * 1e3, "ms", digits=0)
    record("search p95 idle", quantile(idle, 0.95) * 1e3, "ms", digits=0)
    record("search p50 during a bulk backlog", quantile(busy, 0.5) * 1e3, "ms", digits=0)
    record("search p95 during a bulk backlog (goal ≤ 500)", quantile(busy, 0.95) * 1e3, "ms", 0)
    record("another tenant's one-text job behind the backlog (goal ≤ 2)", b_seconds, "s", 2)
    record(f"backlog of {args.jobs} x {args.texts} texts drained in", drain_seconds, "s")
    record("texts/s of the backlog", args.jobs * args.texts / drain_seconds, "texts/s", 0)
    for role, seconds in reading.seconds.items():
        record(f"CPU ms per text embedded in the backlog: {role}", seconds / texts * 1e3, "ms", 2)
    print(cpu_description())
    print(f"idle search mean {statistics.mean(idle) * 1e3:.0f} ms")
    print(plain(rows))
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
