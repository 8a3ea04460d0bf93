"""The controller database at the newest migration, as SQLAlchemy Core tables.

Only portable types (text, integer, float, binary): the same tables run on SQLite (the default)
and PostgreSQL. Ids and counters are 64-bit on both: ``ID`` is BIGINT on PostgreSQL (its
INTEGER is 32 bits) and INTEGER on SQLite, where an ``INTEGER PRIMARY KEY`` is the 64-bit rowid
with AUTOINCREMENT (a BIGINT key would not be). Changing a table here needs a revision in
``migrations/versions``; ``tests/unit/test_store_migrations.py`` checks that a migrated
database matches these.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)

metadata = MetaData()

# A 64-bit integer on every dialect that keeps SQLite's rowid key (revision 0003).
ID = BigInteger().with_variant(Integer, "sqlite")

# Presence and the newest status and telemetry of every device ever seen.
devices = Table(
    "devices",
    metadata,
    Column("device_id", Text, primary_key=True),
    Column("state", Text),
    Column("status_json", Text),
    Column("status_received", Float),
    Column("telemetry_json", Text),
    Column("telemetry_seq", BigInteger),
    Column("telemetry_received", Float),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("duplicates", ID, nullable=False, server_default="0"),
    Column("telemetry_ts", Float),
)

# Telemetry history, de-duplicated by (device, stream, seq).
telemetry = Table(
    "telemetry",
    metadata,
    Column("device_id", Text, nullable=False),
    Column("stream", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts", Text, nullable=False),
    Column("received", Float, nullable=False),
    Column("payload", Text, nullable=False),
    Column("ts_epoch", Float),
    PrimaryKeyConstraint("device_id", "stream", "seq"),
    Index("telemetry_received", "device_id", "received"),
)

events = Table(
    "events",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("device_id", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("ts", Text, nullable=False),
    Column("received", Float, nullable=False),
    Column("payload", Text, nullable=False),
    Index("events_device", "device_id", "id"),
    sqlite_autoincrement=True,
)

# The newest reported OTA state of a device (only devices with OTA on publish one).
reported = Table(
    "reported",
    metadata,
    Column("device_id", Text, primary_key=True),
    Column("received", Float, nullable=False),
    Column("payload", Text, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("excerpt", LargeBinary, nullable=False),
    Column("retained", Integer, nullable=False),
    Column("received", Float, nullable=False),
    sqlite_autoincrement=True,
)

# The desired state of each (device, model); ``counter`` comes from ``desired_counters``,
# one sequence per device, because the agent refuses a counter that does not grow.
desired = Table(
    "desired",
    metadata,
    Column("device_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("counter", BigInteger, nullable=False),
    Column("version", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("updated", Float, nullable=False),
    # The signed message last sent (revision 0004): a rollout re-publishes it after a crash
    # between its commit and its publish. NULL for a state set before 0004.
    Column("payload", LargeBinary),
    PrimaryKeyConstraint("device_id", "model"),
)

desired_counters = Table(
    "desired_counters",
    metadata,
    Column("device_id", Text, primary_key=True),
    Column("counter", BigInteger, nullable=False),
)

# -- operators, request nonces and device admission (fleet.operators) -------------------------
# A device with no admission row is pending.
operators = Table(
    "operators",
    metadata,
    Column("name", Text, primary_key=True),
    Column("key_id", Text, nullable=False, unique=True),
    Column("public_key", Text, nullable=False),
    Column("added", Float, nullable=False),
)

request_nonces = Table(
    "request_nonces",
    metadata,
    Column("nonce", Text, primary_key=True),
    Column("expires", Float, nullable=False),
    Index("request_nonces_expires", "expires"),
)

operator_log = Table(
    "operator_log",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("received", Float, nullable=False),
    Column("operator", Text),
    Column("method", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("detail", Text, nullable=False),
    sqlite_autoincrement=True,
)

admissions = Table(
    "admissions",
    metadata,
    Column("device_id", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("operator", Text, nullable=False),
    Column("updated", Float, nullable=False),
)

# -- rollouts (revision 0004; fleet.app.rollouts, fleet.rollouts_driver) ---------------------
# The operator's tags of a device (``fleet devices tag``); they win over the device's own.
device_tags = Table(
    "device_tags",
    metadata,
    Column("device_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("device_id", "key"),
)

# One row per rollout: its state (``fleet.rollouts.model.RolloutState``) as JSON.
rollouts = Table(
    "rollouts",
    metadata,
    Column("rollout_id", Text, primary_key=True),
    Column("model", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("phase", Text, nullable=False),
    Column("state_json", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("rollouts_model_phase", "model", "phase"),
)

# Every transition of every rollout, in order (``fleet rollout history``).
rollout_transitions = Table(
    "rollout_transitions",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("rollout_id", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("from_phase", Text),
    Column("to_phase", Text, nullable=False),
    Column("stage", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("gate_json", Text),
    Index("rollout_transitions_rollout", "rollout_id", "id"),
    sqlite_autoincrement=True,
)
