"""``python -m tests.egress_probe OUT [--netns]``: the full path of convoq, run by
tests/test_no_egress.py inside a network namespace that has only loopback.

Nothing listens there, so the local stack starts its embedded Redis, PostgreSQL
and Milvus Lite (devstack), then the gpu and cpu workers and the API (gunicorn)
start as the tests start them. An embed job with ``store``, a conversation job
with a summary, and a search must succeed. What happened is written to
``OUT/result.json``; every process leaves its logs under ``OUT``.
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import requests

from config import Settings
from devstack.stack import LocalStack
from tests.api_server import api_server
from tests.support import GPU_POOL, WorkerProcess, free_port

TEXTS = ["The invoice for March is overdue.", "Our office moves to the second floor."]
CHAT = [
    {"role": "user", "content": "My order of running shoes arrived in the wrong size."},
    {"role": "assistant", "content": "I have sent you a free return label for an exchange."},
    {"role": "user", "content": "Thanks, I will post them back tomorrow morning."},
]
JOB_SECONDS = 120


def finish(base_url: str, headers: dict[str, str], response: requests.Response) -> dict:
    """The job of a ``Prefer: wait`` answer, waited for until it ends."""
    assert response.status_code in (200, 202), response.text
    job = response.json()
    deadline = time.monotonic() + JOB_SECONDS
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        job = requests.get(
            f"{base_url}/v1/jobs/{job['id']}?wait=30", headers=headers, timeout=40
        ).json()
    return job


def full_path(base_url: str, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}", "Prefer": f"wait={JOB_SECONDS // 2}"}
    steps: dict[str, float] = {}
    started = time.monotonic()
    embed = finish(
        base_url,
        headers,
        requests.post(
            f"{base_url}/v1/jobs/embed",
            json={"texts": TEXTS, "store": True},
            headers=headers,
            timeout=JOB_SECONDS,
        ),
    )
    steps["embed"] = time.monotonic() - started
    started = time.monotonic()
    body = {"conversation_id": "egress", "user_id": "u-1", "messages": CHAT, "summarize": True}
    conversation = finish(
        base_url,
        headers,
        requests.post(
            f"{base_url}/v1/jobs/conversation", json=body, headers=headers, timeout=JOB_SECONDS
        ),
    )
    steps["conversation"] = time.monotonic() - started
    started = time.monotonic()
    search = requests.post(
        f"{base_url}/v1/search",
        json={"query": "return the shoes that do not fit", "top_k": 3},
        headers=headers,
        timeout=60,
    )
    steps["search"] = time.monotonic() - started
    return {
        "embed": {"status": embed["status"], "stored": embed.get("result", {}).get("stored")},
        "conversation": {
            "status": conversation["status"],
            "summary": (conversation.get("result") or {}).get("summary"),
        },
        "search": {"status_code": search.status_code, "hits": search.json().get("hits", [])},
        "seconds": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.egress_probe")
    parser.add_argument("out", type=Path)
    parser.add_argument("--netns", action="store_true", help="bring loopback up first")
    args = parser.parse_args()
    if args.netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out: Path = args.out
    # Ports of our own: outside a namespace (the fallback) the session's services are left alone.
    os.environ.update(
        {
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/convoq",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "MILVUS_URI": f"http://127.0.0.1:{free_port()}",
            "MILVUS_COLLECTION": "convoq_memory",
        }
    )
    # The test session's model exports when it passes them, made offline all the same.
    os.environ.setdefault("EXPORT_CACHE_DIR", str(out / "exports"))
    settings = Settings()
    timings: dict[str, float] = {}
    started = time.monotonic()
    with LocalStack(settings, out / "devstack") as stack:
        timings["services"] = time.monotonic() - started
        key = stack.local_api_key()
        env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
        env |= {"MILVUS_URI": settings.milvus_uri, "MILVUS_COLLECTION": settings.milvus_collection}
        env = {**os.environ, **env}
        gpu = WorkerProcess(env, out, **GPU_POOL).launch()
        cpu = WorkerProcess(env, out, queue="cpu", pool="prefork", concurrency=1).launch()
        try:
            with api_server(settings, out) as api:
                gpu.wait_ready(120)
                cpu.wait_ready(120)
                timings["processes"] = time.monotonic() - started
                result = full_path(api.base_url, key)
                result["startup_seconds"] = timings
                (out / "result.json").write_text(json.dumps(result, indent=2))
                print(json.dumps(result["seconds"] | timings), flush=True)
                if args.netns:
                    # The first process of a PID namespace: when it ends, the kernel
                    # kills every process in it. No graceful stops to wait for.
                    os._exit(0)
        finally:
            gpu.stop()
            cpu.stop()


if __name__ == "__main__":
    main()
