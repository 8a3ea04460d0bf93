"""The SQLAlchemy engine of the controller database, and what differs between dialects.

``open_engine``: where the database is, as a SQLite file path or a SQLAlchemy URL
(``sqlite:///...``, ``postgresql+psycopg://user@host/db``); PostgreSQL needs the driver of
the ``postgresql`` extra (psycopg 3), and a missing one is named, not a traceback.

``dialect_insert``: the INSERT with ``ON CONFLICT`` clauses, which SQLAlchemy builds per
dialect (SQLite's and PostgreSQL's have the same API). SQLite-only: the connection settings
(WAL, synchronous=NORMAL, busy_timeout) and ``BEGIN IMMEDIATE`` for writes, so two writers
(the controller and a CLI ``--db`` command) wait for each other for up to the busy timeout
instead of failing at their first write. A read (``READ`` execution option) begins a
deferred transaction.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, Table, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

READ = "fleet_read"
DIALECTS = ("sqlite", "postgresql")


class DatabaseUrlError(ValueError):
    """A database location that is not a path, or a URL of a dialect the store does not run on."""


def is_url(location: str | Path) -> bool:
    """A URL (``scheme://...``) rather than a file path."""
    return isinstance(location, str) and "://" in location


def parse_url(location: str) -> URL:
    """``location`` as a URL of a supported dialect; ``DatabaseUrlError`` otherwise."""
    try:
        url = make_url(location)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"not a database URL: {exc}") from None
    if url.get_backend_name() not in DIALECTS:
        raise DatabaseUrlError(
            f"database URL of dialect {url.get_backend_name()!r}: the store runs on "
            + " or ".join(DIALECTS)
        )
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # the driver of the postgresql extra
    if url.get_backend_name() == "sqlite" and not url.database:
        raise DatabaseUrlError("a sqlite:/// URL needs a file path (no in-memory database)")
    return url


def hide_password(location: str) -> str:
    """``location`` with any password in it replaced by ``***``, whether it parses or not."""
    try:
        return make_url(location).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", location)


def describe(location: str | Path) -> str:
    """``location`` for messages and logs: a URL without its password."""
    if is_url(location):
        return parse_url(str(location)).render_as_string(hide_password=True)
    return str(location)


def sqlite_path(location: str | Path) -> Path | None:
    """The SQLite file ``location`` names (a path or a ``sqlite:///`` URL); None for a server."""
    if not is_url(location):
        return Path(location)
    url = parse_url(str(location))
    return Path(str(url.database)) if url.get_backend_name() == "sqlite" else None


def open_engine(location: str | Path) -> Engine:
    """An engine on ``location``: a SQLite file (path or URL) or a PostgreSQL server URL.

    Raises:
        DatabaseUrlError: not a supported URL, or its driver is not installed.
    """
    path = sqlite_path(location)
    if path is not None:
        return sqlite_engine(path)
    url = parse_url(str(location))
    try:
        # pre_ping: a server restarted under a long-running controller costs one retry, not
        # a failed batch. No SQLite-style BEGIN: PostgreSQL's READ COMMITTED with row locks
        # (ON CONFLICT ... DO UPDATE) is what the store's statements rely on there.
        return create_engine(url, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseUrlError(
            f"no driver for {url.drivername} ({exc}): install the postgresql extra, "
            "pip install 'edge-fleet[postgresql]' (psycopg 3)"
        ) from None


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
