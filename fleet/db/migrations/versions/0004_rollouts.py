"""Staged rollouts: device tags, rollouts and their transitions, the signed desired payload.

Revision ID: 0004
Revises: 0003

``device_tags`` holds the operator's tags (``fleet devices tag``); ``rollouts`` one row per
rollout with its state as JSON; ``rollout_transitions`` every transition. ``desired.payload``
keeps the signed message last sent to each (device, model), so the rollout driver can send it
again after a controller died between committing a stage and publishing it. Nothing existing
is rewritten: old desired rows get NULL (they were published when they were set).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# 64-bit ids on PostgreSQL, SQLite's rowid key on SQLite (as fleet.db.tables.ID).
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.add_column("desired", sa.Column("payload", sa.LargeBinary))
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "key"),
    )
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("phase", sa.Text, nullable=False),
        sa.Column("state_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("rollouts_model_phase", "rollouts", ["model", "phase"])
    op.create_table(
        "rollout_transitions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.Text, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("from_phase", sa.Text),
        sa.Column("to_phase", sa.Text, nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("gate_json", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("rollout_transitions_rollout", "rollout_transitions", ["rollout_id", "id"])


def downgrade() -> None:
    op.drop_index("rollout_transitions_rollout", "rollout_transitions")
    op.drop_table("rollout_transitions")
    op.drop_index("rollouts_model_phase", "rollouts")
    op.drop_table("rollouts")
    op.drop_table("device_tags")
    with op.batch_alter_table("desired") as batch:
        batch.drop_column("payload")
