"""Request and response models: the one source for validation and for /openapi.json.

Limits come from the process's settings when the API starts, so the
documented limits are the enforced ones.
"""

import copy
import functools
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from api.waiting import MAX_WAIT_SECONDS
from config import get_settings
from models import JobStatus, JobType
from services import vectors
from services.vectors import EncodingFormat

_limits = get_settings()


def _storable(value: str) -> str:
    """PostgreSQL stores UTF-8 text without U+0000; JSON can carry both problems."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds an unpaired surrogate)") from None
    return value


def _whole_float_as_int(value: Any) -> Any:
    """JSON Schema's integers include 98.0: such a float is read as its integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer in a JSON body (strict otherwise: "98" and true stay errors).
WholeNumber = Annotated[int, BeforeValidator(_whole_float_as_int)]

# The refused characters, in the schema: no NUL anywhere.
_NO_NUL = "^[^\\u0000]*$"
_NOT_BLANK = "^[^\\u0000]*\\S[^\\u0000]*$"
CleanStr = Annotated[str, AfterValidator(_storable), Field(json_schema_extra={"pattern": _NO_NUL})]
MetadataKey = Annotated[CleanStr, StringConstraints(max_length=64)]
MetadataValue = Annotated[CleanStr, StringConstraints(max_length=1024)] | int | float | bool | None
Text = Annotated[CleanStr, StringConstraints(min_length=1, max_length=_limits.max_text_chars)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


_METADATA_SCHEMA = {
    "type": "object",
    "maxProperties": 32,
    "propertyNames": {"maxLength": 64, "pattern": _NO_NUL},
    # Keys said twice: generators that skip propertyNames still read this.
    "patternProperties": {
        "^[^\\u0000]{0,64}$": {
            "anyOf": [
                {"type": "string", "maxLength": 1024, "pattern": _NO_NUL},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
            ]
        }
    },
    "additionalProperties": False,
    "description": "Kept with the job: up to 32 keys of at most 64 characters, each a string of "
    "at most 1,024 characters, a number, a boolean or null.",
}

Content = Annotated[
    Text, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": _NOT_BLANK})
]
# Ids the caller chooses (conversations, users): they appear in URLs and in
# vector-store filters, so they are kept to a plain alphabet.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$"
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=IDENTIFIER_PATTERN)
]
SummaryMethod = Literal["auto", "t5", "extractive"]
MemoryKindName = Literal["message", "summary", "text"]


CALLBACK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s]+$"
CallbackUrl = Annotated[
    str, StringConstraints(min_length=8, max_length=2048, pattern=CALLBACK_URL_PATTERN)
]
CALLBACK_URL_DESCRIPTION = (
    "When the job ends (succeeded, failed or canceled), its final state is POSTed here, "
    "signed as Standard Webhooks says with your secret (`GET /v1/webhooks/secret`). "
    "http(s) only; a host that resolves to a loopback, private, link-local or metadata "
    "address is refused (422) unless the server's WEBHOOK_ALLOWED_HOSTS names it."
)


class StrictInput(BaseModel):
    """Bodies are JSON: no type coercion, and unknown fields are errors, not ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")


class EmbedJobIn(StrictInput):
    texts: list[Text] = Field(
        min_length=1,
        max_length=_limits.max_texts_per_job,
        description=f"The texts to embed, each of 1 to {_limits.max_text_chars:,} characters.",
        examples=[["How do I reset my password?", "The invoice is due on Friday."]],
    )
    store: bool = Field(False, description="Also index the vectors for `POST /v1/search`.")
    user_id: Identifier | None = Field(None, description="With `store`: the user they belong to.")
    conversation_id: Identifier | None = Field(
        None, description="With `store`: the conversation they belong to."
    )
    metadata: Annotated[dict[MetadataKey, MetadataValue], WithJsonSchema(_METADATA_SCHEMA)] = Field(
        default_factory=dict, max_length=32, description="Kept with the job."
    )
    encoding_format: EncodingFormat = Field(
        "float",
        description="How the result's vectors are sent: lists of floats, or `base64` of their "
        "little-endian float32 bytes (as OpenAI sends them). `GET /v1/jobs/<id>"
        "?encoding_format=` overrides it.",
    )
    callback_url: CallbackUrl | None = Field(None, description=CALLBACK_URL_DESCRIPTION)


# t5 is documented only where it can run: the API refuses it (422) when no T5 is configured.
_METHODS_SERVED = (
    ["auto", "t5", "extractive"]
    if _limits.summarizer_model_path
    else [
        "auto",
        "extractive",
    ]
)


class SummaryLengths(StrictInput):
    method: Annotated[
        SummaryMethod, WithJsonSchema({"type": "string", "enum": _METHODS_SERVED})
    ] = Field(
        "auto",
        description="`t5` (needs SUMMARIZER_MODEL_PATH), `extractive` (sentences ranked on "
        "MiniLM embeddings), or `auto`: t5 when configured, else extractive.",
    )
    max_length: WholeNumber = Field(
        _limits.summary_max_length, ge=1, le=1024, description="Most tokens in the summary."
    )
    min_length: WholeNumber = Field(
        _limits.summary_min_length,
        ge=0,
        le=1024,
        description="Fewest tokens in the summary; more than `max_length` counts as `max_length`.",
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        # A bound between two fields is beyond JSON Schema: the document says it instead.
        self.min_length = min(self.min_length, self.max_length)
        return self


class SummarizeJobIn(SummaryLengths):
    text: Content = Field(description="The text to summarise.")
    callback_url: CallbackUrl | None = Field(None, description=CALLBACK_URL_DESCRIPTION)


class MessageIn(StrictInput):
    id: Identifier | None = Field(
        None,
        description="Your id for the message: a message whose id the conversation already "
        "has (a retried post) is not stored again.",
    )
    role: Literal["user", "assistant", "system"]
    content: Content


class ConversationJobIn(SummaryLengths):
    conversation_id: Identifier = Field(
        description="Your id for the conversation; posting to it again appends."
    )
    user_id: Identifier | None = None
    messages: list[MessageIn] = Field(
        min_length=1, max_length=_limits.max_messages_per_conversation
    )
    summarize: bool = Field(True, description="Summarise the whole conversation again.")
    embed: bool = Field(True, description="Embed and index the new messages and the summary.")
    callback_url: CallbackUrl | None = Field(None, description=CALLBACK_URL_DESCRIPTION)


# The job types of a batch: the discriminator of its items, never a field name.
JOB_TYPE_TAGS = frozenset(job_type.value for job_type in JobType)


class EmbedBatchItem(EmbedJobIn):
    type: Literal["embed"]


class SummarizeBatchItem(SummarizeJobIn):
    type: Literal["summarize"]


class ConversationBatchItem(ConversationJobIn):
    type: Literal["conversation"]


BatchItem = Annotated[
    EmbedBatchItem | SummarizeBatchItem | ConversationBatchItem, Field(discriminator="type")
]


class BatchJobsIn(StrictInput):
    jobs: list[BatchItem] = Field(
        min_length=1,
        max_length=_limits.max_jobs_per_batch,
        description=f"1 to {_limits.max_jobs_per_batch} jobs, each the body of "
        "`POST /v1/jobs/<type>` plus its `type`. All are checked before any is accepted.",
        examples=[
            [
                {"type": "embed", "texts": ["How do I reset my password?"]},
                {"type": "summarize", "text": "A long text. It goes on.", "method": "auto"},
            ]
        ],
    )


WAIT_DESCRIPTION = (
    f"RFC 7240 preferences. `wait=N` (N ≤ {MAX_WAIT_SECONDS}; more counts as "
    f"{MAX_WAIT_SECONDS}) holds the answer until "
    "the job has ended, at most N seconds: 200 with the finished job, else 202 with its "
    "state. Either way the answer carries `Preference-Applied: wait=N`. Other "
    "preferences, and a `wait` that is not whole seconds, are ignored."
)


class PreferHeader(BaseModel):
    prefer: str | None = Field(None, alias="Prefer", description=WAIT_DESCRIPTION)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # flask-openapi3 asks a header model for its JSON schema on every request
        # it validates; building it took 6% of the API's CPU. It never changes.
        return copy.deepcopy(_header_schema(cls, *args, **kwargs))


IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"


class SubmitHeader(PreferHeader):
    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1 to 255 printable ASCII characters, no spaces (a UUID, say). A retry "
        "with the same key and the same body answers 200 with the job(s) the first request "
        "made, instead of making them again; the same key with another body answers 409. "
        "Keys are per tenant and kept for 24 hours (`IDEMPOTENCY_KEY_SECONDS`).",
    )


@functools.cache
def _header_schema(model: type[BaseModel], *args: Any, **kwargs: Any) -> dict[str, Any]:
    return super(PreferHeader, model).model_json_schema(*args, **kwargs)


class JobPath(BaseModel):
    job_id: uuid.UUID = Field(description="The job's id.")


class JobQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: int | None = Field(
        None,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Long poll: answer once the job has ended, or after this many seconds "
        f"(1 to {MAX_WAIT_SECONDS}) with its current state.",
    )
    encoding_format: EncodingFormat | None = Field(
        None, description="The vectors' format, instead of the one the job was submitted with."
    )


class PageQuery(BaseModel):
    """A page of a list, newest first: follow ``next_cursor`` for the next one."""

    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(
        None,
        max_length=512,
        description="`next_cursor` of the last page. Opaque: one this API did not return "
        "answers 422.",
    )
    limit: int = Field(_limits.default_page_size, ge=1, le=_limits.max_page_size)


class JobListQuery(PageQuery):
    status: JobStatus | None = None
    type: JobType | None = None


class Progress(BaseModel):
    done: int
    total: int


class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str


class JobSummaryOut(BaseModel):
    """A job without its result, as listed by ``GET /v1/jobs``."""

    id: str
    type: JobType
    status: JobStatus
    progress: Progress
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    links: JobLinks

    @classmethod
    def fields_of(cls, job: Any) -> dict[str, Any]:
        return {
            "id": str(job.id),
            "type": job.type,
            "status": job.status,
            "progress": Progress(done=job.progress_done, total=job.progress_total),
            "attempts": job.attempts,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "error": JobError(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None,
            "links": JobLinks(self=f"/v1/jobs/{job.id}"),
        }

    @classmethod
    def from_job(cls, job: Any) -> "JobSummaryOut":
        return cls(**cls.fields_of(job))


class WebhookAttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's answer; null if none came.")
    error: str | None = Field(description="Why no answer came (timeout, refused address…).")


class WebhookOut(BaseModel):
    url: str
    status: Literal["pending", "retrying", "delivered", "failed"] = Field(
        description="`pending` until the job ends and the first attempt is made."
    )
    attempts: list[WebhookAttemptOut]

    @classmethod
    def of(cls, job: Any) -> "WebhookOut | None":
        url = getattr(job, "callback_url", None)
        if url is None:
            return None
        return cls(
            url=url,
            status=getattr(job, "webhook_status", None) or "pending",
            attempts=getattr(job, "webhook_attempts", None) or [],
        )


class JobOut(JobSummaryOut):
    """A job with its result (``null`` until it has succeeded)."""

    result: dict[str, Any] | None
    webhook: WebhookOut | None = Field(
        None, description="The delivery of its `callback_url`, when it has one."
    )

    @classmethod
    def from_job(cls, job: Any, encoding_format: EncodingFormat = "float") -> "JobOut":
        return cls(
            **cls.fields_of(job),
            result=job_result(job, encoding_format),
            webhook=WebhookOut.of(job),
        )


def job_result(job: Any, encoding_format: EncodingFormat) -> dict[str, Any] | None:
    """The job's result, with the vectors it stored (as bytes) in the format asked for."""
    result = job.result
    if result is None:
        return None
    if job.vectors is not None and "dimensions" in result:
        return {
            **result,
            "vectors": vectors.encode(job.vectors, result["dimensions"], encoding_format),
        }
    if encoding_format == "base64" and isinstance(result.get("vectors"), list):
        # A result stored before vectors were kept as bytes.
        packed = vectors.pack(result["vectors"])
        return {**result, "vectors": vectors.as_base64(packed, result["dimensions"])}
    return result


class BatchJobsOut(BaseModel):
    jobs: list[JobOut] = Field(description="The jobs, in the order they were sent.")


# What the submit routes answer, documented with their headers.
_STRING = {"type": "string"}
_SUBMIT_HEADERS = {
    "Preference-Applied": {
        "description": "`wait=N` when the request's `Prefer: wait=N` was honoured.",
        "schema": _STRING,
    },
    "Vary": {"description": "`Prefer`: the answer depends on it.", "schema": _STRING},
    "Idempotent-Replayed": {
        "description": "`true` when the answer is the job(s) an earlier request with the "
        "same `Idempotency-Key` made.",
        "schema": _STRING,
    },
}
_ACCEPTED_HEADERS = {
    **_SUBMIT_HEADERS,
    "Location": {"description": "The job's URL, to poll.", "schema": _STRING},
}
# What a client does next with a job it submitted: OpenAPI links (schemathesis follows them).
_JOB_PATH = "#/paths/~1v1~1jobs~1{job_id}"
_JOB_ID = {"job_id": "$response.body#/id"}
_JOB_LINKS = {
    "GetJob": {"operationRef": f"{_JOB_PATH}/get", "parameters": _JOB_ID},
    "CancelJob": {"operationRef": f"{_JOB_PATH}~1cancel/post", "parameters": _JOB_ID},
    "DeleteJob": {"operationRef": f"{_JOB_PATH}/delete", "parameters": _JOB_ID},
}
_FINISHED = (
    "The job ended within the `Prefer: wait` asked for, or an earlier request with the same "
    "`Idempotency-Key` made it (its state now)."
)
_ACCEPTED = "The job is queued (or still running at the end of `Prefer: wait`)."


class FinishedJobOut(JobOut):
    model_config = ConfigDict(
        openapi_extra={"description": _FINISHED, "headers": _SUBMIT_HEADERS, "links": _JOB_LINKS}
    )


class AcceptedJobOut(JobOut):
    model_config = ConfigDict(
        openapi_extra={"description": _ACCEPTED, "headers": _ACCEPTED_HEADERS, "links": _JOB_LINKS}
    )


class FinishedBatchOut(BatchJobsOut):
    model_config = ConfigDict(
        openapi_extra={
            "description": "Every job ended within the `Prefer: wait` asked for, or an earlier "
            "request with the same `Idempotency-Key` made them (their state now).",
            "headers": _SUBMIT_HEADERS,
        }
    )


class AcceptedBatchOut(BatchJobsOut):
    model_config = ConfigDict(
        openapi_extra={
            "description": "The jobs are queued (or some still run at the end of `Prefer: wait`).",
            "headers": _SUBMIT_HEADERS,
        }
    )


class JobPageLinks(BaseModel):
    next: str | None


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut]
    next_cursor: str | None
    links: JobPageLinks


class ConversationPath(BaseModel):
    conversation_id: str = Field(description="Your id for the conversation.")


class UserPath(BaseModel):
    user_id: Identifier = Field(description="Your id for the user: the `user_id` jobs carried.")


class ConversationErasurePath(BaseModel):
    conversation_id: Identifier = Field(description="Your id for the conversation.")


class ErasurePath(BaseModel):
    erasure_id: uuid.UUID = Field(description="The erasure's id.")


class PostgresRemovedOut(BaseModel):
    conversations: int
    messages: int
    summaries: int
    jobs: int = Field(description="Job rows deleted (their parameters and results held the text).")
    jobs_canceled: int = Field(description="Of those, the jobs still queued or running.")


class MilvusRemovedOut(BaseModel):
    vectors: int


class RedisRemovedOut(BaseModel):
    search_requests: int = Field(
        description="Searches filtered on the target that were waiting for the gpu pool."
    )


class RemovedOut(BaseModel):
    """What each store gave up, so far (counts only)."""

    postgresql: PostgresRemovedOut
    milvus: MilvusRemovedOut
    redis: RedisRemovedOut


class ErasureLinks(BaseModel):
    self: str


class ErasureOut(BaseModel):
    """An erasure of a user or a conversation, and how far it has gone."""

    id: str
    target: Literal["user", "conversation"]
    target_id: str
    status: Literal["pending", "running", "succeeded", "failed"] = Field(
        description="`succeeded` once PostgreSQL, Milvus and Redis have each confirmed that "
        "nothing of the target is left; until then it is retried, `pending` between tries. "
        "`failed` only for an error no retry can cure (ask again)."
    )
    attempts: int = Field(description="Runs so far.")
    removed: RemovedOut
    error: str | None = Field(description="The last error met, while it is retried or failed.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: ErasureLinks

    @classmethod
    def from_row(cls, row: Any) -> "ErasureOut":
        return cls(
            id=str(row.id),
            target=row.target_type,
            target_id=row.target_id,
            status=row.status,
            attempts=row.attempts,
            removed=RemovedOut.model_validate(row.removed),
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            links=ErasureLinks(self=f"/v1/erasures/{row.id}"),
        )


class AcceptedErasureOut(ErasureOut):
    model_config = ConfigDict(
        openapi_extra={
            "description": "The erasure is underway (or, asked again while it is, the same one).",
            "headers": {
                "Location": {"description": "The erasure's URL, to poll.", "schema": _STRING}
            },
            "links": {
                "GetErasure": {
                    "operationRef": "#/paths/~1v1~1erasures~1{erasure_id}/get",
                    "parameters": {"erasure_id": "$response.body#/id"},
                }
            },
        }
    )


class ConversationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_seq: int = Field(0, ge=0, description="Only messages after this sequence number.")
    limit: int = Field(
        _limits.max_messages_per_conversation, ge=1, le=_limits.max_messages_per_conversation
    )


class MessageOut(BaseModel):
    seq: int
    role: str
    content: str
    created_at: datetime


class SummaryOut(BaseModel):
    text: str
    upto_seq: int
    method: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    created_at: datetime


class ConversationOut(BaseModel):
    conversation_id: str
    user_id: str | None
    created_at: datetime
    updated_at: datetime
    status: str = Field(description="`idle`, or the status of the job that posted last.")
    last_job: JobLinks | None
    messages: list[MessageOut]
    next_after_seq: int | None = Field(description="`after_seq` of the next page, if any.")
    summary: SummaryOut | None


class SearchFilter(StrictInput):
    user_id: Identifier | None = None
    conversation_id: Identifier | None = None
    kind: MemoryKindName | None = None


class SearchIn(StrictInput):
    query: Content
    top_k: WholeNumber = Field(10, ge=1, le=_limits.max_top_k)
    filter: SearchFilter = Field(default_factory=SearchFilter)


class SearchHitOut(BaseModel):
    id: str
    score: float
    kind: str
    user_id: str | None
    conversation_id: str | None
    text: str


class SearchOut(BaseModel):
    hits: list[SearchHitOut]


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ScalingRuleOut(BaseModel):
    target_per_worker: int
    min_replicas: int
    max_replicas: int


class QueueOut(BaseModel):
    waiting: int = Field(description="Messages in the broker's lists, every priority included.")
    unacked: int = Field(description="Messages reserved by workers and not yet acknowledged.")
    depth: int = Field(description="waiting + unacked.")
    workers: int = Field(description="Workers of this pool alive (heartbeat within 3 intervals).")
    recommended_replicas: int = Field(
        description="ceil(depth / target_per_worker), clamped to min and max."
    )
    scaling: ScalingRuleOut


class QueuesOut(BaseModel):
    queues: dict[str, QueueOut]


# -- POST /v1/embeddings (OpenAI's shapes) -----------------------------------------

_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": _limits.max_text_chars},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": _limits.max_text_chars},
            "minItems": 1,
            "maxItems": _limits.max_texts_per_job,
        },
    ],
    "description": f"A text, or a list of 1 to {_limits.max_texts_per_job} texts, each of 1 to "
    f"{_limits.max_text_chars:,} characters. Token arrays are not accepted.",
}


def _is_token_array(value: Any) -> bool:
    def is_int(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    return (
        isinstance(value, list)
        and bool(value)
        and all(
            is_int(item) or (isinstance(item, list) and item and all(map(is_int, item)))
            for item in value
        )
    )


class EmbeddingsIn(StrictInput):
    """OpenAI's embeddings request."""

    input: Annotated[list[Text], WithJsonSchema(_INPUT_SCHEMA)] = Field(
        min_length=1, max_length=_limits.max_texts_per_job
    )
    model: str = Field(
        min_length=1,
        max_length=256,
        description="The served model, `all-MiniLM-L6-v2` (or its hub name "
        "`sentence-transformers/all-MiniLM-L6-v2`).",
        examples=["all-MiniLM-L6-v2"],
    )
    encoding_format: EncodingFormat = Field(
        "float",
        description="`float` lists, or `base64` of each vector's little-endian float32 bytes.",
    )
    dimensions: Annotated[
        WholeNumber | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "enum": [_limits.embedding_dimensions]},
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        None,
        description=f"Accepted only as {_limits.embedding_dimensions}, the model's width: "
        "the vectors are not shortened.",
    )
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("input", mode="before")
    @classmethod
    def _text_or_texts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if _is_token_array(value):
            raise PydanticCustomError(
                "token_input_unsupported",
                "token arrays are not supported: send the text, as a string or a list of strings",
            )
        return value

    @field_validator("dimensions")
    @classmethod
    def _served_dimensions(cls, value: int | None) -> int | None:
        if value is not None and value != _limits.embedding_dimensions:
            raise PydanticCustomError(
                "dimensions_unsupported",
                "the model makes {served}-dimensional vectors; send dimensions={served} "
                "or leave it out",
                {"served": _limits.embedding_dimensions},
            )
        return value


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 with `base64`.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(
        description="Tokens the model read (special tokens included, each text truncated at "
        "the model's window)."
    )
    total_tokens: int


class EmbeddingsOut(BaseModel):
    """OpenAI's embeddings response."""

    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingsUsage


class WebhookSecretOut(BaseModel):
    secret: str = Field(
        description="`whsec_` and the base64 key: give it to "
        "`standardwebhooks.Webhook(secret).verify(body, headers)`."
    )


class LastEventIdHeader(BaseModel):
    last_event_id: str | None = Field(
        None,
        alias="Last-Event-ID",
        max_length=64,
        description="The `id` of the last event received: the stream goes on after it.",
    )


# -- GET /v1/users/<id>/export ------------------------------------------------------


class UserExportPath(BaseModel):
    user_id: Identifier = Field(description="Your id for the user.")


class ExportMessageOut(BaseModel):
    seq: int
    role: str
    content: str
    id: str | None = Field(description="The message's `id` as you sent it, if you did.")
    created_at: datetime


class ExportSummaryOut(BaseModel):
    upto_seq: int = Field(description="The last message it summarises.")
    text: str
    method: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    created_at: datetime


class ExportConversationOut(BaseModel):
    conversation_id: str
    user_id: str | None
    created_at: datetime
    updated_at: datetime
    messages: list[ExportMessageOut] = Field(description="Every message, by `seq`.")
    summaries: list[ExportSummaryOut] = Field(description="Every summary kept, by `upto_seq`.")


class ExportJobOut(BaseModel):
    id: str
    type: JobType
    status: JobStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any] = Field(description="The job's parameters as submitted.")
    result: dict[str, Any] | None = Field(description="Its result as stored, vectors left out.")
    error: JobError | None


class UserExportOut(BaseModel):
    """Everything stored for the user: streamed, so any size is served from bounded memory."""

    model_config = ConfigDict(
        openapi_extra={
            "description": "Everything stored for the user, streamed as one JSON document "
            "(chunked; no `Content-Length`). A user with nothing stored gets empty lists.",
            "headers": {
                "Content-Disposition": {
                    "description": "`attachment`, with a file name.",
                    "schema": _STRING,
                },
            },
        }
    )

    user_id: str
    exported_at: datetime
    conversations: list[ExportConversationOut] = Field(
        description="The user's conversations, each with its messages and summaries."
    )
    jobs: list[ExportJobOut] = Field(
        description="Jobs that name the user (`user_id`), and the conversation jobs that "
        "posted to the user's conversations, oldest first."
    )


# -- GET /v1/audit ------------------------------------------------------------------


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def _rfc3339(value: Any) -> Any:
    """A date-time as RFC 3339 writes it (offset included): pydantic alone would also
    read numbers as Unix times, and dates without a time."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time, such as 2026-01-31T12:00:00Z")
    return value


class AuditQuery(PageQuery):
    action: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Only this action, for example `user.export` or `api_key.revoke`.",
    )
    since: Annotated[AwareDatetime, BeforeValidator(_rfc3339)] | None = Field(
        None, description="Only entries at or after this time."
    )


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="Who: an API key's prefix, `cli`, or a periodic task.")
    action: str = Field(description="What, for example `user.export` or `api_key.create`.")
    target_type: str
    target_id: str
    details: dict[str, Any] = Field(
        description="How it ended (`outcome`) and counts; never the text of a message."
    )


class AuditListOut(BaseModel):
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    next_cursor: str | None
    links: JobPageLinks
