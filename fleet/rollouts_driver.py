"""The rollout driver: the controller's asyncio task that moves every active rollout along.

Every ``[rollouts] tick_s`` it runs ``RolloutApp.tick`` on the controller's store thread
(observe the fleet -> ``machine.step`` -> save state, transitions and signed desired states in
one transaction) and then publishes what the tick signed, on the loop. Operator events
(pause, resume, approve, abort) and ``rollout start`` take the same persist-then-publish path
through the RPC server. At start it first re-publishes the stored signed desired state of
every pending member of the active rollouts: a controller killed between a commit and its
publish loses nothing, and an agent ignores a counter it has already applied. Started by
``fleet.service.Controller`` when OTA is on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from edge_contract.controller import RolloutSummary
from fleet.app.replies import Publish
from fleet.app.rollouts import RolloutApp
from fleet.errors import FleetError
from fleet.ingest import StoreThread
from fleet.ota import ReleaseService

log = structlog.get_logger("fleet.rollouts")


class RolloutDriver:
    """Ticks the active rollouts; one store thread, one loop."""

    def __init__(
        self,
        rollouts: RolloutApp,
        releases: ReleaseService,
        thread: StoreThread,
        tick_s: float,
        on_change: Callable[[list[RolloutSummary]], None] | None = None,
    ) -> None:
        self._rollouts = rollouts
        self._releases = releases
        self._thread = thread
        self._tick_s = tick_s
        self._on_change = on_change

    async def run(self) -> None:
        """Re-publish the pending members' desired states, then tick until cancelled."""
        await self._publish(self._rollouts.republish, "rollout.republished")
        while True:
            await self._publish(self._rollouts.tick, "rollout.published")
            await self._report()
            await asyncio.sleep(self._tick_s)

    async def _report(self) -> None:
        """The changed rollouts, to ``on_change`` on the loop (its failure is only logged)."""
        if self._on_change is None:
            return
        try:
            changed = await self._thread.run(self._rollouts.take_changed)
            if changed:
                self._on_change(changed)
        except Exception:  # the live feed must not stop the rollouts
            log.exception("rollout.report_failed")

    async def _publish(self, work: Callable[[], list[Publish]], event: str) -> None:
        try:
            messages: list[Publish] = await self._thread.run(work)
        except FleetError as exc:  # the store or the repository failed: try again next tick
            log.error("rollout.tick_failed", error=str(exc))
            return
        except Exception:  # a bug must not stop the rollouts of the other models for good
            log.exception("rollout.tick_crashed")
            return
        if messages:
            self._releases.publish(messages)
            log.info(event, messages=len(messages))
