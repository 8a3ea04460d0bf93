"""The schema the controller had before migrations, adopted from any database of it.

Revision ID: 0001
Revises: (none)

A fresh database gets every table. A database written before migrations existed (no
``alembic_version`` table) comes in several states: without ``devices.telemetry_ts`` and
``telemetry.ts_epoch`` (added later by ALTER TABLE), without the operator tables, without
``dead_letters``. Each missing table, column and index is created; nothing present is
touched, so every row stays.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _columns() -> dict[str, list[sa.Column[object] | sa.Constraint]]:
    """Today's tables, as they were (fresh objects each call: a Column belongs to one table)."""
    text, real, integer = sa.Text, sa.Float, sa.BigInteger
    return {
        "devices": [
            sa.Column("device_id", text, primary_key=True),
            sa.Column("state", text),
            sa.Column("status_json", text),
            sa.Column("status_received", real),
            sa.Column("telemetry_json", text),
            sa.Column("telemetry_seq", integer),
            sa.Column("telemetry_received", real),
            sa.Column("first_seen", real, nullable=False),
            sa.Column("last_seen", real, nullable=False),
            sa.Column("duplicates", sa.Integer, nullable=False, server_default="0"),
            sa.Column("telemetry_ts", real),
        ],
        "telemetry": [
            sa.Column("device_id", text, nullable=False),
            sa.Column("stream", text, nullable=False),
            sa.Column("seq", integer, nullable=False),
            sa.Column("ts", text, nullable=False),
            sa.Column("received", real, nullable=False),
            sa.Column("payload", text, nullable=False),
            sa.Column("ts_epoch", real),
            sa.PrimaryKeyConstraint("device_id", "stream", "seq"),
        ],
        "events": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", text, nullable=False),
            sa.Column("event", text, nullable=False),
            sa.Column("ts", text, nullable=False),
            sa.Column("received", real, nullable=False),
            sa.Column("payload", text, nullable=False),
        ],
        "reported": [
            sa.Column("device_id", text, primary_key=True),
            sa.Column("received", real, nullable=False),
            sa.Column("payload", text, nullable=False),
        ],
        "dead_letters": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("topic", text, nullable=False),
            sa.Column("reason", text, nullable=False),
            sa.Column("detail", text, nullable=False),
            sa.Column("excerpt", sa.LargeBinary, nullable=False),
            sa.Column("retained", sa.Integer, nullable=False),
            sa.Column("received", real, nullable=False),
        ],
        "desired": [
            sa.Column("device_id", text, primary_key=True),
            sa.Column("counter", integer, nullable=False),
            sa.Column("model", text, nullable=False),
            sa.Column("version", text, nullable=False),
            sa.Column("action", text, nullable=False),
            sa.Column("updated", real, nullable=False),
        ],
        "operators": [
            sa.Column("name", text, primary_key=True),
            sa.Column("key_id", text, nullable=False, unique=True),
            sa.Column("public_key", text, nullable=False),
            sa.Column("added", real, nullable=False),
        ],
        "request_nonces": [
            sa.Column("nonce", text, primary_key=True),
            sa.Column("expires", real, nullable=False),
        ],
        "operator_log": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("received", real, nullable=False),
            sa.Column("operator", text),
            sa.Column("method", text, nullable=False),
            sa.Column("outcome", text, nullable=False),
            sa.Column("detail", text, nullable=False),
        ],
        "admissions": [
            sa.Column("device_id", text, primary_key=True),
            sa.Column("state", text, nullable=False),
            sa.Column("operator", text, nullable=False),
            sa.Column("updated", real, nullable=False),
        ],
    }


# Columns added by ALTER TABLE after the first release of the schema.
_ADDED_LATER = {("devices", "telemetry_ts"), ("telemetry", "ts_epoch")}
_AUTOINCREMENT = {"events", "dead_letters", "operator_log"}
_INDEXES = {
    "telemetry_received": ("telemetry", ["device_id", "received"]),
    "events_device": ("events", ["device_id", "id"]),
    "request_nonces_expires": ("request_nonces", ["expires"]),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    for table, items in _columns().items():
        if table not in present:
            options = {"sqlite_autoincrement": True} if table in _AUTOINCREMENT else {}
            op.create_table(table, *items, **options)
            continue
        have = {column["name"] for column in inspector.get_columns(table)}
        for item in items:
            if isinstance(item, sa.Column) and item.name not in have:
                if (table, item.name) not in _ADDED_LATER:
                    raise RuntimeError(f"table {table} has no column {item.name}")
                op.add_column(table, item)
    for name, (table, columns) in _INDEXES.items():
        if name not in {index["name"] for index in inspector.get_indexes(table)}:
            op.create_index(name, table, columns)


def downgrade() -> None:
    for table in reversed(list(_columns())):
        op.drop_table(table)
