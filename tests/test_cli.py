"""The ``convoq`` CLI through its entry point (``python -m convoq_client.cli``, a
subprocess) against the real gunicorn API and the shared workers: exit codes, ``--json``
that parses, ``job --wait`` ending with the job, both pools in ``queues``, stdin input,
and the config file."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from convoq_client import Client

from tests.api_server import api_server
from tests.support import ROOT, free_port, subprocess_env

DIMENSIONS = 384
MESSAGES = [
    {"role": "user", "content": "My parcel to Bern has not arrived yet."},
    {"role": "assistant", "content": "Sorry! The parcel left Zurich on Monday."},
]


@pytest.fixture(scope="module")
def api(settings, stack, gpu_worker, cpu_worker, tmp_path_factory):
    with api_server(settings, tmp_path_factory.mktemp("api")) as server:
        yield server


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """An empty HOME, so no real ~/.config/convoq/config.toml leaks into the tests."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def key(make_tenant) -> str:
    return make_tenant()["Authorization"].split()[1]


def convoq(*args: str, home: Path, stdin: str | None = None, **env: str):
    """Runs ``convoq ARGS`` as a user would, with ``env`` (CONVOQ_URL, CONVOQ_KEY...)."""
    full_env = subprocess_env(
        {"PYTHONPATH": str(ROOT / "client"), "HOME": str(home), "COLUMNS": "200"}, **env
    )
    for name in ("CONVOQ_URL", "CONVOQ_KEY", "XDG_CONFIG_HOME", "CONVOQ_CONFIG"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "convoq_client.cli", *args],
        input=stdin, capture_output=True, text=True, env=full_env, timeout=120, cwd=home,
    )  # fmt: skip


def test_embed_from_stdin_and_json_output(api, key, home):
    env = {"CONVOQ_URL": api.base_url, "CONVOQ_KEY": key}
    done = convoq("embed", "-", "--json", home=home, stdin="How do I reset it?\n\nGrüezi\n", **env)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    assert len(job["result"]["vectors"]) == 2  # the blank line is no text
    assert len(job["result"]["vectors"][0]) == DIMENSIONS

    shown = convoq("job", job["id"], home=home, **env)
    assert shown.returncode == 0, shown.stderr
    assert job["id"] in shown.stdout
    assert "succeeded" in shown.stdout
    assert f"vectors: 2 x {DIMENSIONS}" in shown.stdout

    text = "The parcel left Zurich on Monday. It reached Bern on Tuesday. " * 3
    summary = convoq("summarize", "-", "--method", "extractive", home=home, stdin=text, **env)
    assert summary.returncode == 0, summary.stderr
    assert "summarize  succeeded" in summary.stdout
    assert "Bern" in summary.stdout.split("\n", 1)[1]  # the summary under the status line

    listed = convoq("jobs", "--type", "embed", home=home, **env)
    assert listed.returncode == 0, listed.stderr
    assert job["id"] in listed.stdout
    every = json.loads(convoq("jobs", "--json", home=home, **env).stdout)
    assert [j["type"] for j in every] == ["summarize", "embed"]  # newest first
    assert every[1]["id"] == job["id"]


def test_conversation_wait_search_export_erase(api, key, home, tmp_path):
    env = {"CONVOQ_URL": api.base_url, "CONVOQ_KEY": key}
    user, conversation = f"u-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    file = tmp_path / "conversation.json"
    file.write_text(json.dumps({"conversation_id": conversation, "messages": MESSAGES}))
    queued = convoq("conversation", str(file), "--user", user, "--wait", "0", "--json",
                    home=home, **env)  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["id"]

    waited = convoq("job", job_id, "--wait", home=home, **env)
    assert waited.returncode == 0, waited.stderr
    assert "succeeded" in waited.stdout
    with Client(api.base_url, key) as client:  # it returned because the job had ended
        assert client.get_job(job_id).finished_at is not None

    hits = convoq("search", "parcel Bern", "--conversation", conversation, home=home, **env)
    assert hits.returncode == 0, hits.stderr
    assert "parcel" in hits.stdout
    found = json.loads(
        convoq("search", "parcel", "--user", user, "--json", home=home, **env).stdout
    )
    assert found
    assert {hit["conversation_id"] for hit in found} == {conversation}

    exported = convoq("export", "--user", user, home=home, **env)
    assert exported.returncode == 0, exported.stderr
    assert conversation in json.dumps(json.loads(exported.stdout))

    finished = convoq("cancel", job_id, home=home, **env)
    assert finished.returncode == 1
    assert finished.stderr.startswith("error: job_finished: ")
    assert finished.stderr.count("\n") == 1

    erased = convoq("erase", "--conversation", conversation, "--wait", "--json", home=home, **env)
    assert erased.returncode == 0, erased.stderr
    erasure = json.loads(erased.stdout)
    assert (erasure["target_id"], erasure["status"]) == (conversation, "succeeded")
    assert convoq("erase", "--user", user, home=home, **env).returncode == 0


def test_queues_from_the_config_file(api, key, home, tmp_path):
    config = tmp_path / "convoq" / "config.toml"
    config.parent.mkdir()
    config.write_text(f'url = "{api.base_url}"\nkey = "{key}"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path)}  # no CONVOQ_URL/KEY: the file must serve

    table = convoq("queues", home=home, **env)
    assert table.returncode == 0, table.stderr
    assert "gpu" in table.stdout
    assert "cpu" in table.stdout
    pools = json.loads(convoq("queues", "--json", home=home, **env).stdout)
    assert {"gpu", "cpu"} <= set(pools)
    assert pools["gpu"]["workers"] >= 1
    assert pools["cpu"]["workers"] >= 1
    watched = convoq("queues", "--watch", "--count", "2", "--interval", "0.1", "--json",
                     home=home, **env)  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert [set(json.loads(line)) >= {"gpu", "cpu"} for line in watched.stdout.splitlines()] == [
        True,
        True,
    ]


def test_exit_codes_and_one_line_errors(api, key, home):
    env = {"CONVOQ_URL": api.base_url, "CONVOQ_KEY": key}
    missing = convoq("job", str(uuid.uuid4()), "--json", home=home, **env)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith("error: ")
    assert "not_found" in missing.stderr
    assert missing.stderr.count("\n") == 1

    denied = convoq("queues", home=home, CONVOQ_URL=api.base_url, CONVOQ_KEY="cvq_nope")
    assert denied.returncode == 1
    assert denied.stderr.startswith("error: ")

    nowhere = f"http://127.0.0.1:{free_port()}"
    lost = convoq("queues", home=home, CONVOQ_URL=nowhere, CONVOQ_KEY=key, CONVOQ_MAX_RETRIES="0")
    assert lost.returncode == 2
    assert lost.stderr.startswith("error: connection_failed: ")
    assert lost.stderr.count("\n") == 1
