"""The Alembic migrations build exactly the schema the ORM models describe."""

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from devstack.stack import ROOT, migrate
from models import Base
from tests.support import recreate_database


@pytest.fixture
def scratch_database_url(settings, stack):
    url = settings.database_url.rsplit("/", 1)[0] + "/convoq_migrations"
    recreate_database(url)
    return url


def test_migrations_match_the_models(scratch_database_url):
    migrate(scratch_database_url)
    engine = create_engine(scratch_database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(scratch_database_url):
    migrate(scratch_database_url)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", scratch_database_url)
    command.downgrade(config, "base")
    engine = create_engine(scratch_database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(scratch_database_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"tenants", "api_keys", "jobs", "conversations", "messages", "summaries",
            "audit_log"} <= tables  # fmt: skip


def test_nothing_outside_the_migration_tests_creates_tables():
    offenders = [
        path
        for path in ROOT.rglob("*.py")
        # .venv, .devstack (peers' virtual environments): not ours
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
        and path.name != "test_migrations.py"
        and "create_all(" in path.read_text()
    ]
    assert offenders == []
