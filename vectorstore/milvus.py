"""The memory collection in Milvus, through pymilvus ``MilvusClient``.

Every read and delete is scoped to one tenant by the code here. Reads use
Strong consistency, so a search right after an upsert sees the rows on a
Milvus server too (Milvus Lite always does).
"""

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from pymilvus import CollectionSchema, DataType, MilvusClient
from pymilvus.exceptions import ErrorCode, MilvusException, MilvusUnavailableException

from config import Settings
from vectorstore import expressions
from vectorstore.records import (
    DIMENSION,
    ID_MAX_BYTES,
    KIND_MAX_BYTES,
    REF_MAX_BYTES,
    SNIPPET_MAX_BYTES,
    TENANT_MAX_BYTES,
    MemoryKind,
    MemoryRecord,
    SearchHit,
    truncate_utf8,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_COLLECTION = "convoq_memory"
VECTOR_FIELD = "vector"
METRIC = "COSINE"
CONSISTENCY = "Strong"
MAX_TOP_K = 16_384
UPSERT_BATCH = 500

# name -> (type, params): the schema built and the schema expected of an existing collection.
FIELDS: dict[str, tuple[DataType, dict[str, int]]] = {
    "id": (DataType.VARCHAR, {"max_length": ID_MAX_BYTES}),
    "tenant": (DataType.VARCHAR, {"max_length": TENANT_MAX_BYTES}),
    "user_id": (DataType.VARCHAR, {"max_length": REF_MAX_BYTES}),
    "conversation_id": (DataType.VARCHAR, {"max_length": REF_MAX_BYTES}),
    "kind": (DataType.VARCHAR, {"max_length": KIND_MAX_BYTES}),
    "text": (DataType.VARCHAR, {"max_length": SNIPPET_MAX_BYTES}),
    "metadata": (DataType.JSON, {}),
    VECTOR_FIELD: (DataType.FLOAT_VECTOR, {"dim": DIMENSION}),
}
PRIMARY_KEY = "id"
OUTPUT_FIELDS = ["user_id", "conversation_id", "kind", "text", "metadata"]

# Milvus status codes. 2 is pymilvus's "cannot connect" and the server's
# "service unavailable"; 101 is "collection not loaded".
_UNAVAILABLE_CODES = {2, ErrorCode.RATE_LIMIT}
_NOT_LOADED = 101
_UNAVAILABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class MemoryStoreError(RuntimeError):
    """The memory collection cannot be used as it is."""


class SchemaMismatchError(MemoryStoreError):
    """A collection of that name exists with another schema or index."""


class MilvusUnavailableError(MemoryStoreError):
    """Milvus did not answer, or not in time: retry later."""


# What a task retries with backoff. The store raises nothing else for an
# unreachable, hung or overloaded Milvus.
TRANSIENT_MILVUS_ERRORS: tuple[type[Exception], ...] = (MilvusUnavailableError,)


def is_transient(exc: BaseException) -> bool:
    """True for pymilvus and gRPC errors that mean "Milvus is unreachable or slow"."""
    if isinstance(exc, MilvusUnavailableError | MilvusUnavailableException):
        return True
    if isinstance(exc, grpc.FutureTimeoutError):
        return True
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() in _UNAVAILABLE_GRPC
    if isinstance(exc, MilvusException):
        # pymilvus gives up retrying an unreachable server with the gRPC status as the code.
        return bool(exc.retriable) or exc.code in _UNAVAILABLE_CODES | _UNAVAILABLE_GRPC
    return False


def _already_exists(exc: MilvusException) -> bool:
    return "already exist" in str(exc.message).lower()


def collection_schema() -> CollectionSchema:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for name, (data_type, params) in FIELDS.items():
        schema.add_field(name, data_type, is_primary=name == PRIMARY_KEY, **params)
    return schema


def _index_params() -> Any:
    params = MilvusClient.prepare_index_params()
    params.add_index(field_name=VECTOR_FIELD, index_type="AUTOINDEX", metric_type=METRIC)
    return params


def _schema_problems(description: dict[str, Any]) -> list[str]:
    found = {field["name"]: field for field in description.get("fields", [])}
    problems = [f"unexpected field {name!r}" for name in found.keys() - FIELDS.keys()]
    for name, (data_type, params) in FIELDS.items():
        field = found.get(name)
        if field is None:
            problems.append(f"no field {name!r}")
            continue
        if field["type"] != data_type:
            problems.append(f"{name} is {field['type'].name}, not {data_type.name}")
        for key, expected in params.items():
            actual = field.get("params", {}).get(key)
            if actual is None or int(actual) != expected:
                problems.append(f"{name} has {key}={actual}, not {expected}")
        if bool(field.get("is_primary")) != (name == PRIMARY_KEY):
            problems.append(f"{name} is{'' if field.get('is_primary') else ' not'} the primary key")
    return problems


def _vector(values: Any) -> list[float]:
    vector = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(vector) != DIMENSION:
        raise ValueError(f"a vector has {DIMENSION} dimensions, not {len(vector)}")
    return [float(value) for value in vector]


def _bounded(name: str, value: str | None, max_bytes: int, *, required: bool = False) -> str:
    value = value or ""
    if required and not value:
        raise ValueError(f"{name} must be a non-empty string")
    if len(value.encode()) > max_bytes:
        raise ValueError(f"{name} is longer than {max_bytes} bytes of UTF-8")
    return value


def _row(record: MemoryRecord) -> dict[str, Any]:
    return {
        "id": _bounded("id", record.id, ID_MAX_BYTES, required=True),
        "tenant": _bounded("tenant", record.tenant, TENANT_MAX_BYTES, required=True),
        "user_id": _bounded("user_id", record.user_id, REF_MAX_BYTES),
        "conversation_id": _bounded("conversation_id", record.conversation_id, REF_MAX_BYTES),
        "kind": MemoryKind(record.kind).value,
        "text": truncate_utf8(record.text, SNIPPET_MAX_BYTES),
        "metadata": dict(record.metadata),
        VECTOR_FIELD: _vector(record.vector),
    }


def _hit(hit: dict[str, Any]) -> SearchHit:
    entity = hit["entity"]
    return SearchHit(
        id=hit["id"],
        score=float(hit["distance"]),
        kind=MemoryKind(entity["kind"]),
        user_id=entity["user_id"] or None,
        conversation_id=entity["conversation_id"] or None,
        text=entity["text"],
        metadata=entity.get("metadata") or {},
    )


class MemoryStore:
    """The memory collection at ``uri``: one gRPC client per process, made on first use.

    ``timeout`` (seconds) bounds every call, pymilvus's own retries included.
    """

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION, timeout: float = 10) -> None:
        self.uri = uri
        self.collection = collection
        self.timeout = timeout
        self._lock = threading.Lock()
        self._clients: dict[int, MilvusClient] = {}
        _stores.add(self)

    def __repr__(self) -> str:
        return f"MemoryStore({self.uri!r}, {self.collection!r})"

    def _client(self, timeout: float) -> MilvusClient:
        pid = os.getpid()
        client = self._clients.get(pid)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(pid)
            if client is None:
                # Dedicated: pymilvus otherwise shares one channel per address
                # process-wide, and a forked child would use its parent's. The
                # parent's client is dropped unclosed: its channel is the parent's.
                # Subchannels of its own: after Milvus restarts, a reconnect would
                # otherwise reuse the failed connection and wait out its backoff.
                client = MilvusClient(
                    uri=self.uri,
                    timeout=timeout,
                    dedicated=True,
                    grpc_options={"grpc.use_local_subchannel_pool": 1},
                )
                self._clients = {pid: client}
            return client

    def _call(self, operation: Callable[[MilvusClient], T], timeout: float | None = None) -> T:
        try:
            client = self._client(timeout or self.timeout)
            try:
                return operation(client)
            except MilvusException as exc:
                if exc.code != _NOT_LOADED:
                    raise
                # Milvus Lite forgets which collections were loaded when it restarts.
                client.load_collection(self.collection, timeout=self.timeout)
                return operation(client)
        except Exception as exc:
            if is_transient(exc):
                raise MilvusUnavailableError(f"Milvus at {self.uri} is unavailable: {exc}") from exc
            raise

    def close(self) -> None:
        """Close this process's client; the next call opens a new one."""
        with self._lock:
            client = self._clients.pop(os.getpid(), None)
        if client is not None:
            client.close()

    def ping(self, timeout: float | None = None) -> None:
        """Raise ``MilvusUnavailableError`` unless Milvus answers within ``timeout``."""
        seconds = timeout or self.timeout
        self._call(lambda client: client.get_server_version(timeout=seconds), timeout=seconds)

    def ensure_collection(self) -> None:
        """Create the collection, its COSINE index, and load it, unless done already.

        Safe when several processes run it at once. Raises ``SchemaMismatchError``
        when the name is taken by a collection of another shape.
        """
        self._call(self._ensure_collection)

    def _ensure_collection(self, client: MilvusClient) -> None:
        name, timeout = self.collection, self.timeout
        if not client.has_collection(name, timeout=timeout):
            try:
                client.create_collection(
                    name,
                    schema=collection_schema(),
                    index_params=_index_params(),
                    consistency_level=CONSISTENCY,
                    timeout=timeout,
                )
                log.info("created Milvus collection %s", name)
            except MilvusException as exc:
                # Another process created it (or its index) first.
                if not _already_exists(exc):
                    raise
        problems = _schema_problems(client.describe_collection(name, timeout=timeout))
        if problems:
            raise self._mismatch(f"has another schema ({'; '.join(problems)})")
        indexes = client.list_indexes(name, field_name=VECTOR_FIELD, timeout=timeout)
        if not indexes:
            try:
                client.create_index(name, _index_params(), timeout=timeout)
            except MilvusException as exc:
                if not _already_exists(exc):
                    raise
            indexes = client.list_indexes(name, field_name=VECTOR_FIELD, timeout=timeout)
        metric = client.describe_index(name, indexes[0], timeout=timeout).get("metric_type")
        if str(metric).upper() != METRIC:
            raise self._mismatch(f"indexes {VECTOR_FIELD} with metric {metric}, not {METRIC}")
        client.load_collection(name, timeout=timeout)

    def _mismatch(self, problem: str) -> SchemaMismatchError:
        return SchemaMismatchError(
            f"Milvus collection {self.collection!r} at {self.uri} {problem}: drop it, "
            "or name another collection in MILVUS_COLLECTION"
        )

    def has_collection(self) -> bool:
        return self._call(
            lambda client: client.has_collection(self.collection, timeout=self.timeout)
        )

    def describe_fields(self) -> dict[str, dict[str, Any]]:
        """The collection's fields as ``{name: {"type", "params", "is_primary"}}``."""
        description = self._call(
            lambda client: client.describe_collection(self.collection, timeout=self.timeout)
        )
        return {
            field["name"]: {
                "type": DataType(field["type"]).name,
                "params": {
                    key: int(value) if str(value).isdigit() else value
                    for key, value in field.get("params", {}).items()
                },
                "is_primary": bool(field.get("is_primary")),
            }
            for field in description["fields"]
        }

    def count_all(self) -> int:
        """Every tenant's rows: for backups and restores, never for a tenant's request."""
        result = self._call(
            lambda client: client.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        )
        return int(result[0]["count(*)"])

    def scan_all(self, batch_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Every tenant's rows, every field and the vector, in batches: for backups only.

        On a Milvus server the pages are read at the timestamp of the first one,
        so the scan sees one state of the collection; Milvus Lite reads each page
        as it is then.
        """
        return self._scan("", list(FIELDS), batch_size)

    def _scan(self, expr: str, fields: list[str], batch: int) -> Iterator[list[dict[str, Any]]]:
        iterator = self._call(
            lambda client: client.query_iterator(
                self.collection,
                batch_size=batch,
                filter=expr,
                output_fields=fields,
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        )
        try:
            while page := self._call(lambda client: iterator.next()):
                yield page
        finally:
            iterator.close()

    def drop_collection(self) -> None:
        """Drop the collection and every vector in it."""
        self._call(lambda client: client.drop_collection(self.collection, timeout=self.timeout))

    def upsert(self, records: Iterable[MemoryRecord]) -> int:
        """Insert or replace rows by id; returns how many distinct rows were written."""
        # Milvus refuses a batch that repeats a primary key; the last record wins.
        rows = list({row["id"]: row for row in map(_row, records)}.values())
        for start in range(0, len(rows), UPSERT_BATCH):
            batch = rows[start : start + UPSERT_BATCH]
            self._call(
                lambda client, batch=batch: client.upsert(
                    self.collection, batch, timeout=self.timeout
                )
            )
        return len(rows)

    def delete(
        self,
        tenant: str,
        *,
        conversation_id: str | None = None,
        user_id: str | None = None,
        ids: Sequence[str] | None = None,
        conversation_ids: Sequence[str] | None = None,
    ) -> int:
        """Delete the tenant's rows matching every selector given; returns the count.

        At least one selector is required: a forgotten argument must not erase a tenant.
        """
        selectors = (conversation_id, user_id, ids, conversation_ids)
        if all(selector is None for selector in selectors):
            raise ValueError("delete needs conversation_id, user_id, ids or conversation_ids")
        if (ids is not None and not ids) or (conversation_ids is not None and not conversation_ids):
            return 0
        expr = expressions.scope(
            tenant,
            conversation_id=conversation_id,
            user_id=user_id,
            ids=ids,
            conversation_ids=conversation_ids,
        )
        result = self._call(
            lambda client: client.delete(self.collection, filter=expr, timeout=self.timeout)
        )
        # pymilvus answers with the deleted ids, or {"delete_count": n}.
        return len(result) if isinstance(result, list) else int(result.get("delete_count", 0))

    def search(
        self,
        tenant: str,
        vector: Any,
        top_k: int = 10,
        *,
        user_id: str | None = None,
        conversation_id: str | None = None,
        kind: MemoryKind | str | None = None,
    ) -> list[SearchHit]:
        """The tenant's ``top_k`` rows nearest to ``vector``, most similar first."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}")
        query = _vector(vector)
        expr = expressions.scope(
            tenant, user_id=user_id, conversation_id=conversation_id, kind=kind
        )
        result = self._call(
            lambda client: client.search(
                self.collection,
                data=[query],
                limit=top_k,
                filter=expr,
                output_fields=OUTPUT_FIELDS,
                anns_field=VECTOR_FIELD,
                search_params={"metric_type": METRIC},
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        )
        return [_hit(hit) for hit in result[0]]

    def count(
        self,
        tenant: str,
        *,
        user_id: str | None = None,
        conversation_id: str | None = None,
        kind: MemoryKind | str | None = None,
        conversation_ids: Sequence[str] | None = None,
    ) -> int:
        """How many of the tenant's rows match the filters."""
        if conversation_ids is not None and not conversation_ids:
            return 0
        expr = expressions.scope(
            tenant,
            user_id=user_id,
            conversation_id=conversation_id,
            kind=kind,
            conversation_ids=conversation_ids,
        )
        result = self._call(
            lambda client: client.query(
                self.collection,
                filter=expr,
                output_fields=["count(*)"],
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        )
        return int(result[0]["count(*)"])

    def snippets(self, tenant: str, *, batch: int = 1000) -> dict[str, str]:
        """Every row of the tenant: its id and its text snippet, read a page at a time."""
        pages = self._scan(expressions.scope(tenant), ["text"], batch)
        return {row["id"]: row["text"] for page in pages for row in page}


_stores: "weakref.WeakSet[MemoryStore]" = weakref.WeakSet()
_cache: dict[tuple[str, str, float], MemoryStore] = {}
_cache_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay locked in the child.
    global _cache_lock
    _cache_lock = threading.Lock()
    for store in list(_stores):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_memory_store(settings: Settings) -> MemoryStore:
    """The process's store for ``settings`` (its client is made per process, on first use)."""
    key = (settings.milvus_uri, settings.milvus_collection, settings.milvus_timeout)
    with _cache_lock:
        store = _cache.get(key)
        if store is None:
            store = _cache[key] = MemoryStore(*key)
        return store
