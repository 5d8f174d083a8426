"""``convoq``: the command line, on the sync ``Client`` (run by ``convoq_client.cli``).

The URL and key come from ``--url``/``--key``, then ``CONVOQ_URL``/``CONVOQ_KEY``, then
``~/.config/convoq/config.toml`` (``url = "..."``, ``key = "..."``). Every command takes
``--json`` for scripts. Exit codes: 0 on success, 1 on an API error (one line on stderr,
``error: <code>: <message>``) or a job that ended failed or canceled, 2 when the API
cannot be reached (and for a bad command line, as Click does), 130 on Ctrl-C.
``CONVOQ_MAX_RETRIES`` (or ``max_retries`` in the file) bounds the client's retries."""

import functools
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from convoq_client._client import Client
from convoq_client.errors import ConnectionFailed, ConvoqError, JobTimeout
from convoq_client.models import Erasure, Job, Queue

app = typer.Typer(
    name="convoq",
    help="The convoq API from a terminal: submit jobs, follow them, search, erase, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
WaitSeconds = Annotated[
    float, typer.Option("--wait", help="Seconds the API may hold the answer (0: do not wait).")
]
F = TypeVar("F", bound=Callable[..., Any])


class Settings:
    """What the global options gave; the client is made on first use."""

    url: str | None = None
    key: str | None = None


settings = Settings()


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(os.environ.get("CONVOQ_CONFIG") or Path(base) / "convoq" / "config.toml")


def resolve() -> dict[str, Any]:
    """URL, key and retries: options, then the environment, then the config file."""
    path = config_path()
    try:
        file = tomllib.loads(path.read_text()) if path.is_file() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConvoqError(f"{path}: {exc}", code="bad_config") from exc
    retries = os.environ.get("CONVOQ_MAX_RETRIES") or file.get("max_retries", 4)
    try:
        retries = int(retries)
    except ValueError:
        raise ConvoqError(
            f"max_retries must be a whole number, not {retries!r}", code="bad_config"
        ) from None
    return {
        "base_url": settings.url or os.environ.get("CONVOQ_URL") or file.get("url"),
        "api_key": settings.key or os.environ.get("CONVOQ_KEY") or file.get("key"),
        "max_retries": retries,
    }


@contextmanager
def client() -> Iterator[Client]:
    with Client(timeout=60, **resolve()) as convoq:
        yield convoq


def fail(code: str, message: str, exit_code: int = 1) -> typer.Exit:
    """One line on stderr; the caller raises what this returns."""
    first_line = " ".join(message.split())
    print(f"error: {code}: {first_line}", file=sys.stderr)
    return typer.Exit(exit_code)


def handled(function: F) -> F:
    """API errors become one line and an exit code instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ConnectionFailed as exc:
            raise fail(exc.code, exc.message, 2) from None
        except ConvoqError as exc:
            raise fail(exc.code, exc.message) from None
        except JobTimeout as exc:
            raise fail("timeout", str(exc)) from None
        except OSError as exc:
            raise fail("io_error", str(exc)) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """JSON for what models hold: datetimes, numpy arrays, nested models."""
    if hasattr(value, "model_dump"):
        return plain(value.model_dump())
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(plain(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def read_source(source: str) -> str:
    """A file's text, or stdin's for ``-``."""
    return sys.stdin.read() if source == "-" else Path(source).read_text()


def status_style(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "canceled": "yellow"}.get(status, "cyan")
    return f"[{colour}]{status}[/{colour}]"


def show_job(job: Job) -> None:
    """A job, briefly: the status line and what its result says."""
    done = f"{job.progress.done}/{job.progress.total}"
    out.print(f"{job.id}  {job.type}  {status_style(job.status)}  {done}")
    if job.error:
        out.print(f"[red]{job.error.code}: {job.error.message}[/red]")
    result = job.result or {}
    vectors = job.vectors
    if vectors is not None:
        rows = len(vectors)
        width = len(vectors[0]) if rows else 0
        out.print(f"vectors: {rows} x {width}")
    if isinstance(result.get("text"), str):
        out.print(result["text"], markup=False, highlight=False)
    elif isinstance(result.get("summary"), dict) and result["summary"].get("text"):
        out.print(result["summary"]["text"], markup=False, highlight=False)


def finish(job: Job, as_json: bool) -> None:
    if as_json:
        emit_json(job)
    else:
        show_job(job)
    if job.status in {"failed", "canceled"}:
        code = job.error.code if job.error else f"job_{job.status}"
        raise fail(code, f"job {job.id} {job.status}")


def held(wait: float) -> float | None:
    return wait if wait > 0 else None


@app.callback()
def main(
    url: Annotated[str | None, typer.Option(help="API base URL (else CONVOQ_URL).")] = None,
    key: Annotated[str | None, typer.Option(help="API key (else CONVOQ_KEY).")] = None,
) -> None:
    settings.url, settings.key = url, key


@app.command()
@handled
def embed(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="One text a line; - for stdin.")],
    store: Annotated[bool, typer.Option(help="Keep the vectors in the memory store.")] = False,
    user: Annotated[str | None, typer.Option(help="user_id, with --store.")] = None,
    conversation: Annotated[str | None, typer.Option(help="conversation_id.")] = None,
    wait: WaitSeconds = 60,
    as_json: JsonFlag = False,
) -> None:
    """Embed texts, one a line."""
    texts = [line for line in read_source(source).splitlines() if line.strip()]
    with client() as convoq:
        job = convoq.embed(
            texts, store=store, user_id=user, conversation_id=conversation, wait=held(wait)
        )
    finish(job, as_json)


@app.command()
@handled
def summarize(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="The text; - for stdin.")],
    method: Annotated[str | None, typer.Option(help="abstractive or extractive.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Most tokens in the summary.")] = None,
    min_length: Annotated[int | None, typer.Option(help="Fewest tokens in the summary.")] = None,
    wait: WaitSeconds = 60,
    as_json: JsonFlag = False,
) -> None:
    """Summarise a text."""
    with client() as convoq:
        job = convoq.summarize(
            read_source(source), method=method, max_length=max_length,
            min_length=min_length, wait=held(wait),
        )  # fmt: skip
    finish(job, as_json)


@app.command()
@handled
def conversation(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE.json",
            help='{"conversation_id", "messages": [{"role", "content"}], "user_id"?}, '
            "or just the messages with --id; - for stdin.",
        ),
    ],
    conversation_id: Annotated[str | None, typer.Option("--id", help="conversation_id.")] = None,
    user: Annotated[str | None, typer.Option(help="user_id.")] = None,
    wait: WaitSeconds = 60,
    as_json: JsonFlag = False,
) -> None:
    """Append messages to a conversation: summarised and indexed for search."""
    try:
        body = json.loads(read_source(source))
    except json.JSONDecodeError as exc:
        raise fail("bad_json", f"{source}: {exc}") from None
    if isinstance(body, list):
        body = {"messages": body}
    if not isinstance(body, dict):
        raise fail("bad_json", f"{source}: an object or a list of messages, please")
    conversation_id = conversation_id or body.get("conversation_id")
    if not conversation_id:
        raise fail("missing_conversation_id", "give --id or a conversation_id in the file")
    with client() as convoq:
        job = convoq.conversation(
            conversation_id, body.get("messages", []), user_id=user or body.get("user_id"),
            wait=held(wait),
        )  # fmt: skip
    finish(job, as_json)


@app.command()
@handled
def jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs of this status.")] = None,
    type: Annotated[str | None, typer.Option(help="embed, summarize or conversation.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The newest jobs, as a table."""
    with client() as convoq:
        found = []
        for job in convoq.list_jobs(status=status, type=type, page_size=min(limit, 100)):
            found.append(job)
            if len(found) >= limit:
                break
    if as_json:
        emit_json(found)
        return
    table = Table("id", "type", "status", "progress", "created", "finished")
    for job in found:
        table.add_row(
            job.id, job.type, status_style(job.status),
            f"{job.progress.done}/{job.progress.total}",
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
            f"{job.finished_at:%H:%M:%S}" if job.finished_at else "",
        )  # fmt: skip
    out.print(table)


def follow(convoq: Client, job_id: str) -> Job:
    """A progress bar (on stderr) moved by the job's event stream, until the job ends."""
    last = convoq.get_job(job_id)
    if last.done:
        return last
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(
            job_id[:8], total=last.progress.total or None, completed=last.progress.done,
            status=last.status,
        )  # fmt: skip
        for update in convoq.events(job_id):
            last = update
            progress.update(
                task, total=update.progress.total or None, completed=update.progress.done,
                status=update.status,
            )  # fmt: skip
    return convoq.get_job(job_id) if last.done else last


@app.command()
@handled
def job(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """One job; with --wait, follow it to its end."""
    with client() as convoq:
        found = follow(convoq, job_id) if wait and not as_json else convoq.get_job(job_id)
        if wait and as_json and not found.done:
            found = convoq.wait(job_id)
    finish(found, as_json)


@app.command()
@handled
def cancel(job_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False) -> None:
    """Cancel a queued or running job."""
    with client() as convoq:
        canceled = convoq.cancel(job_id)
    if as_json:
        emit_json(canceled)
    else:
        show_job(canceled)


@app.command()
@handled
def search(
    query: str,
    top_k: Annotated[int | None, typer.Option(help="At most this many hits.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user_id's memory.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Only this conversation.")] = None,
    kind: Annotated[str | None, typer.Option(help="message, summary or text.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Search the memory store, as a table of hits."""
    with client() as convoq:
        hits = convoq.search(
            query, top_k=top_k, user_id=user, conversation_id=conversation, kind=kind
        )
    if as_json:
        emit_json(hits)
        return
    table = Table("score", "kind", "conversation", "user", "text")
    for hit in hits:
        table.add_row(
            f"{hit.score:.3f}", hit.kind, hit.conversation_id or "", hit.user_id or "", hit.text
        )
    out.print(table)


def queue_table(queues: dict[str, Queue]) -> Table:
    table = Table("pool", "waiting", "unacked", "depth", "workers", "recommended")
    for name, queue in sorted(queues.items()):
        table.add_row(
            name, str(queue.waiting), str(queue.unacked), str(queue.depth),
            str(queue.workers), str(queue.recommended_replicas),
        )  # fmt: skip
    return table


@app.command()
@handled
def queues(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    count: Annotated[int, typer.Option(help="With --watch, stop after this many (0: never).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The gpu and cpu pools: depth, workers and the replicas recommended."""
    with client() as convoq:
        if not watch:
            found = convoq.queues()
            if as_json:
                emit_json(found)
            else:
                out.print(queue_table(found))
            return
        shown = 0
        try:
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    found = convoq.queues()
                    if as_json:  # one JSON line per refresh
                        emit_json(found)
                    else:
                        live.update(queue_table(found), refresh=True)
                    shown += 1
                    if count and shown >= count:
                        return
                    time.sleep(interval)
        except KeyboardInterrupt:
            return


@app.command()
@handled
def erase(
    user: Annotated[str | None, typer.Option(help="Erase everything of this user_id.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Erase this conversation.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Until every store is done.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Erase a user's or a conversation's data from every store."""
    if (user is None) == (conversation is None):
        raise fail("bad_arguments", "give exactly one of --user or --conversation", 2)
    with client() as convoq:
        erasure = convoq.erase_user(user) if user else convoq.erase_conversation(conversation)
        while wait and erasure.status in {"pending", "running"}:
            time.sleep(0.5)
            erasure = convoq.get_erasure(erasure.id)
    if as_json:
        emit_json(erasure)
    else:
        show_erasure(erasure)
    if erasure.status == "failed":
        raise fail("erasure_failed", erasure.error or f"erasure {erasure.id} failed")


def show_erasure(erasure: Erasure) -> None:
    out.print(f"{erasure.id}  {erasure.target} {erasure.target_id}  {erasure.status}")
    for store, counts in erasure.removed.items():
        out.print(f"  {store}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command()
@handled
def export(
    user: Annotated[str, typer.Option(help="The user_id whose data to export.")],
    as_json: Annotated[bool, typer.Option("--json", help="Accepted; the export is JSON.")] = False,
) -> None:
    """Everything stored for a user, as JSON on stdout (redirect it to a file)."""
    with client() as convoq:
        emit_json(convoq.export_user(user))
