"""The SQLAlchemy engine of the controller database, and what differs between dialects.

``dialect_insert``: the INSERT with ``ON CONFLICT`` clauses, which SQLAlchemy builds per
dialect (SQLite's and PostgreSQL's have the same API). SQLite-only: the connection settings
(WAL, synchronous=NORMAL, busy_timeout) and ``BEGIN IMMEDIATE`` for writes, so two writers
(the controller and a CLI ``--db`` command) wait for each other for up to the busy timeout
instead of failing at their first write. A read (``READ`` execution option) begins a
deferred transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

READ = "fleet_read"


def sqlite_engine(path: Path) -> Engine:
    """An engine on the SQLite file ``path``, with the connection settings the store needs."""
    engine = create_engine(URL.create("sqlite+pysqlite", database=str(path)))

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:
        # Transactions are begun by ``_begin`` below, not by the driver, which would start
        # them late (at the first write) and deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        read = connection.get_execution_options().get(READ, False)
        connection.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    return engine


def dialect_insert(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``_do_update``."""
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"no INSERT ... ON CONFLICT for the {dialect} dialect")


def cause(exc: BaseException) -> str:
    """The driver's message (e.g. 'database is locked'), without SQLAlchemy's statement dump."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    return str(exc).split("\n", 1)[0]
