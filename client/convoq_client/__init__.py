"""A light client for the convoq API: ``Client`` (sync) and ``AsyncClient`` (asyncio).

from convoq_client import Client
with Client() as convoq:          # CONVOQ_URL and CONVOQ_KEY
    job = convoq.embed(["How do I reset my password?"], wait=10)
    job.vectors                   # float32 array (1, 384) with numpy, lists without
"""

from convoq_client._async import AsyncClient
from convoq_client._client import Client
from convoq_client.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    ConvoqError,
    Forbidden,
    JobTimeout,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
)
from convoq_client.models import (
    AuditEntry,
    Conversation,
    Embeddings,
    Erasure,
    Job,
    JobPage,
    Queue,
    SearchHit,
)

__all__ = [
    "AsyncClient",
    "AuditEntry",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Conversation",
    "ConvoqError",
    "Embeddings",
    "Erasure",
    "Forbidden",
    "Job",
    "JobPage",
    "JobTimeout",
    "NotFound",
    "Queue",
    "RateLimited",
    "SearchHit",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationError",
]
