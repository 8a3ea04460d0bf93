"""Bring the controller database to the newest schema at open, with Alembic.

The Config is built in code (no alembic.ini) and points at ``migrations/`` inside this
package, which the wheel ships as package data. Revision 0001 adopts a database written
before migrations existed (no ``alembic_version`` table): it adds only what is missing, so
upgrading such a database keeps every row. Opening a database at head runs nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision of the schema."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    if revision is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS}")
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision; None for a new one or one from before migrations."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Apply every revision the database lacks, in one transaction."""
    with engine.begin() as connection:
        if current(connection) == head():
            return
        config = _config()
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, "head")
        except CommandError as exc:  # e.g. a database from a newer version of the controller
            raise MigrationError(str(exc)) from exc


class MigrationError(RuntimeError):
    """Alembic cannot bring the database to this version's schema."""
