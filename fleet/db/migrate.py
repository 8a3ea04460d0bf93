"""Bring the controller database to the newest schema at open, with Alembic.

The Config is built in code (no alembic.ini) and points at ``migrations/`` inside this
package, which the wheel ships as package data. Revision 0001 adopts a database written
before migrations existed (no ``alembic_version`` table): it adds only what is missing, so
upgrading such a database keeps every row. An empty database is created from
``fleet.db.tables`` and stamped at head (Alembic's recipe for a new database; a unit test
checks that the migrations build the same schema). A database at ``HEAD`` is only read:
Alembic (slow to import) is loaded only when there is something to do.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from fleet.db.tables import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest revision in migrations/versions (tests/unit/test_store_migrations.py checks it).
HEAD = "0004"


class MigrationError(RuntimeError):
    """Alembic cannot bring the database to this version's schema."""


def _config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 (lazy: see the module docstring)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def scripts() -> ScriptDirectory:
    """The revisions in ``migrations/``."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    return ScriptDirectory.from_config(_config())


def current(connection: Connection) -> str | None:
    """The database's revision; None for a new one or one from before migrations."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if revision is None else str(revision)


def upgrade(engine: Engine, *, fresh_from_tables: bool = True) -> None:
    """Apply every revision the database lacks, in one transaction.

    ``fresh_from_tables=False`` runs the revisions on an empty database too (the tests
    compare the two ways).
    """
    with engine.begin() as connection:
        revision = current(connection)
        if revision == HEAD:
            return
        if revision is None and fresh_from_tables and not inspect(connection).get_table_names():
            metadata.create_all(connection, checkfirst=False)
            _stamp_head(connection)
        else:
            _upgrade(connection)


def _stamp_head(connection: Connection) -> None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    MigrationContext.configure(connection).stamp(scripts(), "head")


def _upgrade(connection: Connection) -> None:
    from alembic import command  # noqa: PLC0415
    from alembic.util import CommandError  # noqa: PLC0415

    config = _config()
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as exc:  # e.g. a database from a newer version of the controller
        raise MigrationError(str(exc)) from exc
