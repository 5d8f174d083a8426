"""Health probes, the OpenAPI document, the key command, and what the API imports."""

import re
import subprocess
import sys

from api import create_app
from tests.support import ROOT, free_port, subprocess_env


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_with_everything_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = {"postgresql": "ok", "redis": "ok", "milvus": "ok"}
    assert response.get_json() == {"status": "ready", "checks": checks}


def test_readyz_names_what_is_down(settings, stack):
    dead = f"127.0.0.1:{free_port()}"
    cases = {
        "redis": {"redis_url": f"redis://{dead}/0"},
        "postgresql": {"database_url": f"postgresql+psycopg://postgres@{dead}/convoq"},
        "milvus": {"milvus_uri": f"http://{dead}"},
    }
    for service, update in cases.items():
        client = create_app(settings.model_copy(update=update)).test_client()
        response = client.get("/readyz")
        assert response.status_code == 503
        error = response.get_json()["error"]
        assert error["code"] == "not_ready"
        assert error["message"] == f"not ready: {service} is down"
        assert {"service": service, "status": "down"} in error["details"]


def test_openapi_document_is_generated_from_the_schemas(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/jobs/embed", "/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )
    embed = spec["components"]["schemas"]["EmbedJobIn"]["properties"]["texts"]
    assert (embed["minItems"], embed["maxItems"]) == (1, 256)
    assert embed["items"]["maxLength"] == 32_000
    post = spec["paths"]["/v1/jobs/embed"]["post"]
    assert {"202", "401", "413", "415", "422"} <= set(post["responses"])
    assert post["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_swagger_ui_is_served_at_docs_from_local_assets(client):
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), "no CDN: the UI works offline"
        assert client.get("/" + asset).status_code == 200, asset


def test_create_key_command_prints_a_working_key(settings, stack, client):
    env = subprocess_env({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url})
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "create-key", "--tenant", "acme-cli"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = done.stdout.strip()
    assert key.startswith("cvq_")
    assert "not shown again" in done.stderr
    response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_create_key_command_refuses_an_empty_tenant(settings, stack):
    env = subprocess_env({"DATABASE_URL": settings.database_url})
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "create-key", "--tenant", "  "],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--tenant" in done.stderr


def test_the_api_process_never_imports_torch(settings, stack):
    probe = (
        "import sys\n"
        "from api import create_app\n"
        "app = create_app()\n"
        "client = app.test_client()\n"
        "assert client.get('/openapi.json').status_code == 200\n"
        "assert client.post('/v1/jobs/embed', json={}).status_code == 401\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules)\n"
        "print(heavy)\n"
    )
    env = subprocess_env({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url})
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_openapi_documents_waits_batches_and_embeddings(client):
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert {"/v1/jobs/batch", "/v1/embeddings"} <= set(paths)
    for route in ("embed", "summarize", "conversation", "batch"):
        post = paths[f"/v1/jobs/{route}"]["post"]
        assert {"200", "202", "422"} <= set(post["responses"]), route
        headers = [p["name"] for p in post["parameters"] if p["in"] == "header"]
        assert headers == ["Prefer", "Idempotency-Key"]
        assert "Preference-Applied" in post["responses"]["200"]["headers"]
        assert "Vary" in post["responses"]["202"]["headers"]
    assert "Location" in paths["/v1/jobs/embed"]["post"]["responses"]["202"]["headers"]
    get = paths["/v1/jobs/{job_id}"]["get"]
    query = {p["name"]: p["schema"] for p in get["parameters"] if p["in"] == "query"}
    assert query["wait"]["anyOf"][0]["maximum"] == 60
    assert query["encoding_format"]["anyOf"][0]["enum"] == ["float", "base64"]
    schemas = spec["components"]["schemas"]
    assert schemas["BatchJobsIn"]["properties"]["jobs"]["maxItems"] == 100
    assert "encoding_format" in schemas["EmbedJobIn"]["properties"]
    embeddings = paths["/v1/embeddings"]["post"]
    assert embeddings["security"] == [{"bearer": []}]
    assert {"200", "401", "404", "422", "503", "504"} <= set(embeddings["responses"])
    body = schemas["EmbeddingsIn"]["properties"]
    assert {"input", "model", "encoding_format", "dimensions", "user"} == set(body)
    assert "type" in schemas["OpenAIErrorBody"]["properties"]
