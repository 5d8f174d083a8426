"""The contract is the document: schemathesis against the real API's /openapi.json."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api_server import api_server
from tests.support import ROOT

# Examples per operation and phase: the whole run stays near a minute on 2 cores.
MAX_EXAMPLES = 3


@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing(settings, make_tenant, gpu_worker, tmp_path: Path):
    headers = make_tenant()
    # The fuzzer sends hundreds of requests a second: the rate limit is not under test.
    # tests/schemathesis_hooks.py points callback URLs at an allow-listed host.
    with api_server(
        settings, tmp_path, RATE_LIMIT="100000/second", WEBHOOK_ALLOWED_HOSTS="127.0.0.1"
    ) as server:
        command = [
            sys.executable, "-m", "schemathesis.cli",
            "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
            "run", f"{server.base_url}/openapi.json",
            "--checks", "all",
            "--max-examples", str(MAX_EXAMPLES),
            "--phases", "examples,coverage,fuzzing,stateful",
            "--header", f"Authorization:{headers['Authorization']}",
            "--request-timeout", "90",
            # Prefer: wait=N and ?wait=N hold an answer up to 60 s, as documented.
            "--max-response-time", "75",
            "--suppress-health-check", "all",
            "--workers", "2",
            "--no-color",
            "--seed", "12",
        ]  # fmt: skip
        hooks = {"SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            command,
            cwd=tmp_path,
            env={**os.environ, **hooks},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    # Generated bodies can be megabytes: each line of the report is cut short.
    report = "\n".join(line[:400] for line in output.splitlines())
    assert run.returncode == 0, report[-20000:]
    cases = re.search(r"(\d+) generated", output)
    assert cases is not None, output[-3000:]
    assert int(cases.group(1)) > 300, output[-3000:]
