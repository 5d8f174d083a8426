"""Links between the pages of a list (``GET /v1/jobs``, ``GET /v1/audit``)."""

from flask import url_for

from api.schemas import PageQuery


def next_page_link(endpoint: str, query: PageQuery, next_cursor: str | None) -> str | None:
    """The URL of the next page: the same filters, the next cursor; None on the last page."""
    if next_cursor is None:
        return None
    filters = query.model_dump(exclude_none=True, exclude={"cursor"}, mode="json")
    return url_for(endpoint, cursor=next_cursor, **filters)
