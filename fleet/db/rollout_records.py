"""The store's records of rollouts: each rollout's state with its transitions and the signed
desired states of a step, saved in one transaction; the install view of each member (its
reported version and variant, its newest failure of the version); the telemetry samples a
health window reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from sqlalchemy import (
    Connection,
    func,
    select,
)

from edge_contract.reasons import Reason
from fleet.db.base import StoreBase, _text
from fleet.db.tables import (
    desired,
    desired_counters,
    devices,
    events,
    reported,
    rollout_transitions,
    rollouts,
    telemetry,
)
from fleet.errors import FleetError
from fleet.records import (
    Directive,
    JsonObject,
    TelemetrySample,
    document,
)
from fleet.rollouts.model import (
    ACTIVE_PHASES,
    DeviceInstall,
    GateResult,
    Phase,
    RolloutState,
    Transition,
)

# The OTA events that mean a device did not install a version (``DeviceInstall.failed_reason``).
# ``ota_rolled_back`` too: the agent's own health window refused the version after loading it
# (an operator's rollback names the version it went back to, and is no failure of it).
_INSTALL_FAILURES = ("ota_failed", "ota_rejected", "ota_rolled_back")
# Telemetry a health window reads from before its start (the sample at or before the start).
_SAMPLE_LOOKBACK_S = 3600.0
# Signs one directive with the counter the store gave it (``ReleaseService.signer``).
Sign = Callable[[Directive, int], bytes]


class RolloutRecords(StoreBase):
    """Rollout state, transitions, directives, installs and samples (part of ``SqlFleetStore``)."""

    # -- rollouts (fleet.app.rollouts, fleet.rollouts_driver) ----------------------------

    def save_rollout(
        self,
        state: RolloutState,
        transitions: Sequence[Transition],
        directives: Sequence[Directive] = (),
        sign: Sign | None = None,
    ) -> list[tuple[str, bytes]]:
        """Persist a rollout's state, its new transitions and the desired states it sets, in
        ONE transaction; returns (device id, signed payload) of each directive, to publish.

        Each directive takes the device's next counter and is signed by ``sign`` inside the
        transaction, and the signed payload is kept (``desired_payloads``): a controller
        killed after the commit re-publishes it, one killed before it decides again.
        """
        if directives and sign is None:
            raise FleetError("a rollout's desired states need a signer (is OTA enabled?)")
        spec = state.spec
        values = {
            "model": spec.model,
            "version": spec.version,
            "name": _text(spec.name),
            "phase": state.phase.value,
            "state_json": state.model_dump_json(),
            "created_at": spec.created_at,
            "updated_at": state.updated_at,
        }
        signed: list[tuple[str, bytes]] = []
        with self._tx() as db:
            insert = self._insert(rollouts).values(rollout_id=spec.rollout_id, **values)
            db.execute(
                insert.on_conflict_do_update(
                    index_elements=[rollouts.c.rollout_id],
                    set_={k: v for k, v in values.items() if k != "created_at"},
                )
            )
            for t in transitions:
                db.execute(
                    rollout_transitions.insert().values(
                        rollout_id=spec.rollout_id,
                        at=t.at,
                        from_phase=None if t.from_phase is None else t.from_phase.value,
                        to_phase=t.to_phase.value,
                        stage=t.stage,
                        reason=_text(t.reason),
                        gate_json=None if t.gate is None else t.gate.model_dump_json(),
                    )
                )
            for directive in directives:
                assert sign is not None
                counter = self._bump_counter(db, directive.device_id)
                payload = sign(directive, counter)
                self._set_desired(db, directive, counter, payload, now=state.updated_at)
                signed.append((directive.device_id, payload))
        return signed

    def _bump_counter(self, db: Connection, device_id: str) -> int:
        bump = self._insert(desired_counters).values(device_id=device_id, counter=1)
        db.execute(
            bump.on_conflict_do_update(
                index_elements=[desired_counters.c.device_id],
                set_={"counter": desired_counters.c.counter + 1},
            )
        )
        return int(
            db.execute(
                select(desired_counters.c.counter).where(desired_counters.c.device_id == device_id)
            ).scalar_one()
        )

    def _set_desired(
        self, db: Connection, directive: Directive, counter: int, payload: bytes, *, now: float
    ) -> None:
        state = {
            "counter": counter,
            "version": directive.version,
            "action": directive.action,
            "updated": now,
            "payload": payload,
        }
        insert = self._insert(desired).values(
            device_id=directive.device_id, model=directive.model, **state
        )
        db.execute(
            insert.on_conflict_do_update(
                index_elements=[desired.c.device_id, desired.c.model], set_=state
            )
        )

    def rollout(self, rollout_id: str) -> RolloutState | None:
        rows = self._query(select(rollouts.c.state_json).where(rollouts.c.rollout_id == rollout_id))
        return RolloutState.model_validate_json(rows[0]["state_json"]) if rows else None

    def rollouts(self, *, active: bool = False, model: str | None = None) -> list[RolloutState]:
        """Rollouts, newest first; ``active``: only those in an active phase."""
        query = select(rollouts.c.state_json).order_by(
            rollouts.c.created_at.desc(), rollouts.c.rollout_id
        )
        if active:
            query = query.where(rollouts.c.phase.in_([p.value for p in ACTIVE_PHASES]))
        if model is not None:
            query = query.where(rollouts.c.model == model)
        return [RolloutState.model_validate_json(r["state_json"]) for r in self._query(query)]

    def rollout_phase_counts(self) -> dict[str, int]:
        """How many rollouts are in each phase (the phases with none are absent)."""
        query = select(rollouts.c.phase, func.count().label("n")).group_by(rollouts.c.phase)
        return {str(r["phase"]): int(r["n"]) for r in self._query(query)}

    def rollout_history(self, rollout_id: str) -> list[Transition]:
        """Every transition of a rollout, oldest first."""
        rows = self._query(
            select(rollout_transitions)
            .where(rollout_transitions.c.rollout_id == rollout_id)
            .order_by(rollout_transitions.c.id)
        )
        return [
            Transition(
                at=r["at"],
                from_phase=None if r["from_phase"] is None else Phase(r["from_phase"]),
                to_phase=Phase(r["to_phase"]),
                stage=r["stage"],
                reason=r["reason"],
                gate=None
                if r["gate_json"] is None
                else GateResult.model_validate_json(r["gate_json"]),
            )
            for r in rows
        ]

    def desired_payloads(self, model: str, device_ids: Iterable[str]) -> dict[str, bytes]:
        """The signed desired state last sent for ``model`` to each device (when kept)."""
        wanted = sorted(set(device_ids))
        rows = self._query(
            select(desired.c.device_id, desired.c.payload).where(
                (desired.c.model == model)
                & desired.c.device_id.in_(wanted)
                & desired.c.payload.is_not(None)
            )
        )
        return {r["device_id"]: bytes(r["payload"]) for r in rows}

    def installs(
        self, model: str, version: str, since: Mapping[str, float]
    ) -> dict[str, DeviceInstall]:
        """What each device of ``since`` runs of ``model``: the active version (and variant)
        it reports, its newest ``ota_failed``/``ota_rejected`` of ``version`` received after
        its ``since`` time, and when it was last seen."""
        wanted = sorted(since)
        if not wanted:
            return {}
        seen = {
            r["device_id"]: float(r["last_seen"])
            for r in self._query(
                select(devices.c.device_id, devices.c.last_seen).where(
                    devices.c.device_id.in_(wanted)
                )
            )
        }
        active = {
            r["device_id"]: _active_slot(document(r["payload"]), model)
            for r in self._query(
                select(reported.c.device_id, reported.c.payload).where(
                    reported.c.device_id.in_(wanted)
                )
            )
        }
        failures = self._install_failures(wanted, version, min(since.values()), since)
        result = {}
        for device_id in wanted:
            slot_version, variant = active.get(device_id, (None, None))
            result[device_id] = DeviceInstall(
                active_version=slot_version,
                variant=variant,
                failed_reason=failures.get(device_id),
                last_seen=seen.get(device_id),
            )
        return result

    def _install_failures(
        self, wanted: list[str], version: str, after: float, since: Mapping[str, float]
    ) -> dict[str, str]:
        rows = self._query(
            select(events.c.device_id, events.c.received, events.c.payload)
            .where(
                events.c.device_id.in_(wanted)
                & events.c.event.in_(_INSTALL_FAILURES)
                & (events.c.received >= after)
            )
            .order_by(events.c.id)
        )
        found: dict[str, str] = {}
        for row in rows:  # oldest first: the newest of a device wins
            body = document(row["payload"]) or {}
            if row["received"] < since[row["device_id"]] or body.get("version") != version:
                continue
            if body.get("reason") == Reason.OPERATOR_ROLLBACK:
                continue
            found[row["device_id"]] = _failure_reason(body)
        return found

    def telemetry_samples(
        self, device_ids: Iterable[str], start: float, end: float
    ) -> dict[str, list[TelemetrySample]]:
        """Each device's telemetry from just before ``start`` (the health window reads the
        sample at or before it) to ``end``, oldest first, by the device's own ``ts``."""
        wanted = sorted(set(device_ids))
        rows = self._query(
            select(telemetry.c.device_id, telemetry.c.ts_epoch, telemetry.c.payload)
            .where(
                telemetry.c.device_id.in_(wanted)
                & (telemetry.c.ts_epoch >= start - _SAMPLE_LOOKBACK_S)
                & (telemetry.c.ts_epoch <= end)
            )
            .order_by(telemetry.c.device_id, telemetry.c.ts_epoch)
        )
        samples: dict[str, list[TelemetrySample]] = {d: [] for d in wanted}
        for row in rows:
            inference = (document(row["payload"]) or {}).get("inference")
            samples[row["device_id"]].append(
                TelemetrySample(
                    ts=float(row["ts_epoch"]),
                    inference=inference if isinstance(inference, dict) else None,
                )
            )
        return samples


def _active_slot(report: JsonObject | None, model: str) -> tuple[str | None, str | None]:
    """(version, variant) of ``model``'s active slot in a stored reported state."""
    models = (report or {}).get("models")
    entry = models.get(model) if isinstance(models, dict) else None
    if not isinstance(entry, dict):
        return None, None
    slot = entry.get("active")
    if not isinstance(slot, dict):
        return None, None
    # The variant is on the active slot; agents also repeat it beside the slots.
    version, variant = slot.get("version"), slot.get("variant") or entry.get("variant")
    return (
        version if isinstance(version, str) else None,
        variant if isinstance(variant, str) else None,
    )


def _failure_reason(event: JsonObject) -> str:
    """``"ota_failed: golden_mismatch (detail)"`` from a stored OTA failure event."""
    parts = [str(event.get("event"))]
    reason, detail = event.get("reason"), event.get("detail") or event.get("error")
    if isinstance(reason, str):
        parts.append(reason)
    text = ": ".join(parts)
    if isinstance(detail, str) and detail:
        text += f" ({detail[:200]})"
    return text
