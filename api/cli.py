"""``flask --app api ...``: create-key, and backup and restore of a deployed convoq.

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

from services.tenants import create_api_key


@click.command("create-key")
@click.option("--tenant", required=True, help="The tenant's name; created if it is new.")
def create_key_command(tenant: str) -> None:
    """Create an API key for TENANT and print it once (it is stored only hashed)."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > 100:
        raise click.BadParameter("must be 1 to 100 characters", param_hint="--tenant")
    settings = current_app.extensions["convoq.settings"]
    principal, key = create_api_key(settings.database_url, tenant, actor="cli")
    print(
        f"API key for tenant {principal.tenant_name!r}; store it now, it is not shown again:",
        file=sys.stderr,
    )
    print(key)


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
