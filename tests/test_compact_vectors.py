"""Embed job results as float lists or as base64 of little-endian float32, either way."""

import base64
import struct

import pytest

from services import vectors


def decode(text: str) -> list[float]:
    raw = base64.b64decode(text)
    assert len(raw) == 384 * 4
    return list(struct.unpack("<384f", raw))


def submit_and_wait(client, headers, **body):
    response = client.post(
        "/v1/jobs/embed",
        json={"texts": ["The invoice is due on Friday.", "Reset my password"], **body},
        headers={**headers, "Prefer": "wait=30"},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_base64_decodes_to_exactly_the_floats(client, headers, gpu_worker):
    job = submit_and_wait(client, headers, encoding_format="base64")
    packed = job["result"]["vectors"]
    assert all(isinstance(vector, str) for vector in packed)
    # The job keeps its format; ?encoding_format= overrides it.
    again = client.get(job["links"]["self"], headers=headers).get_json()
    assert again["result"]["vectors"] == packed
    floats = client.get(f"{job['links']['self']}?encoding_format=float", headers=headers)
    floats = floats.get_json()["result"]["vectors"]
    assert [decode(vector) for vector in packed] == floats
    assert [vectors.decode_base64(vector) for vector in packed] == floats
    assert job["result"]["dimensions"] == 384


def test_float_stays_the_default_and_base64_can_be_asked_on_read(client, headers, gpu_worker):
    job = submit_and_wait(client, headers)
    floats = job["result"]["vectors"]
    assert all(isinstance(value, float) for value in floats[0])
    as_base64 = client.get(f"{job['links']['self']}?encoding_format=base64", headers=headers)
    assert [decode(vector) for vector in as_base64.get_json()["result"]["vectors"]] == floats
    # Each vector is unit length, as stored: nothing was lost in float32.
    assert abs(sum(v * v for v in floats[0]) - 1) < 1e-5


@pytest.mark.parametrize("value", ["hex", "", "FLOAT", 1, None])
def test_unknown_encoding_format_is_422(client, headers, value):
    response = client.post(
        "/v1/jobs/embed", json={"texts": ["a"], "encoding_format": value}, headers=headers
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == "encoding_format"


@pytest.mark.parametrize("query", ["encoding_format=hex", "encoding_format=", "surprise=1"])
def test_unknown_read_query_is_422(client, headers, query):
    job = client.post("/v1/jobs/embed", json={"texts": ["a"]}, headers=headers).get_json()
    response = client.get(f"{job['links']['self']}?{query}", headers=headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == query.split("=")[0]
