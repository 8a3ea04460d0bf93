"""The rollout state machine: ``start`` and ``step``, pure functions of a state and an event.

An event is an ``Observation`` (a tick: the fleet as the store sees it, at the time it carries)
or an operator's ``Approve``/``Pause``/``Resume``/``Abort``. The answer is a ``Step``: the new
state (never the input mutated), the ``Deploy``/``Revert`` actions the controller signs and
sends, and the ``Transition``s it records. The phases, and what moves between them:

- INSTALLING: the stage's devices were sent the version; each settles as committed, failed
  or not reached (silent past the offline timeout). Too many failures halt; once none is
  pending the health window starts (WATCHING).
- WATCHING: at the window's end the gate judges it: fail halts, pass moves to the next stage
  (or completes, or waits for approval), insufficient data extends the window twice, then
  waits for approval.
- Halt and abort revert every member to the version it ran before.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleet.errors import RolloutError
from fleet.rollouts.gate import aggregate, evaluate
from fleet.rollouts.model import (
    ACTIVE_PHASES,
    Abort,
    Action,
    Deploy,
    DeviceInstall,
    GateResult,
    GroupHealth,
    Member,
    Observation,
    OperatorEvent,
    Outcome,
    Pause,
    Phase,
    Resume,
    Revert,
    RolloutSpec,
    RolloutState,
    Step,
    Transition,
    Verdict,
)
from fleet.rollouts.plan import check_stages, format_stage, stage_members

MAX_EXTENSIONS = 2  # health windows added for insufficient data before asking an operator
REVERTIBLE = frozenset({Outcome.COMMITTED, Outcome.PENDING, Outcome.FAILED, Outcome.NOT_REACHED})
_UNSEEN = DeviceInstall()
_EPSILON = 1e-9  # a failure share exactly at --max-install-failures passes


def start(spec: RolloutSpec, obs: Observation) -> Step:
    """Stage 1: its devices are sent the version (phase INSTALLING)."""
    check_stages(spec.stages)
    new = stage_members(spec.rollout_id, spec.stages, 0, obs.eligible, frozenset())
    if not new:
        raise RolloutError(
            f"rollout {spec.rollout_id}: no eligible device matches {spec.selector!r}",
            value=spec.rollout_id,
        )
    reason = f"{_stage_name(spec, 0)}: {len(new)} device(s)"
    state = RolloutState(
        spec=spec,
        phase=Phase.INSTALLING,
        stage=0,
        stage_started_at=obs.now,
        members=_new_members(new, 0, obs),
        reason=reason,
        updated_at=obs.now,
    )
    first = Transition(
        at=obs.now, from_phase=None, to_phase=Phase.INSTALLING, stage=0, reason=reason
    )
    return Step(state=state, actions=_deploy(spec, new), transitions=(first,))


def step(state: RolloutState, event: Observation | OperatorEvent) -> Step:
    """The state after ``event``. An operator event that does not apply in the current
    phase raises ``RolloutError``; a tick of a finished rollout changes nothing."""
    if isinstance(event, Observation):
        return _tick(state, event)
    return _operator(state, event)


# -- ticks ------------------------------------------------------------------------------------


def _tick(state: RolloutState, obs: Observation) -> Step:
    if state.phase not in ACTIVE_PHASES:
        return Step(state=state)
    settled = _settle_all(state, obs)
    if settled.phase is Phase.INSTALLING:
        return _installing(settled, obs)
    if settled.phase is Phase.WATCHING:
        return _watching(settled, obs)
    return Step(state=settled)


def _settle_all(state: RolloutState, obs: Observation) -> RolloutState:
    """Members' outcomes from their installs (in every active phase: a device that was not
    reached may commit later, and stays a member)."""
    members = {
        device: _settle(state.spec, member, obs.installs.get(device, _UNSEEN), obs.now)
        for device, member in state.members.items()
    }
    if members == state.members:
        return state
    return state.model_copy(update={"members": members, "updated_at": obs.now})


def _settle(spec: RolloutSpec, member: Member, install: DeviceInstall, now: float) -> Member:
    if member.outcome not in (Outcome.PENDING, Outcome.NOT_REACHED):
        return member
    if install.active_version == spec.version:
        update: dict[str, object] = {"outcome": Outcome.COMMITTED, "reason": None}
        return member.model_copy(update={**update, "variant": install.variant})
    if install.failed_reason is not None:
        return member.model_copy(
            update={"outcome": Outcome.FAILED, "reason": install.failed_reason}
        )
    silent = now - max(member.sent_at, install.last_seen or 0.0)
    if member.outcome is Outcome.PENDING and silent > spec.offline_timeout_s:
        reason = (
            f"not reached: silent for {silent:.0f}s (offline timeout {spec.offline_timeout_s:g}s)"
        )
        return member.model_copy(update={"outcome": Outcome.NOT_REACHED, "reason": reason})
    return member


def _installing(state: RolloutState, obs: Observation) -> Step:
    failures = _install_failures(state)
    if failures is not None:
        return _halt(state, Phase.HALTED, obs.now, failures)
    topped = _top_up(state, obs)
    if topped is not None:
        return topped
    if any(m.outcome is Outcome.PENDING for m in state.members.values()):
        return Step(state=state)
    counts = {o: _count(state, o) for o in Outcome}
    reason = (
        f"{_stage_name(state.spec, state.stage)}: {counts[Outcome.COMMITTED]} committed, "
        f"{counts[Outcome.FAILED]} failed, {counts[Outcome.NOT_REACHED]} not reached; "
        f"watching for {state.spec.health_window_s:g}s"
    )
    return _transition(
        state, Phase.WATCHING, obs.now, reason, window_started_at=obs.now, window_extensions=0
    )


def _top_up(state: RolloutState, obs: Observation) -> Step | None:
    """The stage's devices not picked yet, sent the version (a Step without a transition).

    They are picked on the first tick of a stage entered by an approval (which carries no
    observation); later ticks only add devices that joined the selection meanwhile, when
    the stage's share of the grown selection calls for them."""
    spec = state.spec
    new = stage_members(
        spec.rollout_id, spec.stages, state.stage, obs.eligible, state.members.keys()
    )
    if not new:
        return None
    members = {**state.members, **_new_members(new, state.stage, obs)}
    topped = state.model_copy(update={"members": members, "updated_at": obs.now})
    return Step(state=topped, actions=_deploy(spec, new))


def _count(state: RolloutState, outcome: Outcome) -> int:
    return sum(1 for m in state.members.values() if m.stage == state.stage and m.outcome is outcome)


def _install_failures(state: RolloutState) -> str | None:
    """Why the stage halts on install failures, or None: failures over the stage's members
    that were reached (not-reached devices neither count for nor against it)."""
    stage = {d: m for d, m in state.members.items() if m.stage == state.stage}
    failed = sorted(d for d, m in stage.items() if m.outcome is Outcome.FAILED)
    reached = sum(1 for m in stage.values() if m.outcome is not Outcome.NOT_REACHED)
    limit = state.spec.thresholds.max_install_failures
    if not failed or len(failed) / reached <= limit + _EPSILON:
        return None
    which = ", ".join(f"{d} ({stage[d].reason})" for d in failed)
    return (
        f"{_stage_name(state.spec, state.stage)}: install failures {len(failed)}/{reached} "
        f"({len(failed) / reached:.0%}) > {limit * 100:g}%: {which}"
    )


def _watching(state: RolloutState, obs: Observation) -> Step:
    spec = state.spec
    started = state.window_started_at
    if started is None:  # not written by this module; the stage's start is the safe guess
        started = state.stage_started_at
    if obs.now < started + spec.health_window_s * (1 + state.window_extensions):
        return Step(state=state)
    baseline, borrowed = _baseline(state, obs)
    gate = evaluate(aggregate(obs.candidate), baseline, spec.thresholds)
    name = _stage_name(spec, state.stage)
    if borrowed:
        name += f" (against {BORROWED_BASELINE})"
    if gate.outcome == "fail":
        return _halt(state, Phase.HALTED, obs.now, f"{name} failed: {_details(gate, 'fail')}", gate)
    if gate.outcome == "insufficient":
        return _insufficient(state, obs.now, gate)
    if spec.require_approval and state.stage < len(spec.stages) - 1:
        reason = f"{name} passed; waiting for approval"
        return _transition(state, Phase.AWAITING_APPROVAL, obs.now, reason, gate=gate)
    return _advance(state, obs.now, f"{name} passed", obs, gate)


BORROWED_BASELINE = "the previous version's last measured window: no device is left on it"


def _baseline(state: RolloutState, obs: Observation) -> tuple[GroupHealth | None, bool]:
    """The devices still on the previous version, over this window; once none is left (the
    last stage), the baseline the previous gate measured, and True to say it was borrowed.

    Without it the last stage could never pass: its p95 would stay "insufficient data"."""
    if obs.baseline:
        return aggregate(obs.baseline), False
    last = state.last_gate.baseline if state.last_gate is not None else None
    if last is not None and last.devices > 0:
        return last, True
    return None, False


def _details(gate: GateResult, verdict: Verdict) -> str:
    return "; ".join(v.detail for v in gate.verdicts if v.verdict == verdict)


def _insufficient(state: RolloutState, at: float, gate: GateResult) -> Step:
    why = f"insufficient data: {_details(gate, 'insufficient')}"
    if state.window_extensions < MAX_EXTENSIONS:
        extensions = state.window_extensions + 1
        reason = f"{why}; window extended ({extensions}/{MAX_EXTENSIONS})"
        return _transition(
            state, Phase.WATCHING, at, reason, gate=gate, window_extensions=extensions
        )
    reason = f"{why}; waiting for approval"
    return _transition(state, Phase.AWAITING_APPROVAL, at, reason, gate=gate)


# -- stages -----------------------------------------------------------------------------------


def _advance(
    state: RolloutState, at: float, prefix: str, obs: Observation | None, gate: GateResult | None
) -> Step:
    """Past the current stage: completed after the last, else the next stage starts; its
    members are picked now when there is an observation, else on the next tick."""
    spec = state.spec
    if state.stage >= len(spec.stages) - 1:
        return _transition(state, Phase.COMPLETED, at, f"{prefix}; completed", gate=gate)
    index = state.stage + 1
    new = (
        ()
        if obs is None
        else stage_members(spec.rollout_id, spec.stages, index, obs.eligible, state.members.keys())
    )
    members = state.members if obs is None else {**state.members, **_new_members(new, index, obs)}
    picked = " starts" if obs is None else f": {len(new)} new device(s)"
    step = _transition(
        state,
        Phase.INSTALLING,
        at,
        f"{prefix}; {_stage_name(spec, index)}{picked}",
        gate=gate,
        stage=index,
        stage_started_at=at,
        window_started_at=None,
        window_extensions=0,
        members=members,
    )
    return step.model_copy(update={"actions": _deploy(spec, new)})


def _new_members(devices: Iterable[str], stage: int, obs: Observation) -> dict[str, Member]:
    return {
        device: Member(
            stage=stage,
            previous_version=obs.installs.get(device, _UNSEEN).active_version,
            sent_at=obs.now,
        )
        for device in devices
    }


def _deploy(spec: RolloutSpec, devices: tuple[str, ...]) -> tuple[Action, ...]:
    return (Deploy(version=spec.version, devices=devices),) if devices else ()


def _stage_name(spec: RolloutSpec, index: int) -> str:
    return f"stage {index + 1}/{len(spec.stages)} ({format_stage(spec.stages[index])})"


# -- halts and operator events ----------------------------------------------------------------


def _halt(
    state: RolloutState, phase: Phase, at: float, reason: str, gate: GateResult | None = None
) -> Step:
    """HALTED or ABORTED: every member that may run the new version goes back to the one it
    ran before; members with none are named in the reason."""
    versions: dict[str, str] = {}
    members = dict(state.members)
    missing: list[str] = []
    for device, member in state.members.items():
        if member.outcome not in REVERTIBLE:
            continue
        if member.previous_version is None:
            missing.append(device)
        elif member.previous_version != state.spec.version:  # else it ran it already
            versions[device] = member.previous_version
            members[device] = member.model_copy(update={"outcome": Outcome.REVERTED})
    if missing:
        reason = f"{reason}; no previous version: {', '.join(sorted(missing))}"
    step = _transition(state, phase, at, reason, gate=gate, members=members, paused_from=None)
    actions: tuple[Action, ...] = (Revert(versions=versions),) if versions else ()
    return step.model_copy(update={"actions": actions})


def _operator(state: RolloutState, event: OperatorEvent) -> Step:
    rollout = state.spec.rollout_id
    if state.phase not in ACTIVE_PHASES:
        raise RolloutError(
            f"rollout {rollout} is {state.phase}; nothing to {event.kind}", value=rollout
        )
    who = event.operator or "an operator"
    if isinstance(event, Abort):
        return _halt(state, Phase.ABORTED, event.at, f"{event.reason} ({who})")
    if isinstance(event, Pause):
        if state.phase is Phase.PAUSED:
            raise RolloutError(f"rollout {rollout} is already paused", value=rollout)
        return _transition(
            state, Phase.PAUSED, event.at, f"paused by {who}", paused_from=state.phase
        )
    if isinstance(event, Resume):
        return _resume(state, event.at, who)
    if state.phase is not Phase.AWAITING_APPROVAL:
        raise RolloutError(
            f"rollout {rollout} is {state.phase}, not awaiting approval; nothing to approve",
            value=rollout,
        )
    return _advance(state, event.at, f"approved by {who}", None, None)


def _resume(state: RolloutState, at: float, who: str) -> Step:
    back = state.paused_from
    if state.phase is not Phase.PAUSED or back is None:
        rollout = state.spec.rollout_id
        raise RolloutError(
            f"rollout {rollout} is {state.phase}, not paused; nothing to resume", value=rollout
        )
    # A window interrupted by a pause starts again: its figures straddle the pause.
    reason = f"resumed by {who}"
    if back is Phase.WATCHING:
        return _transition(
            state, back, at, reason, paused_from=None, window_started_at=at, window_extensions=0
        )
    return _transition(state, back, at, reason, paused_from=None)


def _transition(
    state: RolloutState,
    to: Phase,
    at: float,
    reason: str,
    *,
    gate: GateResult | None = None,
    **changes: object,
) -> Step:
    """The state moved to ``to`` (with ``changes``), and the transition that records it."""
    update = {**changes, "phase": to, "reason": reason, "updated_at": at}
    if gate is not None:
        update["last_gate"] = gate
    moved = state.model_copy(update=update)
    record = Transition(
        at=at, from_phase=state.phase, to_phase=to, stage=moved.stage, reason=reason, gate=gate
    )
    return Step(state=moved, transitions=(record,))
