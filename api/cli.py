"""Operator commands: ``flask --app api create-key --tenant acme`` and friends.

- ``create-key --tenant acme``: create a tenant (if new) and an API key;
- ``revoke-key --prefix cvq_xxxxxxxx``: revoke a key, named by its prefix;
- ``set-retention --tenant acme --days 30`` (or ``--forever``, ``--default``): how
  long the tenant's data is kept (services/retention.py).

Each is audited in ``audit_log`` with the actor ``cli``.
"""

import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from services.tenants import (
    AmbiguousPrefix,
    KeyNotFound,
    TenantNotFound,
    create_api_key,
    revoke_api_key,
    set_retention,
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
