"""A/B slots of one model: install into the inactive slot, activate, commit or roll back.

Layout under ``root/<name>/``::

    a/<file_name>  a/<file_name>.card.json  a/slot.json     (and the same under b/)
    state.json                                             (the ``SlotState``)

``state.json`` is the single source of truth and is written atomically (``fsutil``) before
any method returns. ``active`` is the committed slot that serves when nothing is in flight;
``pending`` is a slot being activated or in its health window, so after a crash the agent
knows both what was safe and what it was trying. The active slot's files are never touched:
``install`` copies into the inactive slot under a temp name, checks length and sha256, then
marks the slot empty in the state, moves the new file into place, writes its card and only
then records it. A crash at any step leaves the active slot complete and the state parseable;
at worst the inactive slot is empty or holds a file the state does not name (cleared by the
next install), and temp files of an interrupted write are deleted when the store is opened.

Anti-rollback: ``max_release`` is the highest release counter ever committed and never
decreases. ``install`` refuses a lower counter (``release_rollback``); the same counter is a
no-op only when a complete, committed slot holds exactly that release; a higher counter
already present in a complete uncommitted slot (a crash during activation) is a no-op too.

Recovery rule for a missing or unreadable ``state.json`` (atomic writes make this a disk
fault or a hand edit, not a crash): a warning is logged and the state is rebuilt from the
per-slot records ``<slot>/slot.json`` (written after each install and commit). A slot counts
only if its record parses and its file has the recorded length and sha256. The complete
committed slot with the highest release becomes active; if no slot file is complete the
state is "no active slot". ``max_release`` is the largest floor any readable record saw.
Nothing is pending after recovery (an interrupted activation is abandoned), and since commit
writes ``state.json`` before the slot record, a commit cut in between is recovered as not
committed: the older model serves and the controller's desired state redeploys.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import TypedDict  # pydantic validates only this one on Python 3.11

from agent.errors import SlotError, StoreError
from agent.ota.fsutil import (
    TEMP_PREFIX,
    atomic_copy,
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    file_sha256,
    fsync_dir,
    is_temp,
    read_json,
    remove_file,
    rename_into_place,
)
from edge_contract.card import card_path_for
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import ModelRelease

log = structlog.get_logger("agent.ota.slots")

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
STATE_FILE = "state.json"
RECORD_FILE = "slot.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _empty_slots() -> dict[Slot, SlotInfo | None]:
    return {"a": None, "b": None}


class SlotResult(TypedDict):
    """The last outcome of a model's updates, kept in ``state.json``."""

    outcome: str
    reason: str | None
    version: str | None
    at: str


class _Where(TypedDict):
    """Where a ``SlotError`` happened (its keyword arguments)."""

    model: str
    slot: Slot | None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SlotInfo(_Frozen):
    """What one slot holds."""

    version: str = Field(description="Model version.")
    release: int = Field(ge=1, description="Release counter of the version.")
    file_name: str = Field(description="Model file name inside the slot dir.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the model file.")
    length: int = Field(ge=1, description="Length of the model file in bytes.")
    installed_at: str = Field(description="When it was installed (UTC ISO 8601).")
    committed: bool = Field(default=False, description="Passed its health window once.")
    variant: str | None = Field(
        default=None, description="Variant of the release (None: installed before variants)."
    )
    providers: tuple[str, ...] = Field(
        default=(), description="Execution providers the variant is for, best first (signed)."
    )


class SlotState(_Frozen):
    """The A/B state of one model (``state.json``)."""

    active: Slot | None = Field(default=None, description="Committed slot that serves.")
    pending: Slot | None = Field(default=None, description="Slot being activated or judged.")
    attempts: int = Field(default=0, ge=0, description="Activations of pending started.")
    slots: dict[Slot, SlotInfo | None] = Field(default_factory=_empty_slots)
    max_release: int = Field(default=0, ge=0, description="Anti-rollback floor.")
    last_result: SlotResult | None = Field(default=None, description="Last outcome.")

    @model_validator(mode="after")
    def _consistent(self) -> SlotState:
        if set(self.slots) != set(SLOTS):
            raise ValueError(f"slots must name exactly a and b, not {sorted(self.slots)}")
        for role, slot in (("active", self.active), ("pending", self.pending)):
            if slot is not None and self.slots[slot] is None:
                raise ValueError(f"{role} slot {slot} is empty")
        if self.pending is not None and self.pending == self.active:
            raise ValueError(f"slot {self.pending} is both active and pending")
        return self


class SlotRecord(_Frozen):
    """``<slot>/slot.json``: the slot's info and the floor known then (for recovery)."""

    info: SlotInfo
    floor: int = Field(ge=0)


def other_slot(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SlotStore:
    """The A/B slots and state of model ``name`` under ``root/<name>/``."""

    def __init__(self, root: Path, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise StoreError(f"model name {name!r} is not a plain name", path=str(root))
        self.name = name
        self.directory = root / name
        self._state = self._load()
        self._sweep_temps()

    # ----- reading
    def state(self) -> SlotState:
        return self._state

    def inactive_slot(self) -> Slot:
        """The slot an install goes to: the one that is not active (``a`` if none is)."""
        return other_slot(self._state.active) if self._state.active is not None else "a"

    def slot_dir(self, slot: Slot) -> Path:
        return self.directory / slot

    def model_path(self, slot: Slot) -> Path:
        """The model file in ``slot``; ``SlotError`` if the slot is empty."""
        return self.slot_dir(slot) / self._info(slot).file_name

    def card_path(self, slot: Slot) -> Path:
        return card_path_for(self.model_path(slot))

    def slot_complete(self, slot: Slot) -> bool:
        """True if ``slot`` holds a file with the recorded length and sha256."""
        info = self._state.slots[slot]
        return info is not None and self._file_matches(slot, info)

    # ----- install
    def install(self, release: ModelRelease, source: Path, sha256: str) -> Slot:
        """Copy ``source`` (verified, ``sha256``) into the inactive slot; returns the slot."""
        if release.name != self.name:
            raise UpdateError(
                Reason.MALFORMED_RELEASE,
                f"release of {release.name!r} offered to the slots of {self.name!r}",
            )
        present = self._already_installed(release, sha256)
        if present is not None:
            log.info("ota.install_noop", model=self.name, version=release.version, slot=present)
            return present
        self._check_floor(release)
        slot = self.inactive_slot()
        if self._state.pending == slot:
            raise SlotError("is pending activation: commit or abandon it first", **self._at(slot))
        self._place(slot, release, source, sha256)
        return slot

    def _already_installed(self, release: ModelRelease, sha256: str) -> Slot | None:
        for slot in SLOTS:
            info = self._state.slots[slot]
            if info is None or (info.release, info.sha256) != (release.release, sha256):
                continue
            floor = self._state.max_release
            allowed = release.release > floor or (info.committed and release.release == floor)
            if allowed and self._file_matches(slot, info):
                return slot
        return None

    def _check_floor(self, release: ModelRelease) -> None:
        floor = self._state.max_release
        if release.release <= floor:
            raise UpdateError(
                Reason.RELEASE_ROLLBACK,
                f"{release.name}@{release.version} has release {release.release}, "
                f"not above the installed release {floor}",
                release=release.release,
                floor=floor,
            )

    def _place(self, slot: Slot, release: ModelRelease, source: Path, sha256: str) -> None:
        directory = self.slot_dir(slot)
        ensure_dir(directory)
        incoming = directory / f"{TEMP_PREFIX}incoming-{release.file_name}"
        digest = atomic_copy(source, incoming)
        size = incoming.stat().st_size
        if (digest, size) != (sha256, release.length):
            remove_file(incoming)
            raise UpdateError(
                Reason.TAMPERED,
                f"{source} is {size} bytes with sha256 {digest}, "
                f"signed {release.length} bytes with sha256 {sha256}",
            )
        # From here on the slot's old content is forfeit: say so before touching it.
        self._write(self._evolve(slots={**self._state.slots, slot: None}))
        self._clear(directory, keep=incoming)
        model_path = directory / release.file_name
        rename_into_place(incoming, model_path)
        atomic_write_bytes(
            card_path_for(model_path), release.card.model_dump_json(indent=1).encode()
        )
        fsync_dir(directory)
        info = SlotInfo(
            version=release.version,
            release=release.release,
            file_name=release.file_name,
            sha256=sha256,
            length=release.length,
            installed_at=utc_now_iso(),
            variant=release.variant_name,
            providers=release.providers,
        )
        self._write_record(slot, info)
        self._write(self._evolve(slots={**self._state.slots, slot: info}))
        log.info("ota.installed", model=self.name, version=release.version, slot=slot)

    # ----- activation
    def begin_activation(self, slot: Slot) -> SlotState:
        """Mark ``slot`` pending and count one more activation attempt (across restarts)."""
        info = self._info(slot)
        if slot == self._state.active:
            raise SlotError(f"holds the active version {info.version}", **self._at(slot))
        if self._state.pending not in (None, slot):
            raise SlotError(f"slot {self._state.pending} is already pending", **self._at(slot))
        return self._write(self._evolve(pending=slot, attempts=self._state.attempts + 1))

    def commit(self) -> SlotState:
        """The pending slot passed: it becomes active and raises the anti-rollback floor."""
        slot = self._pending()
        info = self._info(slot).model_copy(update={"committed": True})
        state = self._write(
            self._evolve(
                active=slot,
                pending=None,
                attempts=0,
                slots={**self._state.slots, slot: info},
                max_release=max(self._state.max_release, info.release),
                last_result=self._result("committed", None, info.version),
            )
        )
        self._write_record(slot, info)
        return state

    def abandon(self, reason: str) -> SlotState:
        """The pending slot failed (``reason``): the active slot stays; pending is dropped."""
        info = self._info(self._pending())
        return self._write(
            self._evolve(
                pending=None,
                attempts=0,
                last_result=self._result("rolled_back", reason, info.version),
            )
        )

    def switch_back(self) -> SlotInfo:
        """Operator rollback: make the other slot active if it holds a committed version."""
        active = self._state.active
        other = other_slot(active) if active is not None else None
        info = self._state.slots[other] if other is not None else None
        if other is None or info is None or not info.committed:
            raise UpdateError(
                Reason.NOTHING_TO_ROLL_BACK,
                f"{self.name}: no committed version besides the active one (slot {active})",
            )
        if not self._file_matches(other, info):
            raise UpdateError(
                Reason.NOTHING_TO_ROLL_BACK,
                f"{self.name}: slot {other} file for {info.version} is damaged",
            )
        self._write(
            self._evolve(
                active=other,
                pending=None,
                attempts=0,
                last_result=self._result("rolled_back", Reason.OPERATOR_ROLLBACK, info.version),
            )
        )
        return info

    def record_result(
        self, outcome: str, reason: str | None = None, version: str | None = None
    ) -> SlotState:
        """Remember the outcome of an update that did not change the slots (e.g. refused)."""
        return self._write(self._evolve(last_result=self._result(outcome, reason, version)))

    # ----- helpers
    def _info(self, slot: Slot) -> SlotInfo:
        info = self._state.slots[slot]
        if info is None:
            raise SlotError("is empty", **self._at(slot))
        return info

    def _pending(self) -> Slot:
        if self._state.pending is None:
            raise SlotError("no slot is pending", **self._at(None))
        return self._state.pending

    def _at(self, slot: Slot | None) -> _Where:
        return {"model": self.name, "slot": slot}

    def _result(self, outcome: str, reason: str | None, version: str | None) -> SlotResult:
        return {
            "outcome": outcome,
            "reason": None if reason is None else str(reason),
            "version": version,
            "at": utc_now_iso(),
        }

    def _evolve(self, **changes: Any) -> SlotState:
        return SlotState.model_validate({**self._state.model_dump(), **changes})

    def _write(self, state: SlotState) -> SlotState:
        atomic_write_json(self.directory / STATE_FILE, state.model_dump(mode="json"))
        self._state = state
        return state

    def _write_record(self, slot: Slot, info: SlotInfo) -> None:
        record = SlotRecord(info=info, floor=self._state.max_release)
        atomic_write_json(self.slot_dir(slot) / RECORD_FILE, record.model_dump(mode="json"))

    def _file_matches(self, slot: Slot, info: SlotInfo) -> bool:
        path = self.slot_dir(slot) / info.file_name
        try:
            if path.stat().st_size != info.length:
                return False
        except OSError:
            return False
        return file_sha256(path) == info.sha256

    def _clear(self, directory: Path, *, keep: Path) -> None:
        """Empty a slot dir except ``keep`` (the old record goes first: it names old bytes)."""
        remove_file(directory / RECORD_FILE)
        for entry in directory.iterdir():
            if entry != keep:
                remove_file(entry)
        fsync_dir(directory)

    def _sweep_temps(self) -> None:
        """Delete temp files that a killed write left (this store has a single owner)."""
        for directory in (self.directory, *(self.slot_dir(slot) for slot in SLOTS)):
            if not directory.is_dir():
                continue
            temps = [entry for entry in directory.iterdir() if is_temp(entry)]
            for entry in temps:
                remove_file(entry)
            if temps:
                fsync_dir(directory)
                log.info("ota.slot_temps_removed", dir=str(directory), count=len(temps))

    # ----- loading and recovery
    def _load(self) -> SlotState:
        path = self.directory / STATE_FILE
        try:
            raw = read_json(path)
        except StoreError as exc:
            return self._recover_from(str(exc))
        if raw is None:
            if not any(self.slot_dir(slot).exists() for slot in SLOTS):
                return SlotState()  # first use: nothing installed yet
            return self._recover_from(f"{path} is missing")
        try:
            return SlotState.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            return self._recover_from(f"{path} field {where}: {first['msg']}")

    def _recover_from(self, problem: str) -> SlotState:
        state = self._recover()
        log.warning(
            "ota.slot_state_recovered",
            model=self.name,
            problem=problem,
            active=state.active,
            max_release=state.max_release,
        )
        return self._write(state)

    def _recover(self) -> SlotState:
        slots = _empty_slots()
        floor = 0
        for slot in SLOTS:
            record = self._read_record(slot)
            if record is None:
                continue
            floor = max(floor, record.floor)
            if self._file_matches(slot, record.info):
                slots[slot] = record.info
        committed = [slot for slot in SLOTS if (info := slots[slot]) and info.committed]
        active = max(committed, key=lambda slot: self._release_of(slots[slot]), default=None)
        for slot in committed:
            floor = max(floor, self._release_of(slots[slot]))
        return SlotState(
            active=active,
            slots=slots,
            max_release=floor,
            last_result=self._result("recovered", None, None),
        )

    def _read_record(self, slot: Slot) -> SlotRecord | None:
        try:
            raw = read_json(self.slot_dir(slot) / RECORD_FILE)
            return None if raw is None else SlotRecord.model_validate(raw)
        except (StoreError, ValidationError):
            return None

    @staticmethod
    def _release_of(info: SlotInfo | None) -> int:
        return 0 if info is None else info.release
