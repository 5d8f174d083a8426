"""Backups of PostgreSQL and of the Milvus memory collection, and their restore.

A backup is a directory::

    manifest.json             what is in it: revision, tables, counts, sha256 of each file
    postgres/<table>.csv      every row of every table, COPY's CSV with a header
    milvus/records.jsonl      every vector's fields, one JSON object a line
    milvus/vectors.f32        the vectors, float32 little-endian, in records.jsonl's order

PostgreSQL is read in one REPEATABLE READ READ ONLY transaction: every table
comes from the same snapshot, and COPY needs no pg_dump of the server's
version. Milvus is read after that snapshot was taken, and PostgreSQL is the
source of truth, so only vectors that a row of the snapshot accounts for are
kept (a message, a conversation's summary, a text of an embed job that asked
for ``store``). A backup taken while jobs run can therefore hold:

- jobs still ``queued`` or ``running``: after a restore, the recovery sweep
  publishes them again (Redis is not backed up: it holds messages and caches,
  and every job is recovered from its row);
- rows whose vectors were not written yet: the job that writes them is one of
  those, and writes them when it runs again;
- a conversation's newer summary vector beside its older summary row, when the
  summary was replaced between the two reads (the next job replaces it again);
- rows without their vectors, when an erasure or a purge deleted them between
  the two reads (replay that erasure after the restore: see the README).

Vectors written after the snapshot for rows it does not hold are left out and
counted in the manifest (``milvus.orphans_skipped``).

Restore verifies every checksum before it touches anything, then refuses
stores that hold data (``force`` drops it first). The schema is migrated to
the backup's revision, the tables are loaded in foreign-key order in one
transaction, the sequences are set past the restored ids, the schema is
migrated on to this code's head, and the vectors are upserted. A restore that
failed part-way (Milvus away, say) is run again with ``force``.

Columns encrypted at rest are backed up as ciphertext: the keys are not in
the backup, and without them a restore cannot be read. Milvus holds text
snippets, so the backup holds personal data: it is written readable by its
owner only.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import psycopg
from alembic.util import CommandError
from psycopg import sql
from sqlalchemy.engine import make_url

from config import Settings
from devstack.stack import ROOT, migrate
from vectorstore import (
    DIMENSION,
    MemoryKind,
    MemoryRecord,
    MemoryStore,
    MemoryStoreError,
    get_memory_store,
    memory_id,
)
from vectorstore.milvus import FIELDS, PRIMARY_KEY, VECTOR_FIELD

log = logging.getLogger(__name__)

FORMAT = "convoq-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS_FILE = "milvus/records.jsonl"
VECTORS_FILE = "milvus/vectors.f32"
BACKUP_PREFIX = "convoq-"
VECTOR_DTYPE = np.dtype("<f4")
SCAN_BATCH = 1000
CHUNK_BYTES = 1 << 20
# Every value is written and read back in one notation, whatever the servers' defaults.
SESSION_OPTIONS = (
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8"
)
KEYS_NOTE = (
    "Columns encrypted at rest (messages.content, summaries.text) are here as ciphertext. "
    "Their keys are not in this backup: keep them apart from it, for as long as it is kept."
)


class BackupError(RuntimeError):
    """A backup cannot be made, read or restored as asked."""


class ChecksumError(BackupError):
    """A file of the backup is missing or differs from what the manifest recorded."""


class NotEmptyError(BackupError):
    """The stores a restore would write to hold data."""


# --- files ---------------------------------------------------------------------


@dataclass
class _Files:
    """The files of a backup being written, with their sizes and digests."""

    root: Path
    written: dict[str, dict[str, Any]] = field(default_factory=dict)

    def open(self, name: str) -> "_HashingFile":
        path = self.root / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _HashingFile(self, name, open(path, "xb", opener=_private))

    def record(self, name: str, digest: str, size: int) -> None:
        self.written[name] = {"sha256": digest, "bytes": size}


class _HashingFile:
    def __init__(self, files: _Files, name: str, stream: BinaryIO) -> None:
        self.files, self.name, self.stream = files, name, stream
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.stream.write(data)
        self.digest.update(data)
        self.size += len(data)

    def __enter__(self) -> "_HashingFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stream.close()
        self.files.record(self.name, self.digest.hexdigest(), self.size)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


# --- PostgreSQL ------------------------------------------------------------------


def _conninfo(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _connect(database_url: str, **kwargs: Any) -> psycopg.Connection:
    url = make_url(database_url)
    try:
        return psycopg.connect(
            _conninfo(database_url), options=SESSION_OPTIONS, connect_timeout=10, **kwargs
        )
    except psycopg.OperationalError as exc:
        where = f"{url.host}:{url.port or 5432}/{url.database}"
        raise BackupError(f"cannot connect to PostgreSQL at {where}: {exc}".strip()) from exc


def _tables(connection: psycopg.Connection) -> list[str]:
    """The public schema's tables, Alembic's own aside, each after those it references."""
    names = [
        row[0]
        for row in connection.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version' "
            "ORDER BY c.relname"
        )
    ]
    references = connection.execute(
        "SELECT child.relname, parent.relname FROM pg_constraint con "
        "JOIN pg_class child ON child.oid = con.conrelid "
        "JOIN pg_class parent ON parent.oid = con.confrelid "
        "WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace"
    ).fetchall()
    graph: dict[str, set[str]] = {name: set() for name in names}
    for child, parent in references:
        if child != parent and child in graph and parent in graph:
            graph[child].add(parent)
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise BackupError(f"the tables' foreign keys form a cycle: {exc.args[1]}") from exc


def _columns(connection: psycopg.Connection, table: str) -> list[str]:
    """The columns COPY writes and reads back (generated ones are computed again)."""
    return [
        row[0]
        for row in connection.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (f'public."{table}"',),
        )
    ]


def _sequences(connection: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(sequence, table, column) for every sequence owned by a column of the public schema."""
    return connection.execute(
        "SELECT s.relname, t.relname, a.attname FROM pg_depend d "
        "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_class t ON t.oid = d.refobjid "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
        "AND n.nspname = 'public' ORDER BY s.relname"
    ).fetchall()


def _revision(connection: psycopg.Connection) -> str | None:
    exists = connection.execute("SELECT to_regclass('public.alembic_version')").fetchone()
    if exists is None or exists[0] is None:
        return None
    row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _copy_statement(table: str, columns: list[str], direction: str) -> sql.Composed:
    return sql.SQL("COPY {} ({}) {} (FORMAT csv, HEADER true)").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(direction),
    )


def _dump_postgres(connection: psycopg.Connection, files: _Files) -> dict[str, Any]:
    snapshot_at, snapshot = connection.execute(
        "SELECT clock_timestamp(), pg_current_snapshot()::text"
    ).fetchone()
    revision = _revision(connection)
    if revision is None:
        raise BackupError("the database has no alembic_version: migrate it first")
    tables = []
    for table in _tables(connection):
        columns = _columns(connection, table)
        name = f"postgres/{table}.csv"
        with files.open(name) as out:
            cursor = connection.cursor()
            with cursor.copy(_copy_statement(table, columns, "TO STDOUT")) as copy:
                for data in copy:
                    out.write(data)
        count_query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        (rows,) = connection.execute(count_query).fetchone()
        tables.append({"name": table, "columns": columns, "rows": rows, "file": name})
    sequences = {}
    for sequence, table, column in _sequences(connection):
        query = sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(sequence))
        last_value, is_called = connection.execute(query).fetchone()
        sequences[sequence] = {
            "table": table,
            "column": column,
            "next_value": last_value + 1 if is_called else last_value,
        }
    return {
        "server_version": connection.info.parameter_status("server_version"),
        "database": connection.info.dbname,
        "snapshot_at": snapshot_at.isoformat(),
        "snapshot": snapshot,
        "alembic_revision": revision,
        "tables": tables,
        "sequences": sequences,
    }


def _indexed_ids(connection: psycopg.Connection) -> set[str]:
    """The ids of every vector the snapshot's rows account for (``services.memory``)."""
    ids: set[str] = set()
    messages = connection.execute(
        "SELECT c.tenant_id::text, c.external_id, m.seq FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id"
    )
    for tenant, conversation, seq in messages:
        ids.add(memory_id(tenant, f"conversation:{conversation}:message", seq))
    summarised = connection.execute(
        "SELECT DISTINCT c.tenant_id::text, c.external_id FROM summaries s "
        "JOIN conversations c ON c.id = s.conversation_id"
    )
    for tenant, conversation in summarised:
        ids.add(memory_id(tenant, f"conversation:{conversation}:summary", 0))
    stored = connection.execute(
        # An embed job's texts are sealed (models/encryption.py); its progress total
        # is their count.
        "SELECT tenant_id::text, id::text, progress_total FROM jobs "
        "WHERE type = 'embed' AND params->>'store' = 'true'"
    )
    for tenant, job_id, texts in stored:
        ids.update(memory_id(tenant, f"job:{job_id}", position) for position in range(texts))
    return ids


def _drop_tables(connection: psycopg.Connection) -> None:
    names = connection.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
    ).fetchall()
    if names:
        connection.execute(
            sql.SQL("DROP TABLE {} CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(name) for (name,) in names)
            )
        )


def _tables_with_rows(connection: psycopg.Connection) -> list[str]:
    found = []
    for table in _tables(connection):
        query = sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(table))
        if connection.execute(query).fetchone()[0]:
            found.append(table)
    return found


def _load_postgres(
    connection: psycopg.Connection, directory: Path, section: dict[str, Any]
) -> dict[str, int]:
    """COPY every table in, in one transaction; set the sequences past the restored ids."""
    restored = {}
    with connection.transaction():
        for table in section["tables"]:
            cursor = connection.cursor()
            with cursor.copy(
                _copy_statement(table["name"], table["columns"], "FROM STDIN")
            ) as copy:
                for chunk in _read_chunks(directory / table["file"]):
                    copy.write(chunk)
            restored[table["name"]] = cursor.rowcount
            if cursor.rowcount != table["rows"]:
                raise BackupError(
                    f"{table['name']}: {cursor.rowcount} rows restored, "
                    f"the manifest has {table['rows']}"
                )
        for sequence, table, column in _sequences(connection):
            backed_up = section["sequences"].get(sequence, {}).get("next_value", 1)
            query = sql.SQL(
                "SELECT setval(%s::regclass, GREATEST(%s, (SELECT max({}) + 1 FROM {})), false)"
            ).format(sql.Identifier(column), sql.Identifier(table))
            connection.execute(query, (f'public."{sequence}"', backed_up))
    return restored


# --- Milvus ----------------------------------------------------------------------


def expected_fields() -> dict[str, dict[str, Any]]:
    """The collection's fields as ``MemoryStore.describe_fields`` gives them."""
    return {
        name: {"type": data_type.name, "params": dict(params), "is_primary": name == PRIMARY_KEY}
        for name, (data_type, params) in FIELDS.items()
    }


def _dump_milvus(store: MemoryStore, files: _Files, keep: Callable[[str], bool]) -> dict[str, Any]:
    if not store.has_collection():
        raise BackupError(f"Milvus at {store.uri} has no collection {store.collection!r}")
    fields = store.describe_fields()
    written = skipped = 0
    with files.open(RECORDS_FILE) as records, files.open(VECTORS_FILE) as vectors:
        for batch in store.scan_all(SCAN_BATCH):
            kept = [row for row in batch if keep(row[PRIMARY_KEY])]
            skipped += len(batch) - len(kept)
            for row in kept:
                entry = {name: row[name] for name in FIELDS if name != VECTOR_FIELD}
                records.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
            if kept:
                matrix = np.asarray([row[VECTOR_FIELD] for row in kept], dtype=VECTOR_DTYPE)
                vectors.write(matrix.tobytes())
            written += len(kept)
    return {
        "collection": store.collection,
        "fields": fields,
        "dimension": DIMENSION,
        "vectors": written,
        "orphans_skipped": skipped,
        "records_file": RECORDS_FILE,
        "vectors_file": VECTORS_FILE,
    }


def _backed_up_records(directory: Path) -> Iterator[list[MemoryRecord]]:
    width = DIMENSION * VECTOR_DTYPE.itemsize
    batch: list[MemoryRecord] = []
    with (
        (directory / RECORDS_FILE).open("rb") as records,
        (directory / VECTORS_FILE).open("rb") as vectors,
    ):
        for line in records:
            row = json.loads(line)
            raw = vectors.read(width)
            if len(raw) != width:
                raise BackupError(f"{VECTORS_FILE} ends before {RECORDS_FILE} does")
            batch.append(
                MemoryRecord(
                    id=row["id"],
                    tenant=row["tenant"],
                    kind=MemoryKind(row["kind"]),
                    text=row["text"],
                    vector=np.frombuffer(raw, dtype=VECTOR_DTYPE),
                    user_id=row["user_id"],
                    conversation_id=row["conversation_id"],
                    metadata=row["metadata"] or {},
                )
            )
            if len(batch) == SCAN_BATCH:
                yield batch
                batch = []
        if vectors.read(1):
            raise BackupError(f"{VECTORS_FILE} holds more vectors than {RECORDS_FILE} lists")
    if batch:
        yield batch


# --- backup ----------------------------------------------------------------------


def git_revision() -> str | None:
    """The commit this code was checked out at, where it runs from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def default_backup_dir(root: Path, now: datetime | None = None) -> Path:
    """``root/convoq-<UTC time>``: names that sort in the order they were taken."""
    return root / f"{BACKUP_PREFIX}{(now or datetime.now(UTC)):%Y%m%dT%H%M%S%fZ}"


def create_backup(
    settings: Settings,
    directory: Path,
    *,
    version: str,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """Back up the database and the collection of ``settings`` into the new ``directory``.

    The files are written under ``<directory>.partial`` and renamed at the end,
    so a directory with a manifest is always a whole backup. ``snapshot`` is an
    exported PostgreSQL snapshot (``pg_export_snapshot()``) to read instead of a
    new one. Returns the manifest.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} exists and is not empty: name a new directory")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    files = _Files(partial)
    try:
        with _connect(settings.database_url) as connection:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            with connection.transaction():
                if snapshot is not None:
                    connection.execute(
                        sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                    )
                postgres = _dump_postgres(connection, files)
                indexed = _indexed_ids(connection)
        milvus = _dump_milvus(get_memory_store(settings), files, indexed.__contains__)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "convoq": {"version": version, "git_revision": git_revision()},
            "postgres": postgres,
            "milvus": milvus,
            "files": dict(sorted(files.written.items())),
            "keys": KEYS_NOTE,
        }
        with open(partial / MANIFEST, "x", opener=_private) as out:
            json.dump(manifest, out, indent=2)
            out.write("\n")
        if directory.exists():
            directory.rmdir()
        partial.rename(directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info(
        "backup written",
        extra={
            "directory": str(directory),
            "rows": sum(table["rows"] for table in postgres["tables"]),
            "vectors": milvus["vectors"],
        },
    )
    return manifest


def prune_backups(root: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest whole backups named by ``default_backup_dir``."""
    backups = sorted(
        path
        for path in root.glob(f"{BACKUP_PREFIX}*")
        if path.is_dir() and (path / MANIFEST).is_file()
    )
    removed = backups[: max(len(backups) - keep, 0)]
    for path in removed:
        shutil.rmtree(path)
    return removed


# --- restore ---------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{directory} is not a backup: it has no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path} is not readable JSON: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{path} is not a {FORMAT} manifest of version {FORMAT_VERSION} "
            f"(format {manifest.get('format')!r}, version {manifest.get('format_version')!r})"
        )
    return manifest


def verify_backup(directory: Path) -> dict[str, Any]:
    """The manifest, once every file it lists has its recorded size and sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    listed = manifest["files"]
    needed = {table["file"] for table in manifest["postgres"]["tables"]}
    needed |= {RECORDS_FILE, VECTORS_FILE}
    if missing := sorted(needed - listed.keys()):
        raise ChecksumError(f"the manifest lists no checksum for {', '.join(missing)}")
    for name, expected in listed.items():
        path = directory / name
        if not path.resolve().is_relative_to(directory.resolve()):
            raise BackupError(f"the manifest names a file outside the backup: {name}")
        if not path.is_file():
            raise ChecksumError(f"{name} is missing from {directory}")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise ChecksumError(
                f"{name} in {directory} does not match its sha256 in the manifest: "
                "the backup is damaged or was changed, and nothing was restored"
            )
    vectors_bytes = manifest["milvus"]["vectors"] * DIMENSION * VECTOR_DTYPE.itemsize
    if listed[VECTORS_FILE]["bytes"] != vectors_bytes:
        raise ChecksumError(f"{VECTORS_FILE} does not hold {manifest['milvus']['vectors']} vectors")
    return manifest


def _check_milvus_fields(manifest: dict[str, Any]) -> None:
    backed_up, expected = manifest["milvus"]["fields"], expected_fields()
    if backed_up != expected:
        raise BackupError(
            "the backup's Milvus collection has other fields than this convoq's "
            f"({sorted(backed_up)} vs {sorted(expected)}): restore it with the version that made it"
        )


def _migrate(database_url: str, revision: str) -> None:
    try:
        migrate(database_url, revision)
    except CommandError as exc:
        raise BackupError(
            f"cannot migrate the database to revision {revision!r} ({exc}): restore the "
            "backup with the convoq version that made it, or a later one"
        ) from exc


@dataclass(frozen=True)
class RestoreResult:
    rows: dict[str, int]
    vectors: int
    revision: str


def restore_backup(settings: Settings, directory: Path, *, force: bool = False) -> RestoreResult:
    """Restore the backup in ``directory`` into the database and collection of ``settings``.

    Refuses with ``ChecksumError`` before touching anything when a file differs
    from the manifest, and with ``NotEmptyError`` when the database or the
    collection holds data, unless ``force``, which drops that data first.
    """
    directory = Path(directory)
    manifest = verify_backup(directory)
    _check_milvus_fields(manifest)
    section = manifest["postgres"]
    revision = section["alembic_revision"]
    store = get_memory_store(settings)
    with _connect(settings.database_url, autocommit=True) as connection:
        holding = _tables_with_rows(connection)
        vectors = store.count_all() if store.has_collection() else 0
        if (holding or vectors) and not force:
            where = [f"database tables {', '.join(holding)}"] if holding else []
            if vectors:
                where.append(f"{vectors} vectors in collection {settings.milvus_collection!r}")
            raise NotEmptyError(
                f"restore needs empty stores, and there is data in {' and '.join(where)}: "
                "restore into a new database and collection, or pass --force to replace it"
            )
        if vectors:
            store.drop_collection()
        if holding or _revision(connection) not in (None, revision):
            # Only empty tables, or data the caller chose to replace (force).
            _drop_tables(connection)
        _migrate(settings.database_url, revision)
        rows = _load_postgres(connection, directory, section)
    _migrate(settings.database_url, "head")
    store.ensure_collection()
    restored = 0
    for batch in _backed_up_records(directory):
        restored += store.upsert(batch)
    if restored != manifest["milvus"]["vectors"] or store.count_all() != restored:
        raise BackupError(
            f"{restored} vectors restored, the manifest has {manifest['milvus']['vectors']}"
        )
    log.info("backup restored", extra={"directory": str(directory), "vectors": restored})
    return RestoreResult(rows=rows, vectors=restored, revision=revision)


# --- the commands ------------------------------------------------------------------

# What the commands report as a one-line error, not a traceback.
FAILURES: tuple[type[Exception], ...] = (BackupError, MemoryStoreError)


def run_backup(
    settings: Settings, directory: Path | None, *, root: Path, keep: int | None, version: str
) -> Path:
    """``backup``: to ``directory``, or to a new ``root/convoq-<time>`` and then prune
    ``root`` to ``keep`` backups. Says what it wrote on stderr; returns the directory."""
    target = directory or default_backup_dir(root)
    manifest = create_backup(settings, target, version=version)
    rows = sum(table["rows"] for table in manifest["postgres"]["tables"])
    print(
        f"backup of {rows} rows (PostgreSQL snapshot at {manifest['postgres']['snapshot_at']}) "
        f"and {manifest['milvus']['vectors']} vectors written to {target}",
        file=sys.stderr,
    )
    if keep is not None:
        for path in prune_backups(root, keep):
            print(f"removed the older backup {path}", file=sys.stderr)
    return target


def run_restore(settings: Settings, directory: Path, *, force: bool) -> RestoreResult:
    """``restore``: says what it restored on stderr."""
    result = restore_backup(settings, directory, force=force)
    print(
        f"restored {sum(result.rows.values())} rows (revision {result.revision}, then migrated "
        f"to head) and {result.vectors} vectors from {directory}",
        file=sys.stderr,
    )
    return result
