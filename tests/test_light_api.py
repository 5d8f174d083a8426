"""The API process stays light: no model, dataframe or gRPC library is ever imported, and
gunicorn's master imports nothing that would block gevent workers.

The RSS of real gunicorn workers after serving requests is checked where a real
server runs: ``test_sync_wait.py`` (500 waits) and ``test_openai_embeddings.py``
(a session of every kind of request).
"""

import json
import subprocess
import sys

from tests.support import ROOT, PrivateDb, private_broker, subprocess_env

# Heavy or process-unsafe in the API: models and their runtimes, pandas and pyarrow
# (pymilvus brings them), gRPC, and our own model code.
FORBIDDEN = (
    "torch",
    "transformers",
    "sentence_transformers",
    "tokenizers",
    "onnxruntime",
    "openvino",
    "pandas",
    "pyarrow",
    "grpc",
    "pymilvus",
    "inference",
    "vectorstore",
)

# One request of each kind, through the test client of an app built from the
# environment. The broker is one no worker reads, and the gpu pool's answers are
# waited for 0.2 s, so search and /v1/embeddings answer 504.
PROBE = """
import json, os, sys, uuid
from api import create_app

app = create_app()
client = app.test_client()
auth = {"Authorization": "Bearer " + os.environ["CONVOQ_TEST_KEY"]}
wait = {**auth, "Prefer": "wait=1"}
statuses = {}

def call(name, method, path, **kwargs):
    statuses[name] = getattr(client, method)(path, **kwargs).status_code

embed = client.post("/v1/jobs/embed", json={"texts": ["a"]}, headers=wait).get_json()
messages = [{"role": "user", "content": "hello"}]
call("healthz", "get", "/healthz")
call("readyz", "get", "/readyz")
call("metrics", "get", "/metrics")
call("openapi", "get", "/openapi.json")
call("docs", "get", "/docs")
call("summarize", "post", "/v1/jobs/summarize", json={"text": "a. b."}, headers=auth)
call("conversation", "post", "/v1/jobs/conversation",
     json={"conversation_id": "light", "messages": messages}, headers=auth)
call("batch", "post", "/v1/jobs/batch",
     json={"jobs": [{"type": "embed", "texts": ["b"]}]}, headers=wait)
call("get", "get", f"/v1/jobs/{embed['id']}?encoding_format=base64", headers=auth)
call("long poll", "get", f"/v1/jobs/{embed['id']}?wait=1", headers=auth)
call("list", "get", "/v1/jobs?limit=2", headers=auth)
call("cancel", "post", f"/v1/jobs/{embed['id']}/cancel", headers=auth)
call("delete", "delete", f"/v1/jobs/{embed['id']}", headers=auth)
call("conversation get", "get", "/v1/conversations/light", headers=auth)
call("conversation erase", "delete", "/v1/conversations/light", headers=auth)
erased = client.delete("/v1/users/light-user", headers=auth)
statuses["user erase"] = erased.status_code
call("erasure get", "get", erased.headers["Location"], headers=auth)
call("search", "post", "/v1/search", json={"query": "hello"}, headers=auth)
call("embeddings", "post", "/v1/embeddings",
     json={"input": "hello", "model": "all-MiniLM-L6-v2"}, headers=auth)
call("queues", "get", "/v1/queues", headers=auth)
call("bad body", "post", "/v1/jobs/embed", json={"texts": []}, headers=auth)
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"statuses": statuses, "loaded": loaded}))
"""

EXPECTED = {
    "healthz": 200,
    "readyz": 200,
    "metrics": 200,
    "openapi": 200,
    "docs": 200,
    "summarize": 202,
    "conversation": 202,
    "batch": 202,
    "get": 200,
    "long poll": 200,
    "list": 200,
    "cancel": 200,
    "delete": 204,
    "conversation get": 404,
    "conversation erase": 202,
    "user erase": 202,
    "erasure get": 200,
    "search": 504,
    "embeddings": 504,
    "queues": 200,
    "bad body": 422,
}


def test_serving_every_kind_of_request_imports_nothing_heavy(settings, stack, make_tenant):
    key = make_tenant()["Authorization"].split()[1]
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        env = subprocess_env(
            {
                "DATABASE_URL": settings.database_url,
                "REDIS_URL": url,
                "MILVUS_URI": settings.milvus_uri,
                "SEARCH_EMBED_TIMEOUT": "0.2",
                "EMBEDDINGS_TIMEOUT": "0.2",
                "CONVOQ_TEST_KEY": key,
            }
        )
        done = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["statuses"] == EXPECTED
    assert sorted(set(FORBIDDEN) & set(report["loaded"])) == []


def test_the_gunicorn_config_imports_nothing_that_blocks_gevent(settings, tmp_path):
    """The master imports config/gunicorn.py before forking. A client library imported
    there would pick its blocking strategy before the worker's monkey-patching
    (psycopg chooses its wait function at import), so none may be."""
    probe = (
        "import json, runpy, sys\n"
        "runpy.run_path('config/gunicorn.py')\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    env = subprocess_env(
        {"DATABASE_URL": settings.database_url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    blocking = {"psycopg", "sqlalchemy", "redis", "kombu", "celery", "api", "services", "worker"}
    assert sorted(blocking & loaded) == []
    assert sorted(set(FORBIDDEN) & loaded) == []
