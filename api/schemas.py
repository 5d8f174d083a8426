"""Request and response models: the one source for validation and for /openapi.json.

Limits come from the process's settings when the API starts, so the
documented limits are the enforced ones.
"""

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from config import get_settings
from models import Job, JobStatus, JobType

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


CleanStr = Annotated[str, AfterValidator(_storable)]
MetadataKey = Annotated[CleanStr, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[CleanStr, StringConstraints(max_length=1024)] | int | float | bool | None
Text = Annotated[CleanStr, StringConstraints(min_length=1, max_length=_limits.max_text_chars)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Content = Annotated[Text, AfterValidator(_not_blank)]
# Ids the caller chooses (conversations, users): they appear in URLs and in
# vector-store filters, so they are kept to a plain alphabet.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$"
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=IDENTIFIER_PATTERN)
]
SummaryMethod = Literal["auto", "t5", "extractive"]
MemoryKindName = Literal["message", "summary", "text"]


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
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=32, description="Kept with the job."
    )


class SummaryLengths(StrictInput):
    method: SummaryMethod = Field(
        "auto",
        description="`t5` (needs SUMMARIZER_MODEL_PATH), `extractive` (sentences ranked on "
        "MiniLM embeddings), or `auto`: t5 when configured, else extractive.",
    )
    max_length: int = Field(
        _limits.summary_max_length, ge=1, le=1024, description="Most tokens in the summary."
    )
    min_length: int = Field(
        _limits.summary_min_length, ge=0, le=1024, description="Fewest tokens in the summary."
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        if self.min_length > self.max_length:
            raise ValueError("min_length must not exceed max_length")
        return self


class SummarizeJobIn(SummaryLengths):
    text: Content = Field(description="The text to summarise.")


class MessageIn(StrictInput):
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


class JobPath(BaseModel):
    job_id: str = Field(description="The job's id (a UUID).")


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    type: JobType | None = None
    cursor: str | None = Field(None, max_length=512, description="`next_cursor` of the last page.")
    limit: int = Field(_limits.default_page_size, ge=1, le=_limits.max_page_size)


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
    def fields_of(cls, job: Job) -> dict[str, Any]:
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
    def from_job(cls, job: Job) -> "JobSummaryOut":
        return cls(**cls.fields_of(job))


class JobOut(JobSummaryOut):
    """A job with its result (``null`` until it has succeeded)."""

    result: dict[str, Any] | None

    @classmethod
    def from_job(cls, job: Job) -> "JobOut":
        return cls(**cls.fields_of(job), result=job.result)


class JobPageLinks(BaseModel):
    next: str | None


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut]
    next_cursor: str | None
    links: JobPageLinks


class ConversationPath(BaseModel):
    conversation_id: str = Field(description="Your id for the conversation.")


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
    top_k: int = Field(10, ge=1, le=_limits.max_top_k)
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
