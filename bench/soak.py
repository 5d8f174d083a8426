"""A steady mix of jobs against ``make run``'s stack: memory, errors and lost jobs.

    python -m bench.soak [--minutes 2] [--rate 4] [--drain 180]

Starts the services as the other benchmarks do (bench/stack.py: the
``convoq_bench`` database, Redis database 12, the ``convoq_bench_memory``
collection), then ``make run``'s own stack on them (``python -m devstack
run``: supervisord running the Procfile's API, both worker pools, beat and
Flower). For ``--minutes`` it sends ``--rate`` requests per second on a fixed
schedule, in turn: an embed job (one text), a summarize job, a conversation
job (two messages appended to one of 20 conversations) and a search. Jobs are
submitted without waiting (``202``); a sender that is late does not hurry to
catch up, the schedule just slips (counted as "late").

It prints the CPU, the resident memory (RSS, from ``/proc``) of every process
of the stack at the start and at the end, requests and errors by kind (HTTP
status or exception, and the error code of failed jobs), and jobs lost: jobs
accepted minus jobs succeeded, after waiting up to ``--drain`` seconds for the
accepted jobs to end. Redis, PostgreSQL and Milvus are the servers at the
bench settings' URLs with their children (PostgreSQL's backends, other users'
included). A benchmark, not a test.
"""

import argparse
import itertools
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import func, select

from bench.figures import record
from bench.procstat import PROC, cpu_description, descendants, listening_pid
from bench.stack import RunningStack, bench_settings, local_services, supervised_stack
from bench.texts import text
from devstack.supervise import program_pids
from models.db import session_scope
from models.job import Job, JobStatus

KINDS = ("embed", "summarize", "conversation", "search")
CONVERSATIONS = 20
SENDERS = 16
HTTP_TIMEOUT = 30
DRAIN_POLL_SECONDS = 2.0
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def request_for(kind: str, i: int) -> tuple[str, dict[str, Any]]:
    """The path and body of the ``i``-th request, of ``kind``."""
    if kind == "embed":
        return "/v1/jobs/embed", {"texts": [text(i)]}
    if kind == "summarize":
        body = ". ".join(text(i + k) for k in range(8)) + "."
        return "/v1/jobs/summarize", {"text": body, "max_length": 40, "min_length": 5}
    if kind == "conversation":
        return "/v1/jobs/conversation", {
            "conversation_id": f"soak-{i % CONVERSATIONS}",
            "user_id": "soak",
            "messages": [
                {"role": "user", "content": text(i)},
                {"role": "assistant", "content": text(i + 1)},
            ],
        }
    return "/v1/search", {"query": text(i), "top_k": 5}


@dataclass
class Tally:
    """What was sent and what came back, shared by the senders."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: Counter = field(default_factory=Counter)
    accepted: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    searches_ok: int = 0
    errors: Counter = field(default_factory=Counter)
    late: int = 0

    def error(self, kind: str, what: str, count: int = 1) -> None:
        with self.lock:
            self.errors[f"{kind}: {what}"] += count


def send(stack: RunningStack, session: requests.Session, kind: str, i: int, tally: Tally) -> None:
    path, body = request_for(kind, i)
    with tally.lock:
        tally.sent[kind] += 1
    try:
        response = session.post(f"{stack.base_url}{path}", json=body, timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        tally.error(kind, type(exc).__name__)
        return
    expected = 200 if kind == "search" else 202
    if response.status_code != expected:
        tally.error(kind, f"HTTP {response.status_code}")
        return
    with tally.lock:
        if kind == "search":
            tally.searches_ok += 1
        else:
            tally.accepted.setdefault(kind, []).append(uuid.UUID(response.json()["id"]))


def run_load(stack: RunningStack, minutes: float, rate: float) -> Tally:
    """``rate`` requests per second for ``minutes``, the kinds in turn, on a fixed schedule."""
    tally = Tally()
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(stack.headers)
        return local.session

    in_flight = threading.Semaphore(SENDERS)

    def one(kind: str, i: int) -> None:
        try:
            send(stack, session(), kind, i, tally)
        finally:
            in_flight.release()

    interval = 1 / rate
    started = time.monotonic()
    deadline = started + minutes * 60
    with ThreadPoolExecutor(SENDERS) as pool:
        for i in itertools.count():
            due = started + i * interval
            if due >= deadline:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            # Every sender busy: the request waits, and the schedule slips.
            if not in_flight.acquire(blocking=False):
                tally.late += 1
                in_flight.acquire()
            pool.submit(one, KINDS[i % len(KINDS)], i)
    return tally


def job_counts(stack: RunningStack, ids: list[uuid.UUID]) -> Counter:
    """``(status, error_code)`` of the jobs ``ids``, counted."""
    counts: Counter = Counter()
    with session_scope(stack.settings.database_url) as db:
        for start in range(0, len(ids), 1000):
            rows = db.execute(
                select(Job.status, Job.error_code, func.count())
                .where(Job.id.in_(ids[start : start + 1000]))
                .group_by(Job.status, Job.error_code)
            )
            for status, code, count in rows:
                counts[(JobStatus(status), code)] += count
    return counts


def drain(stack: RunningStack, ids: list[uuid.UUID], seconds: float) -> float:
    """Wait until none of ``ids`` is queued or running, at most ``seconds``; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        counts = job_counts(stack, ids)
        if not sum(n for (status, _), n in counts.items() if status in ACTIVE):
            break
        time.sleep(DRAIN_POLL_SECONDS)
    return time.monotonic() - started


def rss_mib(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


def served(port: int) -> set[int]:
    """The server listening on ``port`` and its descendants (PostgreSQL's backends)."""
    return set().union(*(descendants(pid) for pid in listening_pid(port)))


def processes(stack: RunningStack) -> dict[str, set[int]]:
    """The stack's processes by name: ``make run``'s programs, their children apart,
    and the services."""
    assert stack.data_dir is not None
    found: dict[str, set[int]] = {}
    for name, pid in sorted(program_pids(stack.data_dir).items()):
        found[name] = {pid}
        found[f"{name} children"] = descendants(pid) - {pid}
    settings = stack.settings
    found["redis"] = served(urlsplit(settings.redis_url).port or 6379)
    found["postgresql"] = served(urlsplit(settings.database_url).port or 5432)
    found["milvus"] = served(urlsplit(settings.milvus_uri).port or 19530)
    return {name: pids for name, pids in found.items() if pids}


def memory_snapshot(stack: RunningStack) -> dict[str, tuple[int, float]]:
    """``{name: (processes, RSS MiB)}``."""
    return {name: (len(pids), rss_mib(pids)) for name, pids in processes(stack).items()}


def print_memory(start: dict[str, tuple[int, float]], end: dict[str, tuple[int, float]]) -> None:
    print("\nRSS, MiB (a page shared by forked processes counts in each); n: processes")
    print(f"{'':22} {'n':>3} {'start':>8} {'n':>3} {'end':>8} {'change':>8}")
    for name in sorted(set(start) | set(end), key=lambda n: (n not in start, n)):
        cells = []
        for snapshot in (start, end):
            count, mib = snapshot.get(name, (0, 0.0))
            cells.append(f"{count:3} {mib:8.1f}")
        change = end.get(name, (0, 0.0))[1] - start.get(name, (0, 0.0))[1]
        print(f"{name:22} {cells[0]} {cells[1]} {change:+8.1f}")
    total_start = sum(mib for _, mib in start.values())
    total_end = sum(mib for _, mib in end.values())
    print(f"{'total':22} {'':3} {total_start:8.1f} {'':3} {total_end:8.1f} "
          f"{total_end - total_start:+8.1f}")  # fmt: skip
    record("RSS of the whole stack at the start", total_start, "MiB")
    record("RSS of the whole stack at the end", total_end, "MiB")


def report(stack: RunningStack, tally: Tally, args: argparse.Namespace, drained: float) -> None:
    print(f"\n{'kind':14} {'sent':>7} {'accepted':>9} {'succeeded':>10} {'failed':>7} {'lost':>6}")
    total_accepted = total_succeeded = 0
    for kind in KINDS:
        if kind == "search":
            ok = tally.searches_ok
            print(f"{kind:14} {tally.sent[kind]:7} {ok:9} {ok:10} {'':>7} {'':>6}")
            continue
        ids = tally.accepted.get(kind, [])
        counts = job_counts(stack, ids)
        succeeded = sum(n for (status, _), n in counts.items() if status == JobStatus.SUCCEEDED)
        failed = sum(n for (status, _), n in counts.items() if status == JobStatus.FAILED)
        for (status, code), n in counts.items():
            if status == JobStatus.FAILED:
                tally.error(kind, f"job failed ({code})", n)
            elif status in ACTIVE:
                tally.error(kind, f"job still {status} after the drain", n)
        lost = len(ids) - succeeded
        total_accepted += len(ids)
        total_succeeded += succeeded
        print(f"{kind:14} {tally.sent[kind]:7} {len(ids):9} {succeeded:10} {failed:7} {lost:6}")
    print(
        f"\njobs lost (accepted - succeeded, after a {drained:.0f} s drain): "
        f"{total_accepted - total_succeeded} of {total_accepted}"
    )
    print(f"late sends (all {SENDERS} senders busy): {tally.late}")
    record("jobs accepted", total_accepted, digits=0)
    record("jobs lost (accepted - succeeded)", total_accepted - total_succeeded, digits=0)
    record("errors", sum(tally.errors.values()), digits=0)
    print("errors by kind:" + ("" if tally.errors else " none"))
    for what, count in sorted(tally.errors.items()):
        print(f"  {what}: {count}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--drain", type=float, default=180.0, help="seconds, at most")
    args = parser.parse_args()
    settings = bench_settings()
    print(f"CPU: {cpu_description()}")
    print(f"soak: {args.minutes:g} min at {args.rate:g} requests/s, kinds in turn: {KINDS}")
    with (
        local_services(settings) as log_dir,
        supervised_stack(settings, Path(log_dir) / "soak") as stack,
    ):
        # One of each first: models loaded and the conversations' collection warm.
        for i, kind in enumerate(KINDS):
            path, body = request_for(kind, -1 - i)
            response = requests.post(
                f"{stack.base_url}{path}",
                json=body,
                headers={**stack.headers, "Prefer": "wait=60"},
                timeout=90,
            )
            response.raise_for_status()
        start = memory_snapshot(stack)
        started = time.monotonic()
        tally = run_load(stack, args.minutes, args.rate)
        elapsed = time.monotonic() - started
        ids = [job for jobs in tally.accepted.values() for job in jobs]
        drained = drain(stack, ids, args.drain)
        end = memory_snapshot(stack)
        sent = sum(tally.sent.values())
        print(f"\nsent {sent} requests in {elapsed:.0f} s ({sent / elapsed:.2f}/s)")
        report(stack, tally, args, drained)
        print_memory(start, end)
        print(f"\nlogs: {stack.log_dir / 'devstack.log'}")


if __name__ == "__main__":
    main()
