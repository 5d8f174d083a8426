"""Everything stored for one user of a tenant, read a page at a time (data portability).

``user_records`` yields the user's rows in the order an export writes them::

    ("conversation", c1) ("message", …)… ("summary", …)… ("conversation", c2) … ("job", …)…

Every query reads at most ``page_rows`` rows, in a short transaction of its
own, and the next page starts after the last row read (keyset pagination):
an export of any size holds one page in memory, and between pages it holds
no database connection, so a client that downloads slowly does not keep one
of the pool's few connections. The price is that an export is not a snapshot:
rows written while it runs may or may not appear.

Text columns are read through the mapped columns (never raw SQL), so whatever
their column type does on the way out (decryption) applies.

The user's jobs are those whose parameters name the user (``user_id``), and the
conversation jobs that posted to the user's conversations.
"""

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Row, Select, and_, any_, bindparam, or_, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY

from models import Conversation, Job, JobType, Message, Summary
from models.db import transaction

# Rows per query. A message is at most max_text_chars (32,000) characters: a page
# of messages stays within a few megabytes.
PAGE_ROWS = 100

CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.external_id,
    Conversation.user_id,
    Conversation.created_at,
    Conversation.updated_at,
)
MESSAGE_COLUMNS = (
    Message.conversation_id,
    Message.seq,
    Message.role,
    Message.content,
    Message.client_id,
    Message.created_at,
)
SUMMARY_COLUMNS = (
    Summary.conversation_id,
    Summary.upto_seq,
    Summary.text,
    Summary.method,
    Summary.model,
    Summary.input_tokens,
    Summary.output_tokens,
    Summary.created_at,
)
# Everything but the vectors (derived from texts the export holds) and the workers'
# bookkeeping (claims, webhook attempts).
JOB_COLUMNS = (
    Job.id,
    Job.type,
    Job.status,
    Job.params,
    Job.result,
    Job.error_code,
    Job.error_message,
    Job.attempts,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
)

Record = tuple[str, Row]


def _pages(
    database_url: str, query: Callable[[Row | None], Select], page_rows: int
) -> Iterator[list[Row]]:
    """The pages of ``query(last row of the previous page)``, one after the other."""
    last: Row | None = None
    while True:
        with transaction(database_url) as connection:
            rows = connection.execute(query(last).limit(page_rows)).all()
        if rows:
            yield rows
        if len(rows) < page_rows:
            return
        last = rows[-1]


def _rows(
    database_url: str, query: Callable[[Row | None], Select], page_rows: int
) -> Iterator[Row]:
    for page in _pages(database_url, query, page_rows):
        yield from page


class _Peekable:
    def __init__(self, rows: Iterator[Row]) -> None:
        self._rows = rows
        self._next: Row | None = next(rows, None)

    def take_while(self, conversation_pk: uuid.UUID) -> Iterator[Row]:
        while self._next is not None and self._next.conversation_id == conversation_pk:
            row, self._next = self._next, next(self._rows, None)
            yield row


def _of_conversations(
    columns: Sequence[Any], order: Any, conversation_pks: list[uuid.UUID]
) -> Callable[[Row | None], Select]:
    """Rows of these conversations by ``(conversation_id, order)``, after the last one."""
    table_key = columns[0]  # conversation_id

    def query(last: Row | None) -> Select:
        statement = (
            select(*columns)
            .where(
                table_key == any_(bindparam("pks", conversation_pks, type_=ARRAY(table_key.type)))
            )
            .order_by(table_key, order)
        )
        if last is not None:
            statement = statement.where(
                tuple_(table_key, order) > tuple_(last.conversation_id, getattr(last, order.key))
            )
        return statement

    return query


def _conversations(
    database_url: str, tenant_id: uuid.UUID, user_id: str, page_rows: int
) -> Iterator[Record]:
    def page(last: Row | None) -> Select:
        statement = (
            select(*CONVERSATION_COLUMNS)
            .where(Conversation.tenant_id == tenant_id, Conversation.user_id == user_id)
            .order_by(Conversation.id)
        )
        return statement if last is None else statement.where(Conversation.id > last.id)

    for batch in _pages(database_url, page, page_rows):
        yield from _with_contents(database_url, batch, page_rows)


def _with_contents(database_url: str, batch: list[Row], page_rows: int) -> Iterator[Record]:
    """Each conversation of ``batch`` (sorted by id) followed by its messages and its
    summaries: one paged query for all the batch's messages, one for its summaries."""
    pks = [conversation.id for conversation in batch]
    messages = _Peekable(
        _rows(database_url, _of_conversations(MESSAGE_COLUMNS, Message.seq, pks), page_rows)
    )
    summaries = _Peekable(
        _rows(database_url, _of_conversations(SUMMARY_COLUMNS, Summary.upto_seq, pks), page_rows)
    )
    for conversation in batch:
        yield "conversation", conversation
        for message in messages.take_while(conversation.id):
            yield "message", message
        for summary in summaries.take_while(conversation.id):
            yield "summary", summary


def _jobs(
    database_url: str, tenant_id: uuid.UUID, user_id: str, page_rows: int
) -> Iterator[Record]:
    users_conversations = select(Conversation.external_id).where(
        Conversation.tenant_id == tenant_id, Conversation.user_id == user_id
    )
    mine = or_(
        Job.params["user_id"].astext == user_id,
        and_(
            Job.type == JobType.CONVERSATION,
            Job.params["conversation_id"].astext.in_(users_conversations),
        ),
    )

    def page(last: Row | None) -> Select:
        statement = (
            select(*JOB_COLUMNS)
            .where(Job.tenant_id == tenant_id, mine)
            .order_by(Job.created_at, Job.id)
        )
        if last is None:
            return statement
        return statement.where(tuple_(Job.created_at, Job.id) > tuple_(last.created_at, last.id))

    for job in _rows(database_url, page, page_rows):
        yield "job", job


def user_records(
    database_url: str, tenant_id: uuid.UUID, user_id: str, *, page_rows: int = PAGE_ROWS
) -> Iterator[Record]:
    """The user's conversations (each followed by its messages and summaries), then
    the user's jobs, read lazily: nothing is queried until the iterator is advanced."""
    yield from _conversations(database_url, tenant_id, user_id, page_rows)
    yield from _jobs(database_url, tenant_id, user_id, page_rows)
