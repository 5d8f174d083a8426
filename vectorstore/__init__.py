"""The Milvus adapter: the memory collection's schema, upsert, delete and search."""

from vectorstore.milvus import (
    DEFAULT_COLLECTION,
    TRANSIENT_MILVUS_ERRORS,
    MemoryStore,
    MemoryStoreError,
    MilvusUnavailableError,
    SchemaMismatchError,
    get_memory_store,
    is_transient,
)
from vectorstore.records import (
    DIMENSION,
    SNIPPET_MAX_BYTES,
    MemoryKind,
    MemoryRecord,
    SearchHit,
    memory_id,
    truncate_utf8,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "DIMENSION",
    "SNIPPET_MAX_BYTES",
    "TRANSIENT_MILVUS_ERRORS",
    "MemoryKind",
    "MemoryRecord",
    "MemoryStore",
    "MemoryStoreError",
    "MilvusUnavailableError",
    "SchemaMismatchError",
    "SearchHit",
    "get_memory_store",
    "is_transient",
    "memory_id",
    "truncate_utf8",
]
