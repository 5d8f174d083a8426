"""Inference backends on the real models: exports, their checks, the cache, the fallback.

MiniLM comes from the installed wheel and T5 is the tests' tiny model. Each
exported backend is loaded from a cold cache (export and fidelity check) and
from a warm one, and serves jobs through a real gpu worker subprocess.
"""

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from api import create_app
from config import Settings
from devstack.services import ensure_redis
from inference.backends.cache import MANIFEST
from inference.backends.choice import BackendOptions, candidates
from inference.backends.fidelity import (
    FP32_MIN_COSINE,
    FidelityError,
    check_embeddings,
    check_tokens,
)
from inference.embedder import Embedder, default_model_path, load_embedder
from inference.t5 import T5Summarizer, load_t5_summarizer
from tests.support import GPU_POOL, ROOT, WorkerProcess, free_port, submit_embed, wait_for_job
from tests.test_summarizers import LONG, TEXTS

EXPORTED = ["openvino", "onnx", "onnx-int8"]
EXACT = ["openvino", "onnx"]
SENTENCES = [
    "How do I reset my password?",
    "The invoice for October is attached.",
    "Grüezi! Wann fährt der nächste Zug nach Bern?",
    "a",
    " ".join(f"token{i}" for i in range(400)),
]


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return Embedder(default_model_path(), "cpu")


@pytest.fixture(scope="module")
def torch_t5(tiny_t5_path: Path) -> T5Summarizer:
    return T5Summarizer(tiny_t5_path, "cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def broken_cache(tmp_path: Path) -> Path:
    """A cache directory that cannot be created: its parent is a file (even root fails)."""
    parent = tmp_path / "not-a-directory"
    parent.write_text("")
    return parent / "exports"


# Choice


def test_auto_is_torch_on_a_gpu_and_the_fastest_first_on_the_cpu():
    assert candidates("auto", "cuda") == ("torch",)
    assert candidates("auto", "cuda:1") == ("torch",)
    assert candidates("auto", "cpu") == ("openvino", "onnx", "torch")
    assert candidates("onnx-int8", "cpu") == ("onnx-int8",)
    with pytest.raises(ValueError, match="unknown inference backend"):
        candidates("tensorrt", "cpu")


def test_backend_settings_come_from_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("INFERENCE_BACKEND", "onnx-int8")
    monkeypatch.setenv("EXPORT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ONNX_ALLOW_SPINNING", "true")
    monkeypatch.setenv("OPENVINO_THREADS", "2")
    settings = Settings()
    assert settings.inference_backend == "onnx-int8"
    assert settings.export_cache_dir == tmp_path
    assert settings.onnx_allow_spinning is True
    assert settings.openvino_threads == 2
    monkeypatch.setenv("INFERENCE_BACKEND", "tensorrt")
    with pytest.raises(ValidationError, match="inference_backend"):
        Settings()


def test_exports_are_cached_outside_site_packages(monkeypatch):
    monkeypatch.delenv("EXPORT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = Settings().export_cache_dir
    assert default == Path.home() / ".cache" / "convoq" / "exports"
    assert "site-packages" not in default.parts


# Embeddings


@pytest.fixture(scope="module", params=EXPORTED)
def cold_and_warm(request, tmp_path_factory):
    """(backend, cold embedder, seconds, warm embedder, seconds, cache dir)."""
    backend = request.param
    options = BackendOptions(cache_dir=tmp_path_factory.mktemp(f"exports-{backend}"))
    started = time.perf_counter()
    cold = Embedder(default_model_path(), "cpu", backend, options)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    warm = Embedder(default_model_path(), "cpu", backend, options)
    return backend, cold, cold_seconds, warm, time.perf_counter() - started, options.cache_dir


def test_a_backend_exports_once_then_loads_from_the_cache(cold_and_warm):
    backend, cold, _, warm, warm_seconds, cache_dir = cold_and_warm
    (entry,) = cache_dir.iterdir()
    assert entry.name.startswith(f"all-MiniLM-L6-v2-{backend}-")
    assert (entry / MANIFEST).is_file()
    assert warm_seconds < 2.0
    assert (cold.info, warm.info) == (warm.info, warm.info)
    assert warm.info.backend == backend
    assert warm.info.device == "cpu"
    assert warm.info.model == "sentence-transformers/all-MiniLM-L6-v2"
    np.testing.assert_array_equal(cold.encode(SENTENCES, 2), warm.encode(SENTENCES, 2))


def test_a_backend_matches_torch(cold_and_warm, torch_embedder: Embedder):
    backend, _, _, warm, _, _ = cold_and_warm
    expected = torch_embedder.encode(SENTENCES, 8)
    # Batched, one by one, and in small batches: padding never changes a vector.
    for batch_size in (8, 1, 2):
        vectors = warm.encode(SENTENCES, batch_size)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        figure = cosines(vectors, expected).min()
        if backend in EXACT:
            assert figure >= FP32_MIN_COSINE
        else:
            # int8 is reported, not held to the fp32 bar: its export recorded its figure.
            assert figure > 0.95
            assert warm.encoder.min_cosine > 0.95
    assert warm.token_counts(SENTENCES) == torch_embedder.token_counts(SENTENCES)


def test_a_corrupt_export_is_detected_and_rebuilt(tmp_path: Path, caplog, torch_embedder):
    options = BackendOptions(cache_dir=tmp_path)
    Embedder(default_model_path(), "cpu", "onnx", options)
    (entry,) = tmp_path.iterdir()
    data = bytearray((entry / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "model.onnx").write_bytes(bytes(data))

    with caplog.at_level(logging.INFO):
        rebuilt = Embedder(default_model_path(), "cpu", "onnx", options)
    assert "export cache entry is corrupt; building it again" in caplog.text
    assert "model.onnx does not match its checksum" in caplog.text
    assert "embedding model exported" in caplog.messages
    expected = torch_embedder.encode(SENTENCES, 8)
    assert cosines(rebuilt.encode(SENTENCES, 8), expected).min() >= FP32_MIN_COSINE


def test_auto_measures_the_backends_once_and_keeps_the_fastest(tmp_path: Path, caplog):
    options = BackendOptions(cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="inference.backends.choice"):
        first = load_embedder(None, "cpu", "auto", options)
    [decision_file] = (tmp_path / "auto").glob("*.json")
    decision = json.loads(decision_file.read_text())
    assert set(decision["seconds"]) == {"openvino", "onnx", "torch"}
    assert decision["choice"] == first.info.backend
    # Another backend is chosen over torch only when it is 5% faster.
    assert decision["seconds"][decision["choice"]] <= 1.05 * min(decision["seconds"].values())
    assert any(m.startswith("inference backend ") and " chosen for " in m for m in caplog.messages)

    caplog.clear()
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="inference.backends.choice"):
        second = load_embedder(None, "cpu", "auto", options)
    assert time.perf_counter() - started < 2.0
    assert second.info.backend == first.info.backend
    assert not any(" chosen for " in m for m in caplog.messages)  # not measured again

    decision_file.write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inference.backends.choice"):
        load_embedder(None, "cpu", "auto", options)
    assert any(" chosen for " in m for m in caplog.messages)  # a bad record is measured anew
    assert json.loads(decision_file.read_text())["choice"] in {"openvino", "onnx", "torch"}


def test_auto_falls_back_to_torch_saying_why(tmp_path: Path, caplog):
    options = BackendOptions(cache_dir=broken_cache(tmp_path))
    with caplog.at_level(logging.WARNING, logger="inference.backends.choice"):
        embedder = load_embedder(None, "cpu", "auto", options)
    assert embedder.info.backend == "torch"
    messages = [r.getMessage() for r in caplog.records]
    for backend in ("openvino", "onnx"):
        prefix = (
            f"inference backend {backend} not used for sentence-transformers/all-MiniLM-L6-v2: "
        )
        [message] = [m for m in messages if m.startswith(prefix)]
        assert "not-a-directory" in message


def test_a_backend_asked_for_by_name_fails_loudly(tmp_path: Path):
    with pytest.raises(OSError, match="not-a-directory"):
        load_embedder(None, "cpu", "onnx", BackendOptions(cache_dir=broken_cache(tmp_path)))


def test_fidelity_check_refuses_an_fp32_export_that_drifts():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(8, 384)).astype(np.float32)
    drifted = reference + rng.normal(scale=0.05, size=reference.shape).astype(np.float32)
    assert check_embeddings("onnx", reference, reference * 1.0000001) >= FP32_MIN_COSINE
    with pytest.raises(FidelityError, match="min cosine to torch"):
        check_embeddings("openvino", reference, drifted)
    # int8 reports its figure instead.
    assert 0.9 < check_embeddings("onnx-int8", reference, drifted) < FP32_MIN_COSINE
    with pytest.raises(FidelityError, match="1 of 2 greedy outputs differ"):
        check_tokens("onnx", [[1, 2], [3]], [[1, 2], [4]])
    assert check_tokens("onnx-int8", [[1, 2], [3]], [[1, 2], [4]]) == 0.5


def test_no_telemetry_and_nothing_written_under_home(tmp_path: Path):
    """ONNX Runtime's 1DS telemetry (a device id and an event store under ~/.cache/Microsoft)
    and OpenVINO's (a Google Analytics event, a client id under ~/intel) stay off: exporting
    and running both backends from a cold cache writes nothing under HOME."""
    home = tmp_path / "home"
    home.mkdir()
    code = f"""
import inference
import openvino.tools.ovc as ovc
from inference.backends.choice import BackendOptions
from inference.embedder import Embedder, default_model_path
options = BackendOptions(cache_dir={str(tmp_path / "exports")!r})
for backend in ("openvino", "onnx"):
    Embedder(default_model_path(), "cpu", backend, options).encode(["telemetry"], 1)
print(type(ovc.telemetry).__module__)
"""
    # The process sets its own switches: none are inherited from this one.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "openvino.tools.ovc.telemetry_stub"
    assert len(list((tmp_path / "exports").iterdir())) == 2
    assert list(home.rglob("*")) == []


# T5


@pytest.mark.parametrize("backend", EXACT)
def test_t5_export_gives_torchs_tokens(backend, tiny_t5_path: Path, torch_t5, tmp_path: Path):
    options = BackendOptions(cache_dir=tmp_path)
    exported = T5Summarizer(tiny_t5_path, "cpu", backend=backend, options=options)
    started = time.perf_counter()
    warm = T5Summarizer(tiny_t5_path, "cpu", backend=backend, options=options)
    assert time.perf_counter() - started < 2.0
    assert len(list(tmp_path.iterdir())) == 1
    for summarizer in (exported, warm):
        for max_length, min_length in [(12, 0), (25, 5), (7, 7), (40, 0)]:
            got = summarizer.summarize_many(TEXTS, max_length=max_length, min_length=min_length)
            want = torch_t5.summarize_many(TEXTS, max_length=max_length, min_length=min_length)
            assert [(s.text, s.output_tokens, s.input_tokens) for s in got] == [
                (s.text, s.output_tokens, s.input_tokens) for s in want
            ]
            assert {s.backend for s in got} == {backend}
    # Raw greedy rows, before any cut at the end-of-sequence mark.
    encoded = torch_t5.tokenizer(
        ["summarize: " + t for t in TEXTS], padding=True, return_tensors="np"
    )
    for max_new, min_new in [(20, 0), (30, 10)]:
        args = (encoded["input_ids"], encoded["attention_mask"], max_new, min_new)
        want = torch_t5.generator.generate(*args)
        got = exported.generator.generate(*args)
        assert [row[: len(w)] for row, w in zip(got, want, strict=True)] == want


def test_t5_export_chunks_long_texts_as_torch_does(tiny_t5_path: Path, tmp_path: Path):
    options = BackendOptions(cache_dir=tmp_path)
    small = {"input_tokens": 40, "batch_size": 3}
    exported = T5Summarizer(tiny_t5_path, "cpu", backend="onnx", options=options, **small)
    reference = T5Summarizer(tiny_t5_path, "cpu", **small)
    texts = [*TEXTS[:3], LONG, ""]
    got = exported.summarize_many(texts, max_length=10, min_length=2)
    want = reference.summarize_many(texts, max_length=10, min_length=2)
    assert {s.backend for s in got} == {"onnx"}
    assert [replace(s, backend="torch") for s in got] == want
    assert got[3].chunks > 1


def test_t5_int8_reports_its_agreement(tiny_t5_path: Path, tmp_path: Path):
    summarizer = T5Summarizer(
        tiny_t5_path, "cpu", backend="onnx-int8", options=BackendOptions(cache_dir=tmp_path)
    )
    assert 0.0 <= summarizer.generator.token_agreement <= 1.0
    assert summarizer.summarize(TEXTS[0], max_length=8, min_length=0).backend == "onnx-int8"


def test_t5_auto_falls_back_to_torch_saying_why(tiny_t5_path: Path, tmp_path: Path, caplog):
    options = BackendOptions(cache_dir=broken_cache(tmp_path))
    with caplog.at_level(logging.WARNING, logger="inference.backends.choice"):
        summarizer = load_t5_summarizer(tiny_t5_path, "cpu", backend="auto", options=options)
    assert summarizer.backend == "torch"
    assert "inference backend onnx not used for tiny-t5: " in caplog.text
    assert "inference backend openvino not used for tiny-t5: " in caplog.text


# Through a real gpu worker


@pytest.fixture(scope="module")
def private_broker(settings, stack, worker_env, tiny_t5_path, tmp_path_factory):
    """A Redis server of this module's own: its jobs reach only the workers started here."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    server = ensure_redis(url, tmp_path_factory.mktemp("redis"))
    assert server is not None
    app = create_app(
        settings.model_copy(update={"redis_url": url, "summarizer_model_path": tiny_t5_path})
    )
    env = {**worker_env, "REDIS_URL": url, "SUMMARIZER_MODEL_PATH": str(tiny_t5_path)}
    yield app.test_client(), env
    server.stop()


@pytest.mark.parametrize("backend", EXPORTED)
def test_a_backend_serves_jobs_end_to_end(
    backend, private_broker, headers, torch_embedder, torch_t5, tmp_path: Path
):
    client, env = private_broker
    with WorkerProcess({**env, "INFERENCE_BACKEND": backend}, tmp_path, **GPU_POOL):
        embedded = wait_for_job(client, headers, submit_embed(client, headers, SENTENCES)["id"])
        response = client.post(
            "/v1/jobs/summarize",
            json={"text": TEXTS[1], "method": "t5", "max_length": 12, "min_length": 3},
            headers=headers,
        )
        assert response.status_code == 202, response.get_json()
        summarized = wait_for_job(client, headers, response.get_json()["id"])
    assert embedded["status"] == "succeeded", embedded["error"]
    result = embedded["result"]
    assert (result["backend"], result["device"], result["count"]) == (backend, "cpu", 5)
    figure = cosines(np.array(result["vectors"]), torch_embedder.encode(SENTENCES, 8)).min()
    assert figure >= (FP32_MIN_COSINE if backend in EXACT else 0.95)

    assert summarized["status"] == "succeeded", summarized["error"]
    assert summarized["result"]["backend"] == backend
    if backend in EXACT:
        want = torch_t5.summarize(TEXTS[1], max_length=12, min_length=3)
        assert summarized["result"]["text"] == want.text
