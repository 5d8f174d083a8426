"""gzip bodies, job deletion, and rate limits per tenant."""

import gzip
import json
import uuid

import pytest

from api import create_app
from services.tenants import create_api_key

EMBED = {"texts": ["The invoice is due on Friday."]}


def post_raw(client, headers, data, encoding):
    return client.post(
        "/v1/jobs/embed",
        data=data,
        headers={**headers, "Content-Type": "application/json", "Content-Encoding": encoding},
    )


def test_a_gzip_body_is_decoded(client, headers):
    response = post_raw(client, headers, gzip.compress(json.dumps(EMBED).encode()), "gzip")
    assert response.status_code == 202, response.get_json()
    assert post_raw(client, headers, json.dumps(EMBED).encode(), "identity").status_code == 202


def test_a_gzip_bomb_is_413_without_inflating_it(client, headers, settings):
    bomb = gzip.compress(b'{"texts": ["' + b"a" * (settings.max_body_bytes + 1) + b'"]}')
    assert len(bomb) < settings.max_body_bytes // 100
    response = post_raw(client, headers, bomb, "gzip")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, br", "compress"])
def test_other_encodings_are_415(client, headers, encoding):
    response = post_raw(client, headers, json.dumps(EMBED).encode(), encoding)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_content_encoding"


def test_broken_gzip_is_400(client, headers):
    truncated = gzip.compress(json.dumps(EMBED).encode())[:-6]
    for data in (b"not gzip at all", truncated):
        response = post_raw(client, headers, data, "gzip")
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_gzip"


def test_delete_removes_the_job_and_cancel_is_a_post(client, headers):
    job = client.post("/v1/jobs/embed", json=EMBED, headers=headers).get_json()
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert canceled.status_code == 200
    assert canceled.get_json()["status"] == "canceled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 409
    # An active job is canceled, then deleted.
    active = client.post("/v1/jobs/embed", json=EMBED, headers=headers).get_json()
    for job_id in (job["id"], active["id"]):
        response = client.delete(f"/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 204
        assert response.get_data() == b""
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 404


def test_another_tenant_cannot_delete_a_job(client, make_tenant):
    alice, bob = make_tenant(), make_tenant()
    job = client.post("/v1/jobs/embed", json=EMBED, headers=alice).get_json()
    assert client.delete(f"/v1/jobs/{job['id']}", headers=bob).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).status_code == 200


def test_rate_limit_is_429_with_retry_after_per_tenant(stack, settings, make_tenant):
    tenant = f"roomy-{uuid.uuid4().hex[:8]}"
    _, key = create_api_key(settings.database_url, tenant, actor="test")
    roomy = {"Authorization": f"Bearer {key}"}
    app = create_app(
        settings.model_copy(
            update={"rate_limit": "3/minute", "rate_limit_tenants": {tenant: "100/minute"}}
        )
    )
    client = app.test_client()
    alice, bob = make_tenant(), make_tenant()
    statuses = [client.get("/v1/jobs", headers=alice).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/v1/jobs", headers=alice)
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    # Another tenant has its own count; one with its own limit gets more.
    assert client.get("/v1/jobs", headers=bob).status_code == 200
    assert all(client.get("/v1/jobs", headers=roomy).status_code == 200 for _ in range(6))
    # Health, readiness, metrics and the document are never limited.
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert all(client.get(path, headers=alice).status_code == 200 for _ in range(5))


def test_rate_limiting_lets_requests_through_when_redis_is_down(stack, settings, make_tenant):
    app = create_app(
        settings.model_copy(update={"rate_limit": "1/minute", "redis_url": "redis://127.0.0.1:1/0"})
    )
    client, headers = app.test_client(), make_tenant()
    assert [client.get("/v1/jobs", headers=headers).status_code for _ in range(3)] == [200] * 3
