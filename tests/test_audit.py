"""Key revocation and GET /v1/audit: a revoked key no longer authenticates, and each
tenant reads its own entries, newest first, filtered and a page at a time."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.tenants import authenticate, create_api_key


@pytest.fixture
def tenant(settings, stack):
    """A tenant with two keys: one to read the log with, one to revoke."""
    name = f"audit-{uuid.uuid4().hex[:12]}"
    _, reader_key = create_api_key(settings.database_url, name, actor="test")
    doomed, doomed_key = create_api_key(settings.database_url, name, actor="test")
    return name, {"Authorization": f"Bearer {reader_key}"}, doomed.key_prefix, doomed_key


def _list(client, headers, query=""):
    response = client.get(f"/v1/audit{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_revoked_key_is_refused_and_the_revocation_audited(app, client, settings, tenant):
    name, headers, prefix, key = tenant
    assert authenticate(settings.database_url, key) is not None
    runner = app.test_cli_runner()
    result = runner.invoke(args=["revoke-key", "--prefix", prefix])
    assert result.exit_code == 0, result.output
    assert f"{prefix} of tenant {name!r} is revoked" in result.output

    assert authenticate(settings.database_url, key) is None
    refused = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers=headers).status_code == 200, "the other key works"

    again = runner.invoke(args=["revoke-key", "--prefix", prefix, "--tenant", name])
    assert (again.exit_code, "was already revoked" in again.output) == (0, True), again.output
    unknown = runner.invoke(args=["revoke-key", "--prefix", "cvq_nosuchkey"])
    assert (unknown.exit_code, "no API key" in unknown.output) == (1, True), unknown.output

    entries = _list(client, headers)["entries"]
    assert [(e["action"], e["actor"], e["target_id"]) for e in entries] == [
        ("api_key.revoke", "cli", prefix),
        ("api_key.create", "test", prefix),
        ("api_key.create", "test", headers["Authorization"][7:19]),
    ], "newest first; revoking a revoked key adds nothing"


def test_the_log_is_filtered_paged_and_the_tenants_own(client, make_tenant, tenant):
    _, headers, prefix, _ = tenant
    first = _list(client, headers, "?limit=1")
    assert len(first["entries"]) == 1
    second = _list(client, headers, first["links"]["next"].removeprefix("/v1/audit"))
    assert second["entries"][0]["id"] < first["entries"][0]["id"]
    assert second["next_cursor"] is None

    created = _list(client, headers, "?action=api_key.create")["entries"]
    assert len(created) == 2
    assert {entry["action"] for entry in created} == {"api_key.create"}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+", "%2B")
    assert _list(client, headers, f"?since={future}")["entries"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(_list(client, headers, f"?since={past}")["entries"]) == 2
    for since in ("0.5", "2026-01-31", "2026-01-31T12:00:00"):
        refused = client.get(f"/v1/audit?since={since}", headers=headers)
        assert refused.status_code == 422, since

    others = _list(client, make_tenant())["entries"]
    assert prefix not in {entry["target_id"] for entry in others}

    bad = client.get("/v1/audit?cursor=not-one-of-ours", headers=headers)
    assert bad.status_code == 422
    assert bad.get_json()["error"]["details"][0]["field"] == "cursor"
    assert client.get("/v1/audit?limit=0", headers=headers).status_code == 422
    assert client.get("/v1/audit").status_code == 401
