"""convoq against the peer embedding server infinity-emb, on this machine, one server at a time.

    python -m bench.peers [--clients 32] [--small-requests 1000] [--large-requests 64]
                          [--skip-install] [--markdown]

In one run:

1. infinity-emb 0.0.78 is installed into a virtualenv of its own,
   ``.devstack/peers/infinity-venv`` (timed; made once and reused after);
2. ``model.onnx`` is exported for its ONNX engine into a copy of the MiniLM
   directory, ``.devstack/peers/minilm-onnx``;
3. each infinity engine (``torch``, ``optimum``) is started alone, its vectors
   are checked against sentence-transformers ``encode`` in our venv (min
   cosine ≥ 0.999), the workloads run and it is stopped;
4. convoq (gunicorn, gpu worker, cpu worker) is started and the same
   workloads run against ``POST /v1/embeddings`` and against embed jobs,
   ``POST /v1/jobs/embed`` with ``Prefer: wait=30`` (a 202 is followed by
   ``?wait=30`` long polls, or by polling with backoff if those do not wait);
   a target that answers 404 is skipped.

Workloads, the same for every server: ``--clients`` concurrent clients, each
with its own keep-alive session, after a warm-up round of one request per
client; (a) one ~20-word text per request, ``--small-requests`` requests;
(b) 64 texts per request, ``--large-requests`` requests. No two requests
carry the same text.

It prints the CPU, the versions and, per workload, texts/s, p50 and p95
request latency and CPU seconds per 1,000 texts (the server's process tree,
this client process, and PostgreSQL and Redis, which are shared), with each
row's ratios to infinity's best engine. A benchmark, not a test.
"""

import argparse
import importlib.metadata
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

from bench import infinity
from bench.figures import record
from bench.procstat import CpuMeter, ProcessRole, cpu_description, descendants, pids_named
from bench.stack import FIRST_POLL_SECONDS, MAX_POLL_SECONDS, RunningStack
from bench.texts import text
from tests.support import FINISHED

MIN_COSINE = 0.999
JOB_WAIT_SECONDS = 30
REQUEST_TIMEOUT = 120
LOG_DIR = infinity.PEERS_DIR / "logs"
CONVOQ_TARGETS = ("convoq-embeddings", "convoq-jobs")
TARGETS = tuple(f"infinity-{engine}" for engine in infinity.ENGINES) + CONVOQ_TARGETS


class NotAvailable(Exception):
    """The target's endpoint answered 404: it does not exist (yet)."""


@dataclass(frozen=True)
class Workload:
    name: str
    texts_per_request: int
    requests: int
    first_text: int  # workloads use disjoint ranges of texts: no server sees a text twice

    def texts(self, request: int) -> list[str]:
        """The texts of request number ``request`` (negative for the warm-up round)."""
        n = self.texts_per_request
        return [text(self.first_text + n * request + k) for k in range(n)]


@dataclass
class Target:
    """Something that embeds texts over HTTP, and the processes that serve it."""

    name: str
    send: Callable[[requests.Session, list[str]], None]  # raises unless all were embedded
    server_roles: list[ProcessRole]  # summed into the server's CPU
    headers: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # how its requests went, if told


@dataclass
class Result:
    target: str
    texts: int
    seconds: float
    p50: float
    p95: float
    cpu: dict[str, float]  # seconds per role over the timed part, "client" included
    server_parts: list[str]
    note: str = ""

    @property
    def rate(self) -> float:
        return self.texts / self.seconds

    def per_1000(self, *roles: str) -> float:
        return sum(self.cpu[role] for role in roles) * 1000 / self.texts

    @property
    def server_cpu(self) -> float:
        return self.per_1000(*self.server_parts)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def shared_roles() -> list[ProcessRole]:
    """PostgreSQL and Redis: shared system services, reported on their own."""
    return [
        ProcessRole("postgres", lambda: pids_named("postgres")),
        ProcessRole("redis", lambda: pids_named("redis-server")),
    ]


def run_workload(target: Target, workload: Workload, clients: int) -> Result:
    """``workload.requests`` requests from ``clients`` threads, after one warm-up per client."""
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(target.headers)
        return local.session

    def one(request: int) -> float:
        started = time.perf_counter()
        target.send(session(), workload.texts(request))
        return time.perf_counter() - started

    meter = CpuMeter([*target.server_roles, *shared_roles()])
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(-clients, 0)))  # warm-up: texts the timed part never sends
        target.counts.clear()
        with meter.measure() as reading:
            client_started = time.process_time()
            started = time.perf_counter()
            latencies = sorted(pool.map(one, range(workload.requests)))
            seconds = time.perf_counter() - started
            client = time.process_time() - client_started
    return Result(
        target=target.name,
        texts=workload.requests * workload.texts_per_request,
        seconds=seconds,
        p50=percentile(latencies, 0.50),
        p95=percentile(latencies, 0.95),
        cpu={**reading.seconds, "client": client},
        server_parts=[role.name for role in target.server_roles],
        note=", ".join(f"{what} {n}" for what, n in sorted(target.counts.items())),
    )


@dataclass(frozen=True)
class Fidelity:
    """Cosines to sentence-transformers ``encode``: the least over texts within the model's
    256 tokens, and that of one text past them (where truncation lengths may differ)."""

    short: float
    long: float

    def __str__(self) -> str:
        verdict = "" if self.short >= MIN_COSINE else f" BELOW {MIN_COSINE}"
        return f"min {self.short:.6f}{verdict} (a text past 256 tokens: {self.long:.4f})"


SHORT_TEXTS = [
    *(text(-(10**7) + i) for i in range(24)),
    "Hi",
    "How do I reset my password?",
    "The invoice is due on Friday; please confirm that the payment went through.",
    " ".join(f"sentence {i} of a longer message about the weather." for i in range(20)),
]
LONG_TEXT = " ".join(
    f"word{i} of a rather long message about nothing in particular" for i in range(30)
)
FIDELITY_TEXTS = [*SHORT_TEXTS, LONG_TEXT]


def fidelity(reference: np.ndarray, vectors: Sequence[Sequence[float]]) -> Fidelity:
    """``vectors`` of :data:`FIDELITY_TEXTS` against ``reference`` (normalized)."""
    got = np.asarray(vectors, dtype=np.float64)
    if got.shape != reference.shape:
        raise RuntimeError(f"{got.shape[0]} vectors of {got.shape[1:]}, not {reference.shape}")
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cosines = (got * reference).sum(axis=1)
    return Fidelity(short=float(cosines[:-1].min()), long=float(cosines[-1]))


def reference_vectors(model_dir: Path) -> np.ndarray:
    """sentence-transformers ``encode`` of :data:`FIDELITY_TEXTS` in our venv, normalized."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(FIDELITY_TEXTS, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float64)


# --- convoq's two targets ---------------------------------------------------------------


def openai_send(url: str) -> Callable[[requests.Session, list[str]], None]:
    """POST ``{"input": texts, "model": ...}`` to an OpenAI-compatible embeddings URL."""

    def send(session: requests.Session, texts: list[str]) -> None:
        embeddings(session, url, texts)

    return send


def embeddings(session: requests.Session, url: str, texts: list[str]) -> list[list[float]]:
    response = session.post(
        url, json={"input": texts, "model": infinity.SERVED_MODEL}, timeout=REQUEST_TIMEOUT
    )
    if response.status_code == 404:
        raise NotAvailable(f"{url}: not available (404)")
    response.raise_for_status()
    data = sorted(response.json()["data"], key=lambda item: item["index"])
    if len(data) != len(texts):
        raise RuntimeError(f"{url}: {len(data)} vectors for {len(texts)} texts")
    return [item["embedding"] for item in data]


class EmbedJobs:
    """Embed jobs: submit with ``Prefer: wait``, then long-poll, then poll with backoff."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.long_polls_wait = True  # until one comes back at once with nothing new
        self.counts: Counter[str] = Counter()  # submit 200 / submit 202 / long poll / short poll
        self._lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def run(self, session: requests.Session, texts: list[str]) -> dict[str, Any]:
        """The finished job, once it has succeeded."""
        response = session.post(
            f"{self.base_url}/v1/jobs/embed",
            json={"texts": texts},
            headers={"Prefer": f"wait={JOB_WAIT_SECONDS}"},
            timeout=JOB_WAIT_SECONDS + REQUEST_TIMEOUT,
        )
        if response.status_code == 404:
            raise NotAvailable("POST /v1/jobs/embed: not available (404)")
        response.raise_for_status()
        job = response.json()
        self._count(f"submit {response.status_code}")
        if job["status"] not in FINISHED:  # 202, or a wait that ran out
            url = self.base_url + response.headers.get("Location", job["links"]["self"])
            job = self._wait(session, url, job)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
        count = (job.get("result") or {}).get("count")
        if count is not None and count != len(texts):
            raise RuntimeError(f"job {job['id']}: {count} vectors for {len(texts)} texts")
        return job

    def send(self, session: requests.Session, texts: list[str]) -> None:
        self.run(session, texts)

    def _wait(self, session: requests.Session, url: str, job: dict[str, Any]) -> dict[str, Any]:
        while self.long_polls_wait and job["status"] not in FINISHED:
            started = time.perf_counter()
            response = session.get(
                url, params={"wait": JOB_WAIT_SECONDS}, timeout=JOB_WAIT_SECONDS + 30
            )
            self._count("long poll")
            if response.status_code in {400, 422}:  # the API does not know ?wait
                self.long_polls_wait = False
                break
            response.raise_for_status()
            before, job = job, response.json()
            unchanged = (job["status"], job.get("progress")) == (
                before["status"],
                before.get("progress"),
            )
            if unchanged and time.perf_counter() - started < 1:
                self.long_polls_wait = False  # back at once with nothing new: it does not wait
        delay = FIRST_POLL_SECONDS
        while job["status"] not in FINISHED:
            time.sleep(delay)
            response = session.get(url, timeout=REQUEST_TIMEOUT)
            self._count("short poll")
            response.raise_for_status()
            job = response.json()
            delay = min(delay * 2, MAX_POLL_SECONDS)
        return job


def children_with(*words: str) -> set[int]:
    """The process trees of this process's children whose command line has all ``words``."""
    found: set[int] = set()
    for child in psutil.Process().children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if all(word in cmdline or any(word in part for part in cmdline) for word in words):
            found |= descendants(child.pid)
    return found


def convoq_roles(stack: RunningStack) -> list[ProcessRole]:
    """gunicorn and both worker pools, each with its process tree.

    From the pids ``running_stack`` gives, else found among this process's children.
    """
    api_pid = getattr(stack, "api_pid", None)
    workers = {pool: getattr(stack, f"{pool}_worker", None) for pool in ("gpu", "cpu")}

    def pool(name: str) -> Callable[[], set[int]]:
        worker = workers[name]
        if worker is not None and worker.process is not None:
            return lambda: descendants(worker.pid)
        return lambda: children_with("worker", "--queues", name)

    return [
        ProcessRole(
            "api",
            (lambda: descendants(api_pid)) if api_pid else (lambda: children_with("gunicorn")),
        ),
        ProcessRole("gpu worker", pool("gpu")),
        ProcessRole("cpu worker", pool("cpu")),
    ]


def convoq_targets(
    stack: RunningStack, names: Sequence[str], reference: np.ndarray, failures: list[str]
) -> Iterator[tuple[Target, Fidelity | None, str]]:
    """The convoq targets that exist and answer, each with its cosines (or None) and a note;
    those whose first request failed otherwise than with a 404 go to ``failures``."""
    session = requests.Session()
    session.headers.update(stack.headers)
    if "convoq-embeddings" in names:
        url = f"{stack.base_url}/v1/embeddings"
        try:
            cosine = fidelity(reference, embeddings(session, url, FIDELITY_TEXTS))
        except NotAvailable:
            print("convoq POST /v1/embeddings: not available (404), skipped", flush=True)
        except Exception as error:
            failures.append(f"convoq /v1/embeddings, first request: {brief(error)}")
            print(f"convoq POST /v1/embeddings: failed: {error}", flush=True)
        else:
            yield (
                Target(
                    "convoq /v1/embeddings", openai_send(url), convoq_roles(stack), stack.headers
                ),
                cosine,
                "",
            )
    if "convoq-jobs" in names:
        try:
            jobs = EmbedJobs(stack.base_url)  # the probe tells it whether long polls wait
            job = jobs.run(session, FIDELITY_TEXTS)
        except NotAvailable:
            print("convoq POST /v1/jobs/embed: not available (404), skipped", flush=True)
        except Exception as error:
            failures.append(f"convoq embed jobs, first job: {brief(error)}")
            print(f"convoq POST /v1/jobs/embed: failed: {error}", flush=True)
        else:
            result = job.get("result") or {}
            vectors = result.get("vectors")
            cosine = fidelity(reference, vectors) if vectors is not None else None
            target = Target(
                "convoq embed jobs", jobs.send, convoq_roles(stack), stack.headers, jobs.counts
            )
            yield target, cosine, f"inference backend {result.get('backend', '?')}"


# --- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    workloads: list[Workload]
    clients: int
    results: dict[str, list[Result]] = field(default_factory=dict)  # by workload name
    fidelity: dict[str, Fidelity | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def measure(self, target: Target) -> None:
        for workload in self.workloads:
            print(f"  {target.name}: {workload.name} ...", flush=True)
            try:
                result = run_workload(target, workload, self.clients)
            except Exception as error:  # a benchmark goes on with the other targets
                self.failures.append(f"{target.name}, {workload.name}: {brief(error)}")
                print(f"  {target.name}: {workload.name} failed: {error}", flush=True)
                continue
            self.results.setdefault(workload.name, []).append(result)
            print(
                f"  {target.name}: {result.rate:.1f} texts/s, p50 {result.p50 * 1000:.0f} ms, "
                f"server CPU {result.server_cpu:.2f} s/1k texts",
                flush=True,
            )


def run_peers(run: Run, engines: Sequence[str], reference: np.ndarray, model_dir: Path) -> None:
    for engine in engines:
        directory = infinity.onnx_model_dir(model_dir) if engine == "optimum" else model_dir
        name = f"infinity {engine}"
        print(f"{name}: starting", flush=True)
        started = time.perf_counter()
        try:
            with infinity.running_peer(engine, directory, LOG_DIR) as peer:
                run.notes[name] = f"answered {time.perf_counter() - started:.0f} s after start"
                run.fidelity[name] = cosine = fidelity(reference, peer.embed(FIDELITY_TEXTS))
                print(f"{name}: cosine to sentence-transformers: {cosine}", flush=True)
                run.measure(
                    Target(
                        name,
                        openai_send(f"{peer.base_url}/embeddings"),
                        [ProcessRole("infinity", lambda pid=peer.pid: descendants(pid))],
                    )
                )
        except Exception as error:
            run.failures.append(f"{name}: {brief(error)}")
            print(f"{name}: failed: {error}", flush=True)


def run_convoq(run: Run, names: Sequence[str], reference: np.ndarray) -> None:
    from bench.stack import bench_settings, local_services, running_stack

    print("convoq: starting the stack", flush=True)
    settings = bench_settings()
    with local_services(settings) as log_dir, running_stack(settings, log_dir) as stack:
        for target, cosine, note in convoq_targets(stack, names, reference, run.failures):
            run.fidelity[target.name] = cosine
            if note:
                run.notes[target.name] = note
            run.measure(target)


# --- output -------------------------------------------------------------------------------

COLUMNS = (
    "server",
    "texts/s",
    "p50 ms",
    "p95 ms",
    "server CPU s/1k texts",
    "client CPU s/1k",
    "PostgreSQL s/1k",
    "Redis s/1k",
    "texts/s ÷ best peer",
    "server CPU ÷ best peer",
)


def table_rows(results: list[Result]) -> list[list[str]]:
    peers = [r for r in results if r.target.startswith("infinity")]
    best = max(peers, key=lambda r: r.rate) if peers else None
    rows = []
    for r in results:
        rows.append(
            [
                r.target + (" (best peer)" if r is best else ""),
                f"{r.rate:,.1f}",
                f"{r.p50 * 1000:,.0f}",
                f"{r.p95 * 1000:,.0f}",
                f"{r.server_cpu:.2f}",
                f"{r.per_1000('client'):.2f}",
                f"{r.per_1000('postgres'):.2f}",
                f"{r.per_1000('redis'):.2f}",
                f"{r.rate / best.rate:.2f}" if best else "-",
                f"{r.server_cpu / best.server_cpu:.2f}" if best and best.server_cpu else "-",
            ]
        )
    return rows


def record_figures(workload: Workload, results: list[Result]) -> None:
    """The report's rows for one workload: rate, latencies and server CPU per target,
    and convoq's ratios to the best peer."""
    peers = [r for r in results if r.target.startswith("infinity")]
    best = max(peers, key=lambda r: r.rate) if peers else None
    for r in results:
        where = f"{workload.name}, {r.target}"
        record(f"{where}: texts/s", r.rate, "texts/s")
        record(f"{where}: p50", r.p50 * 1000, "ms", digits=0)
        record(f"{where}: p95", r.p95 * 1000, "ms", digits=0)
        record(f"{where}: server CPU per 1k texts", r.server_cpu, "s", digits=2)
        if best and r is not best:
            record(f"{where}: texts/s ÷ best peer", r.rate / best.rate, digits=2)
            if best.server_cpu:
                record(f"{where}: server CPU ÷ best peer", r.server_cpu / best.server_cpu, digits=2)


def format_table(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
        return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])
    widths = [max(len(row[i]) for row in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    lines = []
    for row in [list(COLUMNS), *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def brief(error: BaseException) -> str:
    """An error in one line: its type and the last line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]


def report(run: Run, install: infinity.Install, markdown: bool) -> None:
    item, sub = ("- ", "  - ") if markdown else ("", "  ")
    peer = install.versions
    took = "" if install.seconds is None else f" in {install.seconds:.0f} s"
    installed = f"reused, installed earlier{took}" if install.reused else f"installed now{took}"
    print()
    print(f"{item}CPU: {cpu_description()}")
    print(
        f"{item}infinity-emb {peer['infinity-emb']} ({installed}; "
        f"{infinity.shown(infinity.VENV)}): torch {peer['torch']}, sentence-transformers "
        f"{peer['sentence-transformers']}, transformers {peer['transformers']}, "
        f"optimum {peer['optimum']}, onnxruntime {peer['onnxruntime']}"
    )
    print(
        f"{item}convoq (.venv): torch {version('torch')}, sentence-transformers "
        f"{version('sentence-transformers')}, transformers {version('transformers')}"
    )
    print(f"{item}cosine to sentence-transformers encode (normalized) in our venv:")
    for name, cosine in run.fidelity.items():
        print(f"{sub}{name}: {'not checked' if cosine is None else cosine}")
    for name, note in run.notes.items():
        print(f"{item}{name}: {note}")
    for workload in run.workloads:
        results = run.results.get(workload.name, [])
        print()
        heading = (
            f"{workload.name}: {run.clients} clients, {workload.texts_per_request} text"
            f"{'s' if workload.texts_per_request > 1 else ''} per request, "
            f"{workload.requests:,} requests after {run.clients} warm-up"
        )
        print(f"### {heading}\n" if markdown else heading)
        if not results:
            print("(no results)")
            continue
        print(format_table(table_rows(results), markdown))
        record_figures(workload, results)
        if markdown:
            print()
        for r in results:
            parts = [p for p in r.server_parts if len(r.server_parts) > 1]
            split = ", ".join(f"{p} {r.per_1000(p):.2f}" for p in parts)
            details = "; ".join(
                x for x in (f"server CPU s/1k: {split}" if split else "", r.note) if x
            )
            if details:
                print(f"{item or '  '}{r.target}: {details}")
    if run.failures:
        print()
    for failure in run.failures:
        print(f"{item}FAILED: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--small-requests", type=int, default=1000, help="one-text requests")
    parser.add_argument("--large-requests", type=int, default=64, help="64-text requests")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--skip-install", action="store_true", help="use the peer venv as is")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()

    install = infinity.ensure_installed(skip_install=args.skip_install)
    model_dir = infinity.default_model_dir()
    reference = reference_vectors(model_dir)
    run = Run(
        workloads=[
            Workload("(a) one text per request", 1, args.small_requests, first_text=0),
            Workload("(b) 64 texts per request", 64, args.large_requests, first_text=10**7),
        ],
        clients=args.clients,
    )
    engines = [e for e in infinity.ENGINES if f"infinity-{e}" in args.targets]
    run_peers(run, engines, reference, model_dir)
    if any(name in args.targets for name in CONVOQ_TARGETS):
        try:
            run_convoq(run, args.targets, reference)
        except Exception as error:  # still report the peers
            run.failures.append(f"convoq: {brief(error)}")
            print(f"convoq: failed: {error}", flush=True)
    report(run, install, args.markdown)
    print(f"\nthe whole run took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
