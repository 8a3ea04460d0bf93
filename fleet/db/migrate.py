"""Bring the controller database to the newest schema at open, with Alembic.

The Config is built in code (no alembic.ini) and points at ``migrations/`` inside this
package, which the wheel ships as package data. Revision 0001 adopts a database written
before migrations existed (no ``alembic_version`` table): it adds only what is missing, so
upgrading such a database keeps every row. An empty database is created from
``fleet.db.tables`` and stamped at head (Alembic's recipe for a new database; a unit test
checks that the migrations build the same schema). Opening a database at head runs nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from fleet.db.tables import metadata

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class MigrationError(RuntimeError):
    """Alembic cannot bring the database to this version's schema."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision of the schema."""
    revision = _scripts().get_current_head()
    if revision is None:
        raise MigrationError(f"no migrations in {MIGRATIONS}")
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision; None for a new one or one from before migrations."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, *, fresh_from_tables: bool = True) -> None:
    """Apply every revision the database lacks, in one transaction.

    ``fresh_from_tables=False`` runs the revisions on an empty database too (the tests
    compare the two ways).
    """
    with engine.begin() as connection:
        context = MigrationContext.configure(connection)
        revision = context.get_current_revision()
        if revision == head():
            return
        if revision is None and fresh_from_tables and not inspect(connection).get_table_names():
            metadata.create_all(connection)
            context.stamp(_scripts(), "head")
            return
        config = _config()
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, "head")
        except CommandError as exc:  # e.g. a database from a newer version of the controller
            raise MigrationError(str(exc)) from exc
