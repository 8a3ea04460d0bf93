"""The desired state keyed by device and model; the counter stays one sequence per device.

Revision ID: 0002
Revises: 0001

Rollouts keep a desired state per (device, model). The agent refuses a directive whose
counter does not grow past the last one it took, whatever the model, so the counter moves
to ``desired_counters`` (one row per device) seeded from the old rows: the next directive
of a device is numbered above every counter it was ever sent.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "desired_counters",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("counter", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO desired_counters (device_id, counter) "
        "SELECT device_id, MAX(counter) FROM desired GROUP BY device_id"
    )
    op.create_table(
        "desired_by_model",
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "model"),
    )
    op.execute(
        "INSERT INTO desired_by_model (device_id, model, counter, version, action, updated) "
        "SELECT device_id, model, counter, version, action, updated FROM desired"
    )
    op.drop_table("desired")
    op.rename_table("desired_by_model", "desired")


def downgrade() -> None:
    """Back to one row per device: the newest directive of each (the one it last got)."""
    op.create_table(
        "desired_by_device",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.execute(
        "INSERT INTO desired_by_device (device_id, counter, model, version, action, updated) "
        "SELECT d.device_id, d.counter, d.model, d.version, d.action, d.updated FROM desired d "
        "WHERE d.counter = (SELECT MAX(counter) FROM desired n WHERE n.device_id = d.device_id)"
    )
    op.drop_table("desired")
    op.drop_table("desired_counters")
    op.rename_table("desired_by_device", "desired")
