"""Request and response models: the one source for validation and for /openapi.json.

Limits come from the process's settings when the API starts, so the
documented limits are the enforced ones.
"""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

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
    store: bool = Field(False, description="Also index the vectors for search.")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=32, description="Stored with the vectors."
    )


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


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = {}
