"""``POST /v1/search``: embed the query on the gpu pool, then search the tenant's memory."""

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from worker.queues import QUERY_PRIORITY, TaskName


class QueryEmbeddingTimeout(Exception):
    pass


class QueryEmbeddingFailed(Exception):
    pass


def embed_query(celery: Celery, text: str, *, timeout: float) -> list[float]:
    """The query's vector, from the gpu pool's batched embed task (an RPC).

    The request goes ahead of waiting jobs (priority 0 on Redis) and joins
    the next forward pass.
    """
    result = celery.send_task(
        TaskName.EMBED.value,
        args=[{"kind": "query", "text": text}],
        priority=QUERY_PRIORITY,
        ignore_result=False,
        expires=timeout,
    )
    try:
        vector = result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
    except CeleryTimeout as exc:
        raise QueryEmbeddingTimeout(f"the query was not embedded within {timeout:g}s") from exc
    except Exception as exc:
        raise QueryEmbeddingFailed(str(exc)) from exc
    finally:
        result.forget()
    return vector
