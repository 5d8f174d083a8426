"""Every bad input gets a clear 4xx in the one error shape; none gets a 5xx."""

import json
import uuid

import pytest

from tests.support import submit_embed


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    return body["error"]


def post_embed(client, headers, body, **kwargs):
    return client.post("/v1/jobs/embed", json=body, headers=headers, **kwargs)


# -- authentication -------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer cvq_not-a-real-key",
        "Bearer " + "x" * 5000,
    ],
)
def test_missing_or_wrong_key_is_401(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for response in (
        post_embed(client, headers, {"texts": ["hi"]}),
        client.get("/v1/jobs", headers=headers),
        client.get(f"/v1/jobs/{uuid.uuid4()}", headers=headers),
        client.post(f"/v1/jobs/{uuid.uuid4()}/cancel", headers=headers),
    ):
        error = error_of(response, 401)
        assert error["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_auth_is_checked_before_the_body(client):
    response = client.post("/v1/jobs/embed", data="not json", content_type="text/plain")
    assert error_of(response, 401)["code"] == "unauthorized"


# -- unknown and malformed ids -----------------------------------------------------


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1", "%00", "x" * 300])
def test_unknown_or_malformed_job_id_is_404(client, headers, job_id):
    for response in (
        client.get(f"/v1/jobs/{job_id}", headers=headers),
        client.post(f"/v1/jobs/{job_id}/cancel", headers=headers),
    ):
        assert error_of(response, 404)["code"] in {"job_not_found", "not_found"}


def test_unknown_route_is_404_json(client, headers):
    assert error_of(client.get("/v1/nothing-here", headers=headers), 404)["code"] == "not_found"


def test_wrong_method_is_405_json(client, headers):
    response = client.put("/v1/jobs/embed", json={}, headers=headers)
    assert error_of(response, 405)["code"] == "method_not_allowed"


# -- not JSON, too large -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [("texts=a", "application/x-www-form-urlencoded"), ("hello", "text/plain"), ("{}", None)],
)
def test_body_that_is_not_json_is_415(client, headers, data, content_type):
    response = client.post("/v1/jobs/embed", data=data, content_type=content_type, headers=headers)
    assert error_of(response, 415)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("data", ['{"texts": ["a"]', "{'texts': ['a']}", "", "\xff\xfe", "[1,]"])
def test_broken_json_is_400(client, headers, data):
    response = client.post(
        "/v1/jobs/embed", data=data, content_type="application/json", headers=headers
    )
    assert error_of(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("body", ["[]", '"a string"', "42", "null", '["texts"]'])
def test_json_that_is_not_an_object_is_422(client, headers, body):
    response = client.post(
        "/v1/jobs/embed", data=body, content_type="application/json", headers=headers
    )
    error = error_of(response, 422)
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "body"


def test_body_over_4_mib_is_413(client, headers):
    body = json.dumps({"texts": ["a" * 30_000] * 150})  # ~4.3 MiB
    assert len(body) > 4 * 1024 * 1024
    response = client.post(
        "/v1/jobs/embed", data=body, content_type="application/json", headers=headers
    )
    assert error_of(response, 413)["code"] == "payload_too_large"


# -- validation: 422 naming the field ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "texts"),
        ({"texts": []}, "texts"),
        ({"texts": ["a"] * 257}, "texts"),
        ({"texts": ["a" * 32_001]}, "texts.0"),
        ({"texts": ["ok", "b" * 32_001]}, "texts.1"),
        ({"texts": "just one string"}, "texts"),
        ({"texts": [1, 2]}, "texts.0"),
        ({"texts": [None]}, "texts.0"),
        ({"texts": [["nested"]]}, "texts.0"),
        ({"texts": [""]}, "texts.0"),
        ({"texts": ["a\u0000b"]}, "texts.0"),
        ({"texts": ["a"], "store": "yes"}, "store"),
        ({"texts": ["a"], "store": 1}, "store"),
        ({"texts": ["a"], "metadata": []}, "metadata"),
        ({"texts": ["a"], "metadata": {"k": {"nested": 1}}}, "metadata.k"),
        ({"texts": ["a"], "metadata": {f"k{i}": i for i in range(33)}}, "metadata"),
        ({"texts": ["a"], "metadata": {"k" * 65: 1}}, "metadata"),
        ({"texts": ["a"], "unexpected": True}, "unexpected"),
    ],
)
def test_invalid_embed_body_is_422_naming_the_field(client, headers, body, field):
    error = error_of(post_embed(client, headers, body), 422)
    assert error["code"] == "validation_error"
    fields = [detail["field"] for detail in error["details"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert field.split(".")[0] in error["message"]


def test_limits_are_inclusive(client, headers):
    """Exactly 256 texts, and a text of exactly 32,000 characters, are accepted."""
    assert submit_embed(client, headers, ["short"] * 256)["progress"]["total"] == 256
    assert submit_embed(client, headers, ["word " * 6_400])["progress"]["total"] == 1


def test_unpaired_surrogate_is_422(client, headers):
    body = '{"texts": ["a\\ud800b"]}'
    response = client.post(
        "/v1/jobs/embed", data=body, content_type="application/json", headers=headers
    )
    assert error_of(response, 422)["details"][0]["field"] == "texts.0"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("type=bogus", "type"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=" + "A" * 600, "cursor"),
        ("surprise=1", "surprise"),
    ],
)
def test_invalid_list_query_is_422(client, headers, query, field):
    error = error_of(client.get(f"/v1/jobs?{query}", headers=headers), 422)
    assert error["code"] == "validation_error"
    assert field in [detail["field"] for detail in error["details"]]


HOSTILE_BODIES = [
    '{"texts": ["a"], "texts": 5}',
    '{"texts": [' + "[" * 5000 + "]" * 5000 + "]}",
    '{"texts": ["\\u0000"]}',
    '{"texts": [1e999]}',
    '{"texts": [NaN]}',
    '{"texts": ["a"], "metadata": {"k": 1e400}}',
    '{"texts": ["a"], "metadata": {"k": 123456789012345678901234567890}}',
    '{"texts": ["\\ud83d\\ude00 emoji", "\\u202e rtl"]}',
    '{"\\u0000": 1}',
    '{"texts": ["a"], "metadata": {"\\ud800": 1}}',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_never_get_a_5xx(client, headers, body):
    response = client.post(
        "/v1/jobs/embed", data=body, content_type="application/json", headers=headers
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        error_of(response, response.status_code)


# -- the newer routes: batch, embeddings, long polls, Prefer --------------------------

MODEL = '"model": "all-MiniLM-L6-v2"'
HOSTILE_BY_ROUTE = {
    "/v1/jobs/batch": [
        '{"jobs": [{"type": "embed", "texts": ["a"]}], "jobs": 5}',
        '{"jobs": [' + "[" * 5000 + "]" * 5000 + "]}",
        '{"jobs": [{"type": "embed", "texts": ["\\u0000"]}]}',
        '{"jobs": [{"type": "embed", "texts": [1e999]}]}',
        '{"jobs": [{"type": "embed", "texts": [NaN]}]}',
        '{"jobs": [{"type": "\\ud800"}]}',
        '{"jobs": [{"type": ["embed"]}]}',
        '{"jobs": [{"type": {"embed": 1}}]}',
        '{"jobs": [{"type": null}]}',
        '{"jobs": [{"type": "embed", "type": "summarize", "texts": ["a"]}]}',
        '{"jobs": [{"type": "conversation", "conversation_id": "\\u0000", "messages": []}]}',
        '{"jobs": [{"type": "summarize", "text": "a", "max_length": 1e400}]}',
        '{"jobs": [{"type": "summarize", "text": "a", "max_length": 123456789012345678901234}]}',
        '{"jobs": [{"type": "embed", "texts": ["a"], "metadata": {"\\ud800": 1}}]}',
    ],
    "/v1/embeddings": [
        '{"input": "a", ' + MODEL + ', "input": 5}',
        '{"input": [' + "[" * 5000 + "]" * 5000 + "], " + MODEL + "}",
        '{"input": "\\ud800", ' + MODEL + "}",
        '{"input": "\\u0000", ' + MODEL + "}",
        '{"input": [true, false], ' + MODEL + "}",
        '{"input": [1e999], ' + MODEL + "}",
        '{"input": [[1, 2], [3, "a"]], ' + MODEL + "}",
        '{"input": [[]], ' + MODEL + "}",
        '{"input": [-1, 99999999999999999999999999], ' + MODEL + "}",
        '{"input": "a", ' + MODEL + ', "dimensions": 1e400}',
        '{"input": "a", ' + MODEL + ', "dimensions": 123456789012345678901234567890}',
        '{"input": "a", ' + MODEL + ', "dimensions": true}',
        '{"input": "a", ' + MODEL + ', "encoding_format": null}',
        '{"input": "a", ' + MODEL + ', "user": {"id": 1}}',
        '{"input": "a", "model": "\\ud800"}',
        '{"input": "a", "model": ["all-MiniLM-L6-v2"]}',
        '{"input": "a", "model": "x\\u0000"}',
        '{"input": null, "model": null}',
    ],
}


@pytest.mark.parametrize(
    ("path", "body"),
    [(path, body) for path, bodies in HOSTILE_BY_ROUTE.items() for body in bodies],
)
def test_hostile_bodies_on_newer_routes_never_get_a_5xx(client, headers, path, body):
    response = client.post(path, data=body, content_type="application/json", headers=headers)
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:500]
    error_body = response.get_json()["error"]
    assert error_body["code"]
    assert error_body["message"]


@pytest.mark.parametrize(
    "query",
    [
        "wait=%00",
        "wait=99999999999999999999999",
        "wait=1&wait=2",
        "wait=" + "9" * 5000,
        "encoding_format=%ff",
        "encoding_format=base64&encoding_format=hex",
        "wait=nan",
        "wait=inf",
    ],
)
def test_hostile_job_queries_never_get_a_5xx(client, headers, query):
    job = submit_embed(client, headers, ["a"])
    response = client.get(f"/v1/jobs/{job['id']}?{query}", headers=headers)
    assert 400 <= response.status_code < 500 or response.status_code == 200
    if response.status_code >= 400:
        error_of(response, response.status_code)


@pytest.mark.parametrize(
    "prefer", ['wait="', '"' * 1000, "wait=" + "x" * 5000, "\\", ";;;,,,==", "wait=1e9", "=5"]
)
def test_hostile_prefer_headers_are_ignored(client, headers, prefer):
    response = client.post(
        "/v1/jobs/embed", json={"texts": ["a"]}, headers={**headers, "Prefer": prefer}
    )
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers


@pytest.mark.parametrize("path", ["/v1/jobs/batch", "/v1/embeddings"])
def test_newer_routes_need_a_key_and_json(client, headers, path):
    def code_of(response, status):
        assert response.status_code == status, response.get_data(as_text=True)[:500]
        return response.get_json()["error"]["code"]

    assert code_of(client.post(path, json={}), 401) == "unauthorized"
    response = client.post(path, data="x", content_type="text/plain", headers=headers)
    assert code_of(response, 415) == "unsupported_media_type"
    response = client.post(path, data="{", content_type="application/json", headers=headers)
    assert code_of(response, 400) == "invalid_json"


def test_embeddings_is_post_only(client, headers):
    response = client.get("/v1/embeddings", headers=headers)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_embeddings_errors_carry_openai_type_and_param(client, headers):
    response = client.post(
        "/v1/embeddings", json={"input": "a", "model": "m", "dimensions": 2}, headers=headers
    )
    body = response.get_json()["error"]
    assert response.status_code == 422
    assert set(body) == {"code", "message", "details", "type", "param"}
    assert (body["type"], body["param"]) == ("invalid_request_error", "dimensions")
    unauthorized = client.post("/v1/embeddings", json={"input": "a", "model": "m"}).get_json()
    assert unauthorized["error"]["type"] == "authentication_error"
