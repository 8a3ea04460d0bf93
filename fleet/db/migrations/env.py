"""Alembic's entry point: runs the revisions on the connection ``fleet.db.migrate`` passes.

There is no alembic.ini and no logging setup: the store builds the Config in code
(``fleet.db.migrate.upgrade``) and hands its open connection over in ``attributes``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

connection = context.config.attributes["connection"]
if not isinstance(connection, Connection):
    raise TypeError("fleet.db.migrations runs only through fleet.db.migrate.upgrade")
# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
