"""The wire format: every message that crosses Redis, as one typed model per kind.

Only ids and small values travel. What a step produces (vectors, summaries)
is written to PostgreSQL by that step and read by id by the next one.

Messages on Celery queues (the argument of a task):

- ``JobMessage``: run a job (``tasks.embed``, ``tasks.summarize``,
  ``tasks.conversation.persist``).
- ``StepMessage``: run a later step of a conversation job; the task it is
  sent to names the step.
- ``IndexMessage``: index the vectors of finished embed jobs (cpu pool).
- ``WebhookMessage``: POST a finished job's state to its ``callback_url`` (cpu pool).
- ``ForgetMessage``: delete a deleted job's records from the index (cpu pool).
- ``ErasureMessage``: carry out an erasure (``services.erasure``, cpu pool).

Interactive requests to the gpu pool (``services.gpu_rpc``), outside Celery:

- ``EmbeddingsRequest``: texts to embed now (``POST /v1/embeddings``).
- ``SearchRequest``: a query to embed and search (``POST /v1/search``).

and their answers, ``EmbeddingsReply``, ``SearchReply`` and ``ErrorReply``.

Announcements on pub/sub (``services.notify``): ``JobsFinished``, the jobs
that reached a final status, each with its row when it is small;
``JobsChanged``, jobs that started or made progress (their ids only).

Build messages with the models and read them with ``read_message``: a
message that cannot be read raises ``MalformedMessage``, whatever is wrong
with it.
"""

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class MalformedMessage(ValueError):
    """A message that is not one of ours: dropped with a log line, never retried."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobMessage(_Message):
    kind: Literal["job"] = "job"
    job_id: uuid.UUID


class StepMessage(_Message):
    kind: Literal["step"] = "step"
    job_id: uuid.UUID


class IndexMessage(_Message):
    kind: Literal["index"] = "index"
    job_ids: list[uuid.UUID] = Field(min_length=1)
    # What made the vectors, for the jobs' results.
    model: str
    dimensions: int
    backend: str
    device: str


class WebhookMessage(_Message):
    kind: Literal["webhook"] = "webhook"
    job_id: uuid.UUID


class ForgetMessage(_Message):
    """Delete the records a deleted embed job indexed, one per text, from the search index."""

    kind: Literal["forget"] = "forget"
    tenant_id: uuid.UUID
    job_id: uuid.UUID
    texts: int = Field(ge=1)


class ErasureMessage(_Message):
    kind: Literal["erasure"] = "erasure"
    erasure_id: uuid.UUID


class _Interactive(_Message):
    """A request someone is waiting for: answered on ``reply_to`` before ``deadline``."""

    id: str
    tenant: str
    reply_to: str
    # Unix time after which nobody waits for the answer: the request is dropped.
    deadline: float


class EmbeddingsRequest(_Interactive):
    kind: Literal["embeddings"] = "embeddings"
    texts: list[str] = Field(min_length=1)


class SearchRequest(_Interactive):
    kind: Literal["search"] = "search"
    query: str
    top_k: int
    user_id: str | None = None
    conversation_id: str | None = None
    memory_kind: str | None = None


Message = Annotated[
    JobMessage
    | StepMessage
    | IndexMessage
    | WebhookMessage
    | ForgetMessage
    | ErasureMessage
    | EmbeddingsRequest
    | SearchRequest,
    Field(discriminator="kind"),
]
InteractiveRequest = Annotated[EmbeddingsRequest | SearchRequest, Field(discriminator="kind")]

_messages: TypeAdapter[Message] = TypeAdapter(Message)
_interactive: TypeAdapter[InteractiveRequest] = TypeAdapter(InteractiveRequest)


def read_message(args: Any) -> Message:
    """The message a Celery task was given (its one positional argument)."""
    if not isinstance(args, list | tuple) or len(args) != 1:
        raise MalformedMessage(f"expected one message argument, got {args!r:.200}")
    try:
        return _messages.validate_python(args[0])
    except ValidationError as exc:
        raise MalformedMessage(str(exc)) from exc


def read_interactive(raw: bytes | str) -> EmbeddingsRequest | SearchRequest:
    """An interactive request as it was pushed on the gpu pool's lane."""
    try:
        return _interactive.validate_json(raw)
    except ValidationError as exc:
        raise MalformedMessage(str(exc)) from exc


def job_ids_of(message: Message) -> list[uuid.UUID]:
    """The jobs a message works for: the one place that reads a job id."""
    if isinstance(message, JobMessage | StepMessage):
        return [message.job_id]
    if isinstance(message, IndexMessage):
        return list(message.job_ids)
    return []


def task_args(message: _Message) -> list[dict[str, Any]]:
    """What a Celery task is sent: the message as its one argument."""
    return [message.model_dump(mode="json")]


# -- answers to interactive requests ---------------------------------------


class EmbeddingsReply(_Message):
    kind: Literal["embeddings"] = "embeddings"
    id: str
    # Base64 of float32 little-endian vectors, one per text (services.vectors).
    vectors: list[str]
    tokens: int
    model: str
    dimensions: int
    backend: str


class SearchHitMessage(_Message):
    id: str
    score: float
    kind: str
    user_id: str | None
    conversation_id: str | None
    text: str


class SearchReply(_Message):
    kind: Literal["search"] = "search"
    id: str
    hits: list[SearchHitMessage]


class ErrorReply(_Message):
    kind: Literal["error"] = "error"
    id: str
    code: str
    message: str


Reply = Annotated[EmbeddingsReply | SearchReply | ErrorReply, Field(discriminator="kind")]
_replies: TypeAdapter[Reply] = TypeAdapter(Reply)


def read_reply(raw: bytes | str) -> Reply:
    try:
        return _replies.validate_json(raw)
    except ValidationError as exc:
        raise MalformedMessage(str(exc)) from exc


# -- announcements -----------------------------------------------------------


class FinishedJob(_Message):
    id: uuid.UUID
    # The row after the change (its columns but ``params``; ``vectors`` in
    # base64), when small enough to carry: a request waiting for the job
    # answers from it without reading the row again.
    row: dict[str, Any] | None = None


class JobsFinished(_Message):
    kind: Literal["finished"] = "finished"
    jobs: list[FinishedJob]


def read_finished(raw: bytes | str) -> JobsFinished:
    try:
        return JobsFinished.model_validate_json(raw)
    except ValidationError as exc:
        raise MalformedMessage(str(exc)) from exc


class JobsChanged(_Message):
    kind: Literal["changed"] = "changed"
    job_ids: list[uuid.UUID]


def read_changed(raw: bytes | str) -> JobsChanged:
    try:
        return JobsChanged.model_validate_json(raw)
    except ValidationError as exc:
        raise MalformedMessage(str(exc)) from exc
