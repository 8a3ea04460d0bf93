"""What every part of the controller's store shares: the engine, opened and migrated at start,
one write transaction at a time under a lock, reads, the dialect's INSERT, and text made safe
for every dialect. ``fleet.store.SqlFleetStore`` is built from this base and its parts
(``fleet.db.access``, ``fleet.db.rollout_records``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Connection,
    Executable,
    RowMapping,
    Table,
    delete,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from fleet.db import migrate
from fleet.db.engine import (
    READ,
    DatabaseUrlError,
    cause,
    describe,
    dialect_insert,
    hide_password,
    open_engine,
    sqlite_path,
)
from fleet.db.tables import reported
from fleet.errors import StoreError
from fleet.records import (
    Retention,
)


class StoreBase:
    """The engine and the transaction helpers of ``SqlFleetStore``; safe to call from threads."""

    def __init__(self, location: Path | str, retention: Retention | None = None) -> None:
        self._retention = retention or Retention()
        self._lock = threading.Lock()
        try:
            self._path = describe(location)  # in errors: a URL without its password
            file = sqlite_path(location)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
            self._engine = open_engine(location)
        except DatabaseUrlError as exc:
            raise StoreError(str(exc), path=hide_password(str(location))) from None
        try:
            migrate.upgrade(self._engine)
        except (SQLAlchemyError, RuntimeError) as exc:
            self._engine.dispose()
            raise StoreError(
                f"cannot open the fleet database ({cause(exc)})", path=self._path
            ) from exc

    def ota_devices(self) -> set[str]:
        """Devices that publish a reported OTA state (the agent does only with OTA enabled)."""
        return {row["device_id"] for row in self._query(select(reported.c.device_id))}

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction, under the store's lock; database errors as ``StoreError``."""
        with self._lock:
            try:
                with self._engine.begin() as db:
                    yield db
            except SQLAlchemyError as exc:
                raise StoreError(f"database error ({cause(exc)})", path=self._path) from exc

    def _query(self, statement: Executable) -> Sequence[RowMapping]:
        with self._lock:
            try:
                with self._engine.connect() as db:
                    db.execution_options(**{READ: True})
                    return db.execute(statement).mappings().all()
            except SQLAlchemyError as exc:
                raise StoreError(f"database error ({cause(exc)})", path=self._path) from exc

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """The dialect's INSERT, whose ``rowcount`` says whether ``ON CONFLICT`` skipped it.

        SQLAlchemy guarantees ``rowcount`` for UPDATE and DELETE only: for an INSERT it is
        -1 on psycopg unless asked for (SQLite's driver happened to keep it).
        """
        insert = dialect_insert(self._engine.dialect.name, table)
        return insert.execution_options(preserve_rowcount=True)

    def close(self) -> None:
        with self._lock:
            self._engine.dispose()


def _keep_newest_ids(table: Table, keep: int) -> Executable:
    """Delete all but the ``keep`` highest ids of ``table`` (an append-only log)."""
    newest = select(func.max(table.c.id)).scalar_subquery()
    return delete(table).where(table.c.id <= newest - keep)


def _text(value: str) -> str:
    """``value`` storable in any TEXT column: PostgreSQL refuses NUL in text (SQLite keeps it),
    and a dead letter's detail or a refused request's may quote a hostile NUL."""
    return value.replace("\x00", "\ufffd")
