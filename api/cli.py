"""Operator commands: ``flask --app api create-key --tenant acme`` and friends.

- ``create-key --tenant acme``: create a tenant (if new) and an API key;
- ``revoke-key --prefix cvq_xxxxxxxx``: revoke a key, named by its prefix;
- ``set-retention --tenant acme --days 30`` (or ``--forever``, ``--default``): how
  long the tenant's data is kept (services/retention.py);
- ``set-redaction --tenant acme on|off``: PII redaction (services/redaction.py);
- ``reencrypt``: rewrite stored text under the current encryption key;
- ``check-memory --tenant acme [--repair]``: compare Milvus with PostgreSQL;
- ``backup [DIR]`` and ``restore DIR``: of a deployed convoq's stores.

Changes to tenants and keys are audited in ``audit_log`` with the actor ``cli``.
``backup`` and ``restore`` use the stores the settings name and never start
any (``python -m devstack backup``, behind ``make backup``, starts the local
stack's where none answers). Their code, which brings pymilvus and numpy, is
imported when they run: the API process never loads it
(``tests/test_light_api.py``).
"""

import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from config.encryption import EncryptionError
from services.encryption import reencrypt
from services.tenants import (
    AmbiguousPrefix,
    KeyNotFound,
    TenantNotFound,
    create_api_key,
    revoke_api_key,
    set_redaction,
    set_retention,
    tenant_id_of,
)


def _database_url() -> str:
    return current_app.extensions["convoq.settings"].database_url


@click.command("create-key")
@with_appcontext
@click.option("--tenant", required=True, help="The tenant's name; created if it is new.")
def create_key_command(tenant: str) -> None:
    """Create an API key for TENANT and print it once (it is stored only hashed)."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > 100:
        raise click.BadParameter("must be 1 to 100 characters", param_hint="--tenant")
    principal, key = create_api_key(_database_url(), tenant, actor="cli")
    print(
        f"API key for tenant {principal.tenant_name!r}; store it now, it is not shown again:",
        file=sys.stderr,
    )
    print(key)


@click.command("check-memory")
@click.option("--tenant", required=True, help="The tenant's name.")
@click.option("--repair", is_flag=True, help="Delete the stale vectors found.")
@with_appcontext
def check_memory_command(tenant: str, repair: bool) -> None:
    """Compare TENANT's vectors in Milvus with its rows in PostgreSQL: print the stale
    ones (their row is gone or changed) and the missing ones; exit 1 if any."""
    # Imported here: the API's own processes never load pymilvus.
    from services.consistency import audit_memory
    from vectorstore import get_memory_store

    settings = current_app.extensions["convoq.settings"]
    tenant_id = tenant_id_of(settings.database_url, tenant)
    if tenant_id is None:
        raise click.BadParameter(f"no tenant named {tenant!r}", param_hint="--tenant")
    memory = get_memory_store(settings)
    audit = audit_memory(settings.database_url, memory, tenant_id)
    print(f"stale vectors: {len(audit.stale)}; missing vectors: {len(audit.missing)}")
    if repair and audit.stale:
        memory.delete(str(tenant_id), ids=audit.stale)
        print(f"deleted {len(audit.stale)} stale vectors")
    elif not audit.agrees:
        sys.exit(1)


@click.command("set-redaction")
@click.option("--tenant", required=True, help="The tenant's name.")
@click.argument("state", type=click.Choice(["on", "off"]))
@with_appcontext
def set_redaction_command(tenant: str, state: str) -> None:
    """Turn PII redaction on or off for TENANT: with it on, e-mail addresses, phone
    numbers, IBANs, card and AHV numbers in its texts are replaced by placeholders
    before anything is stored or embedded. What was stored before is not changed."""
    settings = current_app.extensions["convoq.settings"]
    try:
        set_redaction(settings.database_url, tenant.strip(), state == "on", actor="cli")
    except TenantNotFound as exc:
        raise click.BadParameter(f"no tenant named {tenant!r}", param_hint="--tenant") from exc
    print(f"PII redaction is {state} for tenant {tenant.strip()!r} (API processes: within 10 s)")


@click.command("reencrypt")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@with_appcontext
def reencrypt_command(batch_size: int) -> None:
    """Rewrite stored message and summary text under the current (first) key of
    ENCRYPTION_KEYS: legacy plaintext rows and rows under older keys. Safe to run
    while the stack serves, and again after an interruption."""
    settings = current_app.extensions["convoq.settings"]
    try:
        result = reencrypt(settings.database_url, batch_size)
    except EncryptionError as exc:
        raise click.ClickException(f"{exc}; the rows rewritten so far stay rewritten") from exc
    for table, count in result.rewritten.items():
        print(f"{table}: {count} rows rewritten under key {result.kid!r}")
    left = {table: count for table, count in result.remaining.items() if count}
    if left:
        print(f"still under another key (written meanwhile; run again): {left}")
        sys.exit(1)
    print(f"every row is under key {result.kid!r}: older keys can be removed")


@click.command("revoke-key")
@with_appcontext
@click.option("--prefix", required=True, help="The key's first 12 characters (cvq_ and 8 more).")
@click.option("--tenant", default=None, help="The key's tenant, when two keys share a prefix.")
def revoke_key_command(prefix: str, tenant: str | None) -> None:
    """Revoke the API key that starts with PREFIX: it stops authenticating (within the
    API's 10-second cache of checked keys)."""
    prefix = prefix.strip()
    try:
        revoked = revoke_api_key(_database_url(), prefix, tenant_name=tenant, actor="cli")
    except KeyNotFound as exc:
        raise click.ClickException(f"no API key has the prefix {prefix!r}") from exc
    except AmbiguousPrefix as exc:
        raise click.ClickException(
            f"several API keys have the prefix {prefix!r}: name the tenant with --tenant"
        ) from exc
    state = "was already revoked" if revoked.already_revoked else "is revoked"
    print(f"API key {prefix} of tenant {revoked.tenant_name!r} {state}", file=sys.stderr)


@click.command("set-retention")
@with_appcontext
@click.option("--tenant", required=True, help="The tenant's name.")
@click.option("--days", type=click.IntRange(min=1), help="Purge its data older than this.")
@click.option("--forever", is_flag=True, help="Keep its data forever, whatever RETENTION_DAYS.")
@click.option("--default", "follow_default", is_flag=True, help="Follow RETENTION_DAYS again.")
def set_retention_command(
    tenant: str, days: int | None, forever: bool, follow_default: bool
) -> None:
    """Set how long TENANT's messages, summaries, vectors and finished jobs are kept."""
    if sum((days is not None, forever, follow_default)) != 1:
        raise click.UsageError("give exactly one of --days N, --forever and --default")
    stored = 0 if forever else days
    try:
        set_retention(_database_url(), tenant, stored, actor="cli")
    except TenantNotFound as exc:
        raise click.ClickException(f"no tenant is named {tenant!r}") from exc
    setting = current_app.extensions["convoq.settings"].retention_days
    if forever:
        said = "kept forever"
    elif days is not None:
        said = f"kept {days} days"
    else:
        said = (
            f"kept {setting} days (RETENTION_DAYS)"
            if setting
            else "kept forever (RETENTION_DAYS unset)"
        )
    print(f"tenant {tenant!r}: data is {said}", file=sys.stderr)


@click.command("backup")
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("backups"),
    show_default=True,
    help="Without DIRECTORY, write the backup to ROOT/convoq-<UTC time>.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    help="Then delete all but the KEEP newest backups under ROOT.",
)
@with_appcontext
def backup_command(directory: Path | None, root: Path, keep: int | None) -> None:
    """Back up PostgreSQL and the Milvus collection to DIRECTORY, a new directory."""
    if directory is not None and keep is not None:
        raise click.UsageError("--keep prunes the backups under --root: leave DIRECTORY out")
    from services import backup  # here, not at the top: see the module's docstring

    settings = current_app.extensions["convoq.settings"]
    version = current_app.extensions["convoq.version"]
    try:
        target = backup.run_backup(settings, directory, root=root, keep=keep, version=version)
    except backup.FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(target))


@click.command("restore")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--force", is_flag=True, help="Replace the data the database and collection hold.")
@with_appcontext
def restore_command(directory: Path, force: bool) -> None:
    """Restore the backup in DIRECTORY into an empty database and collection."""
    from services import backup  # here, not at the top: see the module's docstring

    try:
        backup.run_restore(current_app.extensions["convoq.settings"], directory, force=force)
    except backup.FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
