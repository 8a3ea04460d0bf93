"""Activation of an installed slot: load beside the serving version, health window, then commit
or roll back; plus start-up restore, crash-loop detection and the operator's rollback.

The registry's hot swap does the switching: the new version is loaded with ``keep_others``
(opened, checked against its card, golden check, warm-up) and only then becomes the default,
while the version that served before stays loaded. A failed load changes nothing. After the
switch, every request the new version serves is recorded in a ``HealthWindow``; a pass
retires the old version and commits the slot, a failure unloads the new version, so the old
one is the default again at once, without a reload and without failed requests.

``attempts`` in the slot state is raised before each activation and survives restarts: an
update that keeps crashing the agent is rolled back once the attempts are used up.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from agent.config import OtaHealthConfig
from agent.errors import GoldenMismatchError, InferenceError, UnknownModelError
from agent.inference.cardfile import load_card
from agent.inference.registry import ModelRegistry
from agent.ota.health_window import HealthPolicy, HealthWindow, Verdict
from agent.ota.report import Reporter, SlotRef, SlotSummary
from agent.ota.slots import Slot, SlotState, SlotStore, other_slot
from agent.ota.watch import RequestWatch
from edge_contract.card import card_path_for
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import ModelRelease

log = structlog.get_logger("agent.ota.activation")

POLL_S = 0.25


class Activator:
    """Moves installed slots into service and out again."""

    def __init__(
        self,
        registry: ModelRegistry,
        watch: RequestWatch,
        reporter: Reporter,
        health: OtaHealthConfig,
    ) -> None:
        self._registry = registry
        self._watch = watch
        self._reporter = reporter
        self._policy = HealthPolicy(
            duration_s=health.duration_s,
            min_inferences=health.min_inferences,
            max_error_rate=health.max_error_rate,
            latency_factor=health.latency_factor,
            max_attempts=health.max_attempts,
        )

    # -- queries -----------------------------------------------------------------------------

    @staticmethod
    def is_active(state: SlotState, release: ModelRelease, sha256: str) -> bool:
        """True when ``release`` is already the committed, active version."""
        if state.active is None:
            return False
        info = state.slots.get(state.active)
        return (
            info is not None
            and info.committed
            and (info.version, info.release, info.sha256)
            == (release.version, release.release, sha256)
        )

    @staticmethod
    def slot_summary(state: SlotState) -> SlotSummary:
        """Active, pending and previous versions, for the reported state."""

        def describe(slot: Slot | None) -> SlotRef | None:
            info = state.slots.get(slot) if slot else None
            if slot is None or info is None:
                return None
            return {
                "slot": slot,
                "version": info.version,
                "release": info.release,
                "variant": info.variant,
            }

        previous = None
        if state.active is not None:
            other = other_slot(state.active)
            info = state.slots.get(other)
            if other != state.pending and info is not None and info.committed:
                previous = describe(other)
        return {
            "active": describe(state.active),
            "pending": describe(state.pending),
            "previous": previous,
        }

    # -- start-up ----------------------------------------------------------------------------

    async def restore(self, store: SlotStore, state: SlotState) -> None:
        """Serve the active slot of ``store`` (before pipelines start)."""
        if state.active is None:
            return
        try:
            await self._load(store, state.active, keep_others=False)
        except InferenceError as exc:
            log.error("ota.restore_failed", model=store.name, slot=state.active, error=str(exc))

    async def resume(self, store: SlotStore) -> str | None:
        """Finish an activation a restart interrupted, or roll it back if it keeps crashing.

        Returns the version rolled back because its attempts were used up, else None.
        """
        state = await asyncio.to_thread(store.state)
        if state.pending is None:
            return None
        info = state.slots[state.pending]
        if info is not None and state.attempts >= self._policy.max_attempts:
            await self._roll_back(
                store,
                info.version,
                Reason.CRASH_LOOP,
                f"activation started {state.attempts} times without finishing",
            )
            return info.version
        await self.activate(store, state.pending)
        return None

    # -- activation --------------------------------------------------------------------------

    async def activate(self, store: SlotStore, slot: Slot) -> None:
        """Load ``slot`` beside the serving version, run the health window, commit or roll back."""
        state = await asyncio.to_thread(store.state)
        info = state.slots[slot]
        if info is None:
            raise UpdateError(Reason.LOAD_FAILED, f"slot {slot} of {store.name} is empty")
        name, version = store.name, info.version
        # A slot reaches here fresh from an install (attempts 0) or through resume(), which
        # rolls back a slot whose attempts are used up.
        state = await asyncio.to_thread(store.begin_activation, slot)
        self._reporter.set_slots(name, **self.slot_summary(state))
        await self._reporter.step(name, version, "activating", attempt=state.attempts)
        previous = self._serving_version(name)
        baseline = self._watch.p95(name, previous) if previous else None
        try:
            await self._load(store, slot, keep_others=True)
        except InferenceError as exc:
            reason = (
                Reason.GOLDEN_FAILED if isinstance(exc, GoldenMismatchError) else Reason.LOAD_FAILED
            )
            await self._roll_back(store, version, reason, str(exc))
            return
        verdict = await self._health_window(name, version, baseline)
        if verdict.passed:
            await self._commit(store, version, previous, verdict)
        else:
            self._unload(name, version)
            await self._roll_back(
                store, version, verdict.reason or Reason.HEALTH_ERRORS, verdict.detail
            )

    async def _health_window(self, name: str, version: str, baseline: float | None) -> Verdict:
        window = HealthWindow(self._policy, baseline)
        self._watch.watch(name, version, window.record)
        await self._reporter.step(
            name,
            version,
            "health_check",
            duration_s=self._policy.duration_s,
            min_inferences=self._policy.min_inferences,
            baseline_p95_s=baseline,
        )
        started = time.monotonic()
        try:
            while True:
                verdict = window.verdict(time.monotonic() - started)
                if not verdict.pending:
                    return verdict
                await asyncio.sleep(POLL_S)
        finally:
            self._watch.unwatch(name, version)

    async def _commit(
        self, store: SlotStore, version: str, previous: str | None, verdict: Verdict
    ) -> None:
        await asyncio.to_thread(store.commit)
        state = await asyncio.to_thread(store.state)
        if previous is not None and previous != version:
            self._unload(store.name, previous)
        self._reporter.set_slots(store.name, **self.slot_summary(state))
        await self._reporter.outcome(store.name, version, "committed", detail=verdict.detail)

    async def _roll_back(self, store: SlotStore, version: str, reason: str, detail: str) -> None:
        state = await asyncio.to_thread(store.abandon, reason)
        self._reporter.set_slots(store.name, **self.slot_summary(state))
        log.warning(
            "ota.rolled_back", model=store.name, version=version, reason=reason, detail=detail
        )
        await self._reporter.outcome(
            store.name, version, "rolled_back", reason=reason, detail=detail
        )

    # -- operator rollback -------------------------------------------------------------------

    async def operator_rollback(self, store: SlotStore) -> None:
        """Serve the other slot's committed version again (``fleet rollback``)."""
        state = await asyncio.to_thread(store.state)
        other = other_slot(state.active) if state.active is not None else None
        info = state.slots.get(other) if other is not None else None
        if other is None or info is None or not info.committed:
            raise UpdateError(Reason.NOTHING_TO_ROLL_BACK, f"{store.name}: no previous version")
        current = self._serving_version(store.name)
        try:
            await self._load(store, other, keep_others=False)
        except InferenceError as exc:
            raise UpdateError(Reason.LOAD_FAILED, f"previous version: {exc}") from exc
        await asyncio.to_thread(store.switch_back)
        state = await asyncio.to_thread(store.state)
        self._reporter.set_slots(store.name, **self.slot_summary(state))
        await self._reporter.outcome(
            store.name,
            info.version,
            "rolled_back",
            reason=Reason.OPERATOR_ROLLBACK,
            detail=f"from {current} back to {info.version}",
        )

    # -- registry ----------------------------------------------------------------------------

    async def _load(self, store: SlotStore, slot: Slot, *, keep_others: bool) -> None:
        path = store.model_path(slot)
        card = await asyncio.to_thread(load_card, card_path_for(path))
        info = (await asyncio.to_thread(store.state)).slots.get(slot)
        # A variant built for TensorRT or CUDA asks for them first; the configured ones follow.
        providers = info.providers if info is not None else ()
        await self._registry.load(path, card=card, keep_others=keep_others, providers=providers)

    def _serving_version(self, name: str) -> str | None:
        try:
            return self._registry.card(name).version
        except UnknownModelError:
            return None

    def _unload(self, name: str, version: str) -> None:
        try:
            self._registry.unload(name, version)
        except UnknownModelError:
            log.warning("ota.unload_missing", model=name, version=version)
