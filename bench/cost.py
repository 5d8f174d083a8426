"""The CPU cost of a one-text embed job, per process of the stack.

    python -m bench.cost [--jobs 400] [--clients 32] [--markdown]

Against the local stack (gunicorn API, solo gpu worker, prefork cpu worker,
PostgreSQL, Redis, Milvus Lite), ``--clients`` concurrent HTTP clients send
``--jobs`` one-text embed jobs (about twenty words, different for every job),
after a warm-up round of one job per client, in four modes:

1. polled, ``"store": false``: submit, then ``GET /v1/jobs/<id>`` with backoff
   (20 ms doubling to 500 ms) until the job has finished;
2. polled, ``"store": true`` (the vectors are also indexed in Milvus);
3. ``Prefer: wait=30`` on the submit, ``"store": false``: done in one request
   when the answer is ``200 succeeded``; on a ``202``, long polls
   ``GET /v1/jobs/<id>?wait=30``, and when that answers a non-final status at
   once (the server does not hold it), polls with backoff as in 1;
4. ``Prefer: wait=30``, ``"store": true``.

Around the timed part of each mode it reads from ``/proc`` the CPU seconds of
each role (bench/procstat.py): the API (gunicorn master and workers), each
worker pool, the whole PostgreSQL cluster (every ``postgres`` process, so
other users of the cluster count too), Redis, Milvus and the clients (this
process). It prints CPU ms per job for each, the server total (all but the
clients), the model's own CPU from the gpu worker's
``convoq_inference_cpu_seconds_total`` counter and the rest of the server
("outside the model"), and jobs/s and p50/p95 submit-to-finished latency. With
``--markdown`` it also prints the table as Markdown for the README.

Set ``MILVUS_URI`` to a free port (``http://127.0.0.1:19631``) to have the
benchmark start its own Milvus Lite there. It is a benchmark, not a test; CPU
per job is the figure to compare, throughput on a shared 2-core machine is
noisy.
"""

import argparse
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.figures import record
from bench.procstat import (
    CpuMeter,
    ProcessRole,
    cpu_description,
    descendants,
    listening_pid,
    pids_named,
)
from bench.stack import (
    FIRST_POLL_SECONDS,
    MAX_POLL_SECONDS,
    RunningStack,
    bench_settings,
    local_services,
    running_stack,
)
from bench.texts import text
from inference.model_cpu import SAMPLE_SECONDS as MODEL_SAMPLE_SECONDS

WAIT_SECONDS = 30
# A long poll answered with a non-final status sooner than this was not held.
NOT_HELD_SECONDS = 1.0
HTTP_TIMEOUT = WAIT_SECONDS + 15
MODEL_COUNTER = "convoq_inference_cpu_seconds_total"
FINAL = {"succeeded", "failed", "canceled"}

SERVER_ROLES = ("api", "gpu worker", "cpu worker", "postgresql", "redis", "milvus")
BENCH_DB_ROLE = "postgresql, bench db backends"
ROLE_LABELS = {
    "postgresql": "postgresql (whole cluster)",
    BENCH_DB_ROLE: "  of which convoq_bench backends (not in totals)",
}


@dataclass(frozen=True)
class Mode:
    name: str
    store: bool
    prefer_wait: bool


MODES = (
    Mode("polled", store=False, prefer_wait=False),
    Mode("polled, store", store=True, prefer_wait=False),
    Mode("wait=30", store=False, prefer_wait=True),
    Mode("wait=30, store", store=True, prefer_wait=True),
)


@dataclass(frozen=True)
class JobOutcome:
    seconds: float  # submit to finished
    requests: int  # HTTP requests it took
    wait_applied: bool  # the submit's answer had Preference-Applied
    backend: str | None


@dataclass
class ModeResult:
    mode: Mode
    jobs: int
    elapsed: float
    outcomes: list[JobOutcome]
    cpu: dict[str, float]  # CPU seconds per role over the timed part
    model: float | None  # the model's CPU seconds, None without the counter
    texts_per_pass: float | None  # mean texts per embedding forward pass

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.elapsed

    def latency(self, quantile: float) -> float:
        ordered = sorted(outcome.seconds for outcome in self.outcomes)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]

    @property
    def wait_applied(self) -> int:
        return sum(outcome.wait_applied for outcome in self.outcomes)

    @property
    def label(self) -> str:
        if self.mode.prefer_wait and self.wait_applied == 0:
            return f"{self.mode.name} (not applied: polled)"
        return self.mode.name

    def per_job_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.jobs

    @property
    def server(self) -> float:
        return sum(self.cpu[role] for role in SERVER_ROLES)


class Clients:
    """HTTP clients of one stack, one ``requests`` session per thread."""

    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack
        self._local = threading.local()

    def _http(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update(self.stack.headers)
        return self._local.session

    def _get(self, url: str, **params: Any) -> dict[str, Any]:
        response = self._http().get(url, params=params, timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        return response.json()

    def job(self, body: dict[str, Any], prefer_wait: bool) -> JobOutcome:
        """Submit one embed job and follow it to its end, as ``prefer_wait`` says."""
        started = time.perf_counter()
        headers = {"Prefer": f"wait={WAIT_SECONDS}"} if prefer_wait else {}
        response = self._http().post(
            f"{self.stack.base_url}/v1/jobs/embed", json=body, headers=headers, timeout=HTTP_TIMEOUT
        )
        response.raise_for_status()
        applied = "Preference-Applied" in response.headers
        job, sent = response.json(), 1
        location = response.headers.get("Location") or job["links"]["self"]
        url = self.stack.base_url + location
        if prefer_wait:
            while job["status"] not in FINAL:
                asked = time.perf_counter()
                job, sent = self._get(url, wait=WAIT_SECONDS), sent + 1
                if job["status"] not in FINAL and time.perf_counter() - asked < NOT_HELD_SECONDS:
                    break  # the server answered at once: it does not hold long polls
        delay = FIRST_POLL_SECONDS
        while job["status"] not in FINAL:
            time.sleep(delay)
            job, sent = self._get(url), sent + 1
            delay = min(delay * 2, MAX_POLL_SECONDS)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} ended {job['status']}: {job['error']}")
        backend = (job.get("result") or {}).get("backend")
        return JobOutcome(time.perf_counter() - started, sent, applied, backend)


def worker_counters(metrics_url: str) -> dict[str, float]:
    """The gpu worker's model CPU (``convoq_inference_cpu_seconds_total``) and its
    embedding forward passes and texts, each summed over its labels; a counter the
    worker does not have is missing."""
    body = requests.get(metrics_url, timeout=10).text
    wanted = {
        MODEL_COUNTER: "model",
        "convoq_inference_batch_size_count": "passes",
        "convoq_inference_batch_size_sum": "texts",
    }
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            name = wanted.get(sample.name)
            if name and sample.labels.get("operation", "embed") == "embed":
                found[name] = found.get(name, 0.0) + sample.value
    return found


def roles(stack: RunningStack) -> list[ProcessRole]:
    """The processes of the stack, by role; the clients are this process."""
    assert stack.api_pid is not None
    assert stack.gpu_worker is not None
    assert stack.cpu_worker is not None
    api, gpu, cpu = stack.api_pid, stack.gpu_worker.pid, stack.cpu_worker.pid
    redis_port = urlsplit(stack.settings.redis_url).port or 6379
    milvus_port = urlsplit(stack.settings.milvus_uri).port or 19530
    database = urlsplit(stack.settings.database_url).path.lstrip("/")

    def serving(port: int) -> Callable[[], set[int]]:
        return lambda: set().union(*map(descendants, listening_pid(port)))

    def bench_backends() -> set[int]:
        return {pid for pid in pids_named("postgres") if f" {database} " in _title(pid)}

    return [
        ProcessRole("api", lambda: descendants(api)),
        ProcessRole("gpu worker", lambda: descendants(gpu)),
        ProcessRole("cpu worker", lambda: descendants(cpu)),
        ProcessRole("postgresql", lambda: pids_named("postgres")),
        ProcessRole(BENCH_DB_ROLE, bench_backends),
        ProcessRole("redis", serving(redis_port)),
        ProcessRole("milvus", serving(milvus_port)),
        ProcessRole("clients", lambda: {os.getpid()}),
    ]


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_mode(
    stack: RunningStack, meter: CpuMeter, mode: Mode, first: int, jobs: int, clients: int
) -> ModeResult:
    """A warm-up round of one job per client, then ``jobs`` jobs measured; texts
    ``text(first)`` onwards, so no two jobs of the run embed the same text."""
    assert stack.gpu_worker is not None
    client = Clients(stack)

    def one(i: int) -> JobOutcome:
        return client.job({"texts": [text(i)], "store": mode.store}, mode.prefer_wait)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(first, first + clients)))
        # The model's CPU counter is brought up to date once a second: read it only once
        # the idle model's last sample is in, before and after.
        time.sleep(MODEL_SAMPLE_SECONDS + 0.3)
        before = worker_counters(stack.gpu_worker.metrics_url)
        with meter.measure() as reading:
            started = time.perf_counter()
            outcomes = list(pool.map(one, range(first + clients, first + clients + jobs)))
            elapsed = time.perf_counter() - started
        time.sleep(MODEL_SAMPLE_SECONDS + 0.3)
        after = worker_counters(stack.gpu_worker.metrics_url)
    delta = {name: after[name] - before[name] for name in after if name in before}
    model = delta.get("model")
    texts_per_pass = delta["texts"] / delta["passes"] if delta.get("passes") else None
    return ModeResult(mode, jobs, elapsed, outcomes, reading.seconds, model, texts_per_pass)


def table(results: list[ModeResult]) -> list[list[str]]:
    """Rows of cells: a header, then CPU ms per job by role, then rates and latencies."""

    def ms(value: float | None, result: ModeResult) -> str:
        return "n/a" if value is None else f"{result.per_job_ms(value):.1f}"

    rows = [["CPU ms per job", *(result.label for result in results)]]
    for role in (*SERVER_ROLES[:4], BENCH_DB_ROLE, *SERVER_ROLES[4:]):
        rows.append([ROLE_LABELS.get(role, role), *(ms(r.cpu[role], r) for r in results)])
    rows.append(["**server total**", *(ms(r.server, r) for r in results)])
    rows.append(["model (inference metrics)", *(ms(r.model, r) for r in results)])
    outside = [None if r.model is None else r.server - r.model for r in results]
    rows.append(["outside the model", *(ms(o, r) for o, r in zip(outside, results, strict=True))])
    rows.append(["clients", *(ms(r.cpu["clients"], r) for r in results)])
    rows.append(["texts per forward pass (mean)", *(
        "n/a" if r.texts_per_pass is None else f"{r.texts_per_pass:.1f}" for r in results
    )])  # fmt: skip
    rows.append(["jobs/s", *(f"{r.jobs_per_second:.1f}" for r in results)])
    rows.append(["p50 / p95 latency, ms", *(
        f"{r.latency(0.5) * 1000:.0f} / {r.latency(0.95) * 1000:.0f}" for r in results
    )])  # fmt: skip
    rows.append(["HTTP requests per job", *(
        f"{sum(o.requests for o in r.outcomes) / r.jobs:.1f}" for r in results
    )])  # fmt: skip
    rows.append(["Preference-Applied on submits", *(
        f"{r.wait_applied}/{r.jobs}" if r.mode.prefer_wait else "-" for r in results
    )])  # fmt: skip
    return rows


def record_figures(results: list[ModeResult], clients: int) -> None:
    """The report's rows: CPU ms per job by process, the rate and the latencies, per mode
    (numbered when a mode ran more than once)."""
    seen: dict[str, int] = {}
    for result in results:
        seen[result.label] = seen.get(result.label, 0) + 1
        run = f" (run {seen[result.label]})" if seen[result.label] > 1 else ""
        where = f"{result.label}{run}, {clients} clients"
        for role in SERVER_ROLES:
            record(f"{where}: CPU ms per job, {role}", result.per_job_ms(result.cpu[role]), "ms")
        record(f"{where}: CPU ms per job, server total", result.per_job_ms(result.server), "ms")
        if result.model is not None:
            record(f"{where}: CPU ms per job, model", result.per_job_ms(result.model), "ms")
        record(f"{where}: jobs/s", result.jobs_per_second, "jobs/s")
        record(f"{where}: p50 latency", result.latency(0.5) * 1000, "ms", digits=0)
        record(f"{where}: p95 latency", result.latency(0.95) * 1000, "ms", digits=0)


def plain(rows: list[list[str]]) -> str:
    widths = [max(len(row[i].strip("*")) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].strip("*").ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" + "|---:" * (len(rows[0]) - 1) + "|"]
    lines += ["| " + " | ".join(cell.strip() for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=[mode.name for mode in MODES],
        default=[mode.name for mode in MODES],
        help="run only these modes",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each mode this many times, one after another"
    )
    args = parser.parse_args()
    modes = [mode for mode in MODES if mode.name in args.modes] * args.repeat

    settings = bench_settings()
    results = []
    with local_services(settings) as log_dir, running_stack(settings, log_dir) as stack:
        meter = CpuMeter(roles(stack))
        for index, mode in enumerate(modes):
            first = index * (args.jobs + args.clients)
            results.append(run_mode(stack, meter, mode, first, args.jobs, args.clients))
            print(f"{mode.name}: done", flush=True)

    backends = {o.backend for r in results for o in r.outcomes if o.backend is not None}
    print(f"CPU: {cpu_description()}")
    print(f"gpu worker backend: {', '.join(sorted(backends)) or 'unknown'}")
    print(
        f"{args.jobs} one-text embed jobs per mode, {args.clients} clients, after a warm-up "
        f"round; CPU from /proc over the timed part; postgresql is the whole cluster"
    )
    for result in results:
        if result.mode.prefer_wait:
            applied = result.wait_applied
            verdict = "applied" if applied else "NOT applied: the clients fell back to polling"
            print(f"{result.mode.name}: Prefer: wait={WAIT_SECONDS} {verdict} "
                  f"(Preference-Applied on {applied}/{result.jobs} submits)")  # fmt: skip
    if any(result.model is None for result in results):
        print(f"model: the gpu worker has no {MODEL_COUNTER} counter (n/a)")
    rows = table(results)
    record_figures(results, args.clients)
    print()
    print(plain(rows))
    if args.markdown:
        print()
        print(markdown(rows))


if __name__ == "__main__":
    main()
