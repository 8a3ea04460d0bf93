"""The store's records of who may change the fleet: operators and their keys, spent request
nonces, the operator log, device admission, and the operator's device tags (``fleet devices
tag``), with each device's tags merged from its status and the operator's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import (
    Connection,
    delete,
    select,
)

from fleet.db.base import StoreBase, _keep_newest_ids, _text
from fleet.db.tables import (
    admissions,
    device_tags,
    devices,
    operator_log,
    operators,
    request_nonces,
)
from fleet.errors import DeviceRevokedError, FleetError, UnknownDeviceError
from fleet.operators import TrustedKey, key_id
from fleet.records import (
    ACCEPTED,
    PENDING,
    REVOKED,
    JsonObject,
    Operator,
    OperatorLogEntry,
    TaggedDevice,
    document,
)

_OPERATOR_LOG_ROWS = 10_000


class AccessRecords(StoreBase):
    """Operators, nonces, the operator log, admission and tags (part of ``SqlFleetStore``)."""

    # -- operators, request nonces and device admission (fleet.operators) -----------------

    def add_operator(self, name: str, public_key: str, *, now: float) -> str:
        """Trust ``public_key`` (base64) as ``name``; returns its key id.

        Raises:
            FleetError: the name or the key is already registered.
        """
        kid = key_id(public_key)
        with self._tx() as db:
            clash = db.execute(
                select(operators.c.name).where(
                    (operators.c.name == name) | (operators.c.key_id == kid)
                )
            ).first()
            if clash:
                raise FleetError(f"operator {clash[0]!r} already has this name or key ({kid})")
            db.execute(
                operators.insert().values(name=name, key_id=kid, public_key=public_key, added=now)
            )
        return kid

    def remove_operator(self, name: str) -> None:
        """Raises ``FleetError`` when no operator has that name."""
        with self._tx() as db:
            if db.execute(delete(operators).where(operators.c.name == name)).rowcount == 0:
                raise FleetError(f"no operator named {name!r}")

    def list_operators(self) -> list[Operator]:
        rows = self._query(select(operators).order_by(operators.c.name))
        return [Operator(**row) for row in rows]

    def trusted_keys(self) -> dict[str, TrustedKey]:
        """Key id -> operator, for ``fleet.operators.verify_request``."""
        return {o.key_id: TrustedKey(o.name, o.public_key) for o in self.list_operators()}

    def nonce_used(self, nonce: str) -> bool:
        return bool(
            self._query(select(request_nonces.c.nonce).where(request_nonces.c.nonce == nonce))
        )

    def remember_nonce(self, nonce: str, *, expires: float, now: float) -> bool:
        """Record a used nonce until ``expires``; False if it was already recorded."""
        with self._tx() as db:
            db.execute(delete(request_nonces).where(request_nonces.c.expires < now))
            added = db.execute(
                self._insert(request_nonces)
                .values(nonce=nonce, expires=expires)
                .on_conflict_do_nothing()
            )
        return added.rowcount == 1

    def log_request(
        self, *, operator: str | None, method: str, outcome: str, detail: str, now: float
    ) -> None:
        """Append to the bounded audit log of mutating requests (accepted and refused)."""
        with self._tx() as db:
            db.execute(
                operator_log.insert().values(
                    received=now,
                    operator=None if operator is None else _text(operator),
                    method=_text(method[:64]),
                    outcome=_text(outcome),
                    detail=_text(detail[:500]),
                )
            )
            db.execute(_keep_newest_ids(operator_log, _OPERATOR_LOG_ROWS))

    def operator_log(self, limit: int = 100) -> list[OperatorLogEntry]:
        rows = self._query(select(operator_log).order_by(operator_log.c.id.desc()).limit(limit))
        return [OperatorLogEntry(**row) for row in rows]

    def accept_device(self, device_id: str, *, operator: str, now: float) -> bool:
        """Make a known device a deploy target; False if it already was.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
            DeviceRevokedError: its certificate was revoked (``revoke_device``).
        """
        with self._tx() as db:
            known = db.execute(select(devices.c.device_id).where(devices.c.device_id == device_id))
            if known.first() is None:
                raise UnknownDeviceError(device_id)
            state = db.execute(
                select(admissions.c.state).where(admissions.c.device_id == device_id)
            ).first()
            if state is not None and state[0] == REVOKED:
                raise DeviceRevokedError(device_id)
            added = db.execute(
                self._insert(admissions)
                .values(device_id=device_id, state=ACCEPTED, operator=operator, updated=now)
                .on_conflict_do_nothing()
            )
        return added.rowcount == 1

    def revoke_device(self, device_id: str, *, operator: str, now: float) -> bool:
        """Mark the device revoked (its certificate is in the CRL); False if it already was.

        A device the controller has not seen yet is recorded too, so that it is refused
        when it first shows up.
        """
        with self._tx() as db:
            insert = self._insert(admissions).values(
                device_id=device_id, state=REVOKED, operator=operator, updated=now
            )
            changed = db.execute(
                insert.on_conflict_do_update(
                    index_elements=[admissions.c.device_id],
                    set_={"state": REVOKED, "operator": operator, "updated": now},
                    where=admissions.c.state != REVOKED,
                )
            )
        return changed.rowcount == 1

    def admission(self, device_id: str) -> str | None:
        """accepted, pending, revoked, or None for a device never seen."""
        if not self._query(select(devices.c.device_id).where(devices.c.device_id == device_id)):
            return None
        rows = self._query(select(admissions.c.state).where(admissions.c.device_id == device_id))
        return str(rows[0]["state"]) if rows else PENDING

    def admissions(self) -> dict[str, str]:
        """The admission state of every device that has one (others are pending)."""
        rows = self._query(select(admissions.c.device_id, admissions.c.state))
        return {row["device_id"]: row["state"] for row in rows}

    # -- device tags (fleet devices tag / untag) -------------------------------------------

    def set_tags(self, device_id: str, tags: Mapping[str, str]) -> None:
        """Set the operator's ``tags`` on a device (replacing those keys' values).

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        with self._tx() as db:
            self._require_device(db, device_id)
            for key, value in tags.items():
                insert = self._insert(device_tags).values(
                    device_id=device_id, key=_text(key), value=_text(value)
                )
                db.execute(
                    insert.on_conflict_do_update(
                        index_elements=[device_tags.c.device_id, device_tags.c.key],
                        set_={"value": insert.excluded.value},
                    )
                )

    def remove_tags(self, device_id: str, keys: Iterable[str]) -> list[str]:
        """Remove the operator's tags ``keys``; returns the keys that were set.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        wanted = sorted(set(keys))
        with self._tx() as db:
            self._require_device(db, device_id)
            row = device_tags.c.device_id == device_id
            present = db.execute(
                select(device_tags.c.key).where(row & device_tags.c.key.in_(wanted))
            )
            removed = sorted(str(r[0]) for r in present)
            db.execute(delete(device_tags).where(row & device_tags.c.key.in_(wanted)))
        return removed

    def device_tags(self, device_id: str) -> dict[str, str]:
        """The operator's tags of a device (the device's own are in ``tagged_devices``)."""
        rows = self._query(
            select(device_tags.c.key, device_tags.c.value)
            .where(device_tags.c.device_id == device_id)
            .order_by(device_tags.c.key)
        )
        return {r["key"]: r["value"] for r in rows}

    def tagged_devices(self) -> list[TaggedDevice]:
        """Every device seen with its merged tags (``TaggedDevice``), sorted by id."""
        rows = self._query(
            select(devices.c.device_id, devices.c.status_json).order_by(devices.c.device_id)
        )
        operator: dict[str, dict[str, str]] = {}
        for tag in self._query(select(device_tags).order_by(device_tags.c.key)):
            operator.setdefault(tag["device_id"], {})[tag["key"]] = tag["value"]
        admitted = self.admissions()
        with_ota = self.ota_devices()
        result = []
        for row in rows:
            device_id = row["device_id"]
            own = operator.get(device_id, {})
            result.append(
                TaggedDevice(
                    device_id=device_id,
                    tags={**_status_tags(device_id, document(row["status_json"])), **own},
                    operator_tags=own,
                    admission=admitted.get(device_id, PENDING),
                    ota=device_id in with_ota,
                )
            )
        return result

    def _require_device(self, db: Connection, device_id: str) -> None:
        known = db.execute(select(devices.c.device_id).where(devices.c.device_id == device_id))
        if known.first() is None:
            raise UnknownDeviceError(device_id)


def _status_tags(device_id: str, status: JsonObject | None) -> dict[str, str]:
    """The implicit tags and the device's own (``[device] tags``), from its stored status;
    values that are not text are left out (the status is the device's word)."""
    tags = {"device": device_id}
    status = status or {}
    hardware = status.get("hardware_id")
    if isinstance(hardware, str) and hardware:
        tags["hardware"] = hardware
    own = status.get("tags")
    if isinstance(own, dict):
        tags.update({k: v for k, v in own.items() if isinstance(v, str)})
    return tags
