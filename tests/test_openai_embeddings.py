"""``POST /v1/embeddings`` through the official ``openai`` package, against the real
gunicorn API and the shared gpu worker."""

import base64

import numpy as np
import openai
import pytest
import requests
from sentence_transformers import SentenceTransformer

from api import create_app
from inference.embedder import default_model_path
from tests.api_server import api_server
from tests.support import PrivateDb, free_port, private_broker

TEXTS = [
    "How do I reset my password?",
    "The invoice for October is attached.",
    "Grüezi! Wann fährt der nächste Zug nach Bern?",
    "a",
    "word " * 400,  # past the model's window of 256 tokens: truncated, as encode does
]
MODEL = "all-MiniLM-L6-v2"
MAX_WORKER_RSS_MIB = 150


@pytest.fixture(scope="module")
def reference_model():
    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def api(settings, stack, gpu_worker, tmp_path_factory):
    with api_server(settings, tmp_path_factory.mktemp("api")) as server:
        yield server


@pytest.fixture(scope="module")
def key(make_tenant):
    return make_tenant()["Authorization"].split()[1]


@pytest.fixture(scope="module")
def openai_client(api, key):
    return openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def expected(reference_model, texts):
    return reference_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def cosines(got, want) -> np.ndarray:
    got = np.asarray(got, dtype=np.float64)
    return np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def token_count(reference_model, texts) -> int:
    encoded = reference_model.tokenizer(
        list(texts), add_special_tokens=True, truncation=True, max_length=256
    )
    return sum(len(ids) for ids in encoded["input_ids"])


def test_a_string(openai_client, reference_model):
    response = openai_client.embeddings.create(input=TEXTS[0], model=MODEL, encoding_format="float")
    assert response.object == "list"
    assert response.model == MODEL
    (item,) = response.data
    assert (item.object, item.index, len(item.embedding)) == ("embedding", 0, 384)
    assert cosines([item.embedding], expected(reference_model, TEXTS[:1])).min() >= 0.9999
    tokens = token_count(reference_model, TEXTS[:1])
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens > 0


def test_a_list_in_order_with_usage(openai_client, reference_model):
    response = openai_client.embeddings.create(input=TEXTS, model=MODEL, encoding_format="float")
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    got = [item.embedding for item in response.data]
    assert cosines(got, expected(reference_model, TEXTS)).min() >= 0.9999
    # The worker counts tokens with the special tokens, each text truncated at 256.
    assert response.usage.prompt_tokens == token_count(reference_model, TEXTS)
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_base64_decodes_to_the_floats(openai_client, reference_model):
    floats = openai_client.embeddings.create(input=TEXTS, model=MODEL, encoding_format="float")
    packed = openai_client.embeddings.create(input=TEXTS, model=MODEL, encoding_format="base64")
    # Asked for explicitly, base64 comes back as it was sent: a string per text.
    assert all(isinstance(item.embedding, str) for item in packed.data)
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in packed.data]
    )
    assert decoded.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(decoded, [item.embedding for item in floats.data], atol=1e-6)
    assert cosines(decoded, expected(reference_model, TEXTS)).min() >= 0.9999


def test_the_clients_default_is_base64_decoded_to_floats(openai_client, reference_model):
    """Without encoding_format the openai package asks for base64 and decodes it itself
    (with numpy when present) into lists of floats."""
    raw = openai_client.embeddings.with_raw_response.create(input=TEXTS[:2], model=MODEL)
    sent = raw.http_response.json()
    assert all(isinstance(item["embedding"], str) for item in sent["data"])
    response = raw.parse()
    assert all(isinstance(item.embedding, list) for item in response.data)
    assert (
        cosines(
            [item.embedding for item in response.data], expected(reference_model, TEXTS[:2])
        ).min()
        >= 0.9999
    )


def test_the_models_hub_name_is_an_alias(openai_client):
    name = f"sentence-transformers/{MODEL}"
    response = openai_client.embeddings.create(input="hi", model=name, dimensions=384, user="u-1")
    assert response.model == name
    assert len(response.data[0].embedding) == 384


def test_an_unknown_model_is_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.embeddings.create(input="hi", model="text-embedding-3-small")
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert caught.value.type == "invalid_request_error"


def test_a_wrong_key_is_an_authentication_error(api):
    wrong = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="cvq_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.embeddings.create(input="hi", model=MODEL)
    assert caught.value.type == "authentication_error"
    assert caught.value.code == "unauthorized"


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"input": ""}, "input.0"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input.1"),
        ({"input": ["t"] * 257}, "input"),
        ({"input": "x" * 32_001}, "input.0"),
        ({"input": "hi", "dimensions": 128}, "dimensions"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": [[1, 2], [3]]}, "input"),
        ({"input": "hi", "model": ""}, "model"),
        ({"input": "hi", "extra_body": {"surprise": 1}}, "surprise"),
    ],
)
def test_bad_requests_are_unprocessable(openai_client, arguments, param):
    arguments = {"model": MODEL, **arguments}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        openai_client.embeddings.create(**arguments)
    error = caught.value
    assert error.status_code == 422
    assert (error.code, error.type, error.param) == (
        "validation_error",
        "invalid_request_error",
        param,
    )
    assert error.body["details"][0]["field"] == param


def test_token_arrays_are_refused_clearly(openai_client):
    with pytest.raises(openai.UnprocessableEntityError, match="token arrays are not supported"):
        openai_client.embeddings.create(input=[101, 2023, 102], model=MODEL)


def test_the_limits_are_inclusive(openai_client):
    response = openai_client.embeddings.create(
        input=["t"] * 256, model=MODEL, encoding_format="base64"
    )
    assert len(response.data) == 256


def test_the_api_workers_stay_light_after_a_session(api, key, openai_client):
    """Jobs, a wait, a search and embeddings served: each gunicorn worker < 150 MB."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    job = http.post(
        f"{api.base_url}/v1/jobs/embed",
        json={"texts": TEXTS, "store": True, "user_id": "rss"},
        headers={"Prefer": "wait=30"},
    )
    assert job.status_code in {200, 202}
    assert http.get(f"{api.base_url}/v1/jobs", params={"limit": 5}).status_code == 200
    search = http.post(f"{api.base_url}/v1/search", json={"query": "password", "top_k": 3})
    assert search.status_code == 200, search.text
    assert http.get(f"{api.base_url}/v1/queues").status_code == 200
    assert http.get(f"{api.base_url}/openapi.json").status_code == 200
    assert http.get(f"{api.base_url}/metrics").status_code == 200
    for _ in range(20):
        openai_client.embeddings.create(input=TEXTS, model=MODEL)
    rss = api.worker_rss_mib()
    assert rss, "no gunicorn workers found"
    assert max(rss.values()) < MAX_WORKER_RSS_MIB, rss


# -- when the gpu pool does not answer (no HTTP server needed) ---------------------------


def test_no_gpu_worker_is_a_timeout(settings, stack, headers):
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        app = create_app(settings.model_copy(update={"redis_url": url, "embeddings_timeout": 0.5}))
        response = app.test_client().post(
            "/v1/embeddings", json={"input": "hi", "model": MODEL}, headers=headers
        )
    assert response.status_code == 504
    error = response.get_json()["error"]
    assert (error["code"], error["type"], error["param"]) == (
        "embeddings_timeout",
        "server_error",
        None,
    )


def test_redis_down_is_503(settings, stack, headers):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(settings.model_copy(update={"redis_url": dead}))
    response = app.test_client().post(
        "/v1/embeddings", json={"input": "hi", "model": MODEL}, headers=headers
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == "broker_unavailable"
