"""64-bit ids and duplicate counters on every dialect.

Revision ID: 0003
Revises: 0002

``events``, ``dead_letters`` and ``operator_log`` ids and ``devices.duplicates`` were
INTEGER, which is 64 bits on SQLite (an ``INTEGER PRIMARY KEY`` is the rowid) but 32 bits on
PostgreSQL, where the ids' sequences are 32-bit too. SQLite needs nothing: its columns stay
INTEGER (``fleet.db.tables.ID``), and its databases are not touched. PostgreSQL gets BIGINT
columns and BIGINT sequences.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_IDS = ("events", "dead_letters", "operator_log")


def _retype(to: type[sa.types.TypeEngine[int]], sequence_type: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    old = sa.Integer if to is sa.BigInteger else sa.BigInteger
    for table in _IDS:
        op.alter_column(table, "id", type_=to(), existing_type=old(), existing_nullable=False)
        if op.get_bind().dialect.name == "postgresql":
            # The table's own sequence (SERIAL made it AS integer), whatever its name.
            op.execute(f"ALTER SEQUENCE {sequence_for(table)} AS {sequence_type}")
    op.alter_column(
        "devices", "duplicates", type_=to(), existing_type=old(), existing_nullable=False
    )


def sequence_for(table: str) -> str:
    """The quoted name of ``table.id``'s sequence on PostgreSQL."""
    name = op.get_bind().execute(sa.text(f"SELECT pg_get_serial_sequence('{table}', 'id')"))
    return str(name.scalar_one())


def upgrade() -> None:
    _retype(sa.BigInteger, "bigint")


def downgrade() -> None:
    _retype(sa.Integer, "integer")
