"""``pip install ./client`` in a fresh virtual environment brings httpx and pydantic and
nothing of the server: no torch, transformers, pymilvus or flask. Without numpy, vectors
come back as lists. ``./client[cli]`` adds Typer and Rich, and the ``convoq`` command
runs; without them it says how to get them."""

import json
import shutil
import subprocess
import venv

from tests.support import ROOT, free_port

SERVER_PACKAGES = ["torch", "transformers", "pymilvus", "flask", "celery", "sqlalchemy", "numpy"]

PROBE = f"""
import base64, importlib.util, json, struct
import convoq_client
from convoq_client import Client, NotFound
from convoq_client._vectors import decode_many
vector = base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.0)).decode()
print(json.dumps({{
    "client": Client.__name__,
    "missing": [n for n in {SERVER_PACKAGES!r} if importlib.util.find_spec(n) is None],
    "decoded": decode_many([vector]),
}}))
"""


def test_fresh_venv_installs_only_the_client(tmp_path):
    source = shutil.copytree(ROOT / "client", tmp_path / "client")  # builds outside the tree
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"convoq-client", "httpx", "pydantic"} <= installed
    assert not installed & {"torch", "transformers", "pymilvus", "flask", "celery", "numpy"}
    assert not installed & {"typer", "rich"}

    probe = subprocess.run(
        [python, "-c", PROBE], check=True, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    answer = json.loads(probe.stdout)
    assert answer["client"] == "Client"
    assert answer["missing"] == SERVER_PACKAGES
    assert answer["decoded"] == [[0.5, -1.0, 2.0]]  # lists, as numpy is absent

    # The entry point is installed; without the cli extra it says what to install.
    bare = subprocess.run(
        [env_dir / "bin" / "convoq", "--help"], capture_output=True, text=True, timeout=60
    )
    assert bare.returncode == 2
    assert bare.stderr.startswith("error: missing_dependency: ")
    assert "convoq-client[cli]" in bare.stderr
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{source}[cli]"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    # With it, the command runs, and a missing API is exit 2 with one line.
    helped = subprocess.run(
        [env_dir / "bin" / "convoq", "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert "queues" in helped.stdout
    lost = subprocess.run(
        [env_dir / "bin" / "convoq", "queues"], capture_output=True, text=True, timeout=60,
        env={"CONVOQ_URL": f"http://127.0.0.1:{free_port()}", "CONVOQ_MAX_RETRIES": "0"},
    )  # fmt: skip
    assert lost.returncode == 2
    assert lost.stderr.startswith("error: connection_failed: ")
