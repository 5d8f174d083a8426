"""``flask --app api create-key --tenant acme``: create a tenant and an API key."""

import sys

import click
from flask import current_app

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
