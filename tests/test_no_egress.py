"""No egress: no convoq process reaches beyond the machine at run time.

The full path (the API, the gpu and cpu workers, Redis, PostgreSQL and Milvus
Lite) runs in a network namespace that has only loopback (``unshare``), with
an audit hook in every Python process that records any attempt to reach or
look up another host (tests/egress_guard/sitecustomize.py): an embed job with
``store``, a conversation job with a summary and a search succeed, and nothing
is recorded. Where ``unshare`` cannot make a namespace, the run falls back to
the audit hook alone, and its assertions say so.

The switches that keep libraries offline and quiet are set by convoq itself
in every process, and by the image, the compose file and the ConfigMap.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from api import create_app
from config.offline import OFFLINE_ENVIRONMENT
from tests.support import ROOT
from tests.test_deploy import COMPOSE, K8S, compose_environment, image_environment, load_yaml

GUARD = Path(__file__).resolve().parent / "egress_guard"
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
# Every Python process of the run loads the guard: these must be among them.
PROCESSES = {
    "probe": "tests.egress_probe",
    "Milvus Lite": "devstack.milvus_lite_server",
    "gpu worker": "--queues gpu",
    "cpu worker": "--queues cpu",
    "API": "gunicorn",
}


def namespace_available() -> bool:
    try:
        return subprocess.run([*NAMESPACE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def logs_tail(directory: Path, lines: int = 15) -> str:
    tails = []
    for log in sorted(directory.rglob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(tails)


def test_the_full_path_runs_with_only_loopback_and_tries_no_other_host(tmp_path, worker_env):
    isolated = namespace_available()
    mode = (
        "in a network namespace with only loopback"
        if isolated
        else "NOT isolated: unshare cannot make a network namespace here, so only the "
        "audit-hook guard checks for egress"
    )
    print(f"no-egress run: {mode}")
    attempts, installed = tmp_path / "attempts.jsonl", tmp_path / "installed.jsonl"
    # The switches are left for convoq to set, and no service URL of the session leaks in.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in OFFLINE_ENVIRONMENT
        and name not in ("DATABASE_URL", "REDIS_URL", "MILVUS_URI", "MILVUS_COLLECTION")
    }
    env |= {
        "PYTHONPATH": f"{GUARD}{os.pathsep}{ROOT}",
        "CONVOQ_EGRESS_LOG": str(attempts),
        "CONVOQ_EGRESS_INSTALLED": str(installed),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # The session's model exports, made by its first gpu worker (or by this run's).
        "EXPORT_CACHE_DIR": worker_env["EXPORT_CACHE_DIR"],
    }
    command = [sys.executable, "-m", "tests.egress_probe", str(tmp_path / "run")]
    if isolated:
        command = [*NAMESPACE, *command, "--netns"]
    probe = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = f"{probe.stdout[-3000:]}\n{probe.stderr[-3000:]}\n{logs_tail(tmp_path / 'run')}"
    assert probe.returncode == 0, f"({mode}) the full path failed:\n{output}"

    result = json.loads((tmp_path / "run" / "result.json").read_text())
    print(f"seconds: {result['startup_seconds']} jobs: {result['seconds']}")
    assert result["embed"]["status"] == "succeeded", result
    assert len(result["embed"]["stored"]["ids"]) == 2
    assert result["conversation"]["status"] == "succeeded", result
    assert result["conversation"]["summary"]["text"]
    assert result["search"]["status_code"] == 200
    assert result["search"]["hits"][0]["conversation_id"] == "egress"

    commands = [" ".join(entry["argv"]) for entry in read_lines(installed)]
    for name, marker in PROCESSES.items():
        assert any(marker in command for command in commands), f"no guard in the {name}"
    assert read_lines(attempts) == [], f"({mode}) processes tried to reach other hosts"


def test_every_process_sets_the_offline_switches_itself():
    """``import config`` (every convoq process does) sets them over an empty environment."""
    code = "import json, os, config; print(json.dumps({k: os.environ.get(k) for k in %r}))"
    env = {"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "0", "DO_NOT_TRACK": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code % sorted(OFFLINE_ENVIRONMENT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == OFFLINE_ENVIRONMENT
    assert {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"} <= set(
        OFFLINE_ENVIRONMENT
    )


def test_the_image_compose_and_the_configmap_set_the_offline_switches():
    services = load_yaml(COMPOSE)["services"]
    configmap = next(doc for doc in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if doc)
    environments = {
        "Dockerfile": image_environment(),
        "docker-compose.yml (api)": compose_environment(services["api"]),
        "docker-compose.yml (worker-gpu)": compose_environment(services["worker-gpu"]),
        "deploy/k8s/configmap.yaml": configmap["data"],
    }
    for where, environment in environments.items():
        missing = {k: v for k, v in OFFLINE_ENVIRONMENT.items() if environment.get(k) != v}
        assert missing == {}, where


def test_the_guard_records_an_attempt_that_fails(tmp_path):
    """The guard is not vacuous: a failed connection and a failed lookup are recorded,
    loopback is not."""
    attempts, installed = tmp_path / "attempts.jsonl", tmp_path / "installed.jsonl"
    code = """
import socket
calls = [
    lambda: socket.create_connection(("192.0.2.1", 80), timeout=0.2),
    lambda: socket.getaddrinfo("huggingface.co", 443),
    lambda: socket.create_connection(("127.0.0.1", 9), timeout=0.2),  # loopback: allowed
    lambda: socket.getaddrinfo("localhost", 80),
]
for call in calls:
    try:
        call()
    except OSError:
        pass
"""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(GUARD),
        "CONVOQ_EGRESS_LOG": str(attempts),
        "CONVOQ_EGRESS_INSTALLED": str(installed),
    }
    command = [sys.executable, "-c", code]
    if namespace_available():
        command = [*NAMESPACE, *command]
    subprocess.run(command, env=env, check=True, timeout=60)
    recorded = {(entry["event"], entry["host"]) for entry in read_lines(attempts)}
    assert recorded == {
        ("socket.getaddrinfo", "'192.0.2.1'"),  # create_connection resolves first
        ("socket.connect", "('192.0.2.1', 80)"),
        ("socket.getaddrinfo", "'huggingface.co'"),
    }


def test_the_docs_page_sends_nothing_to_swagger_io():
    """Swagger UI's default is a badge from validator.swagger.io, fetched with the
    address of the API's /openapi.json: it is switched off."""
    page = create_app().test_client().get("/docs")
    assert page.status_code == 200
    assert '{"validatorUrl":"none"}' in page.get_data(as_text=True)
