"""The rollout state machine (fleet.rollouts.machine): every transition, driven by a small
simulated fleet that obeys the actions. Every step's state is checked to round-trip through
JSON (the controller persists it after each transition) and the input state to be left as it
was (the machine is pure)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import RolloutError
from fleet.rollouts.machine import BORROWED_BASELINE, start, step
from fleet.rollouts.model import (
    ACTIVE_PHASES,
    Abort,
    Approve,
    Deploy,
    DeviceHealth,
    DeviceInstall,
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
    Thresholds,
)
from fleet.rollouts.plan import parse_stages, rank

T0 = 1_800_000_000.0
WINDOW = 600.0
TIMEOUT = 1800.0
SIX = tuple(f"pi-{i}" for i in range(1, 7))
RID = "r-0000abcd"
ORDER = rank(RID, SIX)  # the canary is ORDER[0]


def make_spec(**changes: object) -> RolloutSpec:
    fields: dict[str, object] = {
        "rollout_id": RID,
        "model": "digits",
        "version": "2",
        "selector": "*",
        "stages": parse_stages("1,50%,100%"),
        "health_window_s": WINDOW,
        "offline_timeout_s": TIMEOUT,
        "created_at": T0,
    }
    return RolloutSpec.model_validate({**fields, **changes})


class Sim:
    """A fleet the machine drives: devices commit, fail or stay silent on command, and obey
    every Revert; health is measured per side (members on the new version vs the rest)."""

    def __init__(
        self,
        spec: RolloutSpec | None = None,
        devices: Iterable[str] = SIX,
        previous: dict[str, str | None] | None = None,
        reload: bool = False,
    ) -> None:
        self.reload = reload  # carry on from the state's JSON, as a restarted controller does
        self.spec = spec or make_spec()
        self.now = T0
        self.eligible = list(devices)
        self.active: dict[str, str | None] = previous or dict.fromkeys(self.eligible, "1")
        self.failed: dict[str, str] = {}
        self.offline: set[str] = set()
        self.seen: dict[str, float] = {}
        self.p95 = {"new": 0.010, "old": 0.010}
        self.baseline = True
        self.reference: list[str] = []  # devices on the previous version outside the selection
        self.steps: list[Step] = []
        self.deployed: list[tuple[int, str]] = []
        self.state: RolloutState | None = None
        self._take(start(self.spec, self.observe()))

    # -- the world -----------------------------------------------------------------------------

    def observe(self) -> Observation:
        members = self.state.members if self.state else {}
        for device in set(self.eligible) | set(members):
            if device not in self.offline:
                self.seen[device] = self.now
        installs = {
            d: DeviceInstall(
                active_version=self.active.get(d),
                variant="int8" if self.active.get(d) == self.spec.version else None,
                failed_reason=self.failed.get(d),
                last_seen=self.seen.get(d),
            )
            for d in set(self.eligible) | set(members)
        }
        new = [d for d in members if self.active.get(d) == self.spec.version]
        old = [d for d in self.eligible if self.active.get(d) != self.spec.version]
        old += self.reference
        return Observation(
            now=self.now,
            eligible=tuple(self.eligible),
            installs=installs,
            candidate=tuple(self.health(d, self.p95["new"]) for d in new),
            baseline=tuple(self.health(d, self.p95["old"]) for d in old) if self.baseline else (),
        )

    @staticmethod
    def health(device: str, p95: float) -> DeviceHealth:
        return DeviceHealth(device_id=device, requests=100, batches=100, p95_s=p95)

    def commit(self, *devices: str) -> None:
        for device in devices or self.pending():
            self.active[device] = self.spec.version

    def pending(self) -> list[str]:
        assert self.state is not None
        return [d for d, m in self.state.members.items() if m.outcome is Outcome.PENDING]

    # -- driving the machine ---------------------------------------------------------------------

    def tick(self, dt: float = 0.0) -> Step:
        self.now += dt
        return self._step(self.observe())

    def send(self, event: OperatorEvent) -> Step:
        return self._step(event)

    def _step(self, event: Observation | OperatorEvent) -> Step:
        assert self.state is not None
        before = self.state.model_dump_json()
        result = step(self.state, event)
        assert self.state.model_dump_json() == before, "step mutated its input"
        return self._take(result)

    def _take(self, result: Step) -> Step:
        again = RolloutState.model_validate_json(result.state.model_dump_json())
        assert again == result.state
        for action in result.actions:
            if isinstance(action, Deploy):
                assert action.version == self.spec.version
                self.deployed += [(result.state.stage, d) for d in action.devices]
            else:
                self.active.update(action.versions)
        self.steps.append(result)
        self.state = again if self.reload else result.state
        return result

    def phase(self) -> Phase:
        assert self.state is not None
        return self.state.phase

    def members(self, outcome: Outcome | None = None) -> set[str]:
        assert self.state is not None
        return {d for d, m in self.state.members.items() if outcome in (None, m.outcome)}

    def to_watching(self) -> Step:
        self.commit()
        result = self.tick(1.0)
        assert self.phase() is Phase.WATCHING
        return result

    def through_window(self) -> Step:
        return self.tick(WINDOW)


# -- start -------------------------------------------------------------------------------------


def test_start_sends_the_canary_the_version() -> None:
    sim = Sim()
    (first,) = sim.steps
    assert first.state.phase is Phase.INSTALLING
    assert first.state.stage == 0
    assert first.actions == (Deploy(version="2", devices=(ORDER[0],)),)
    member = first.state.members[ORDER[0]]
    assert (member.stage, member.previous_version, member.outcome) == (0, "1", Outcome.PENDING)
    assert member.sent_at == T0
    (transition,) = first.transitions
    assert (transition.from_phase, transition.to_phase) == (None, Phase.INSTALLING)
    assert transition.reason == "stage 1/3 (1): 1 device(s)"
    assert transition.at == T0


def test_start_without_an_eligible_device_is_refused() -> None:
    with pytest.raises(RolloutError, match="no eligible device matches 'site=lab'") as caught:
        start(make_spec(selector="site=lab"), Observation(now=T0))
    assert caught.value.value == RID


def test_start_refuses_a_plan_that_does_not_end_at_100_percent() -> None:
    bad = make_spec(stages=({"count": 1}, {"percent": 50.0}))
    with pytest.raises(RolloutError, match="must end with 100%"):
        start(bad, Observation(now=T0, eligible=SIX))


# -- installing --------------------------------------------------------------------------------


def test_installing_waits_while_a_member_is_pending() -> None:
    sim = Sim()
    result = sim.tick(60.0)
    assert (result.actions, result.transitions) == ((), ())
    assert sim.phase() is Phase.INSTALLING


def test_all_committed_starts_the_health_window() -> None:
    sim = Sim()
    result = sim.to_watching()
    assert sim.state is not None
    assert sim.state.window_started_at == sim.now
    member = sim.state.members[ORDER[0]]
    assert (member.outcome, member.variant) == (Outcome.COMMITTED, "int8")
    (transition,) = result.transitions
    assert transition.reason == (
        "stage 1/3 (1): 1 committed, 0 failed, 0 not reached; watching for 600s"
    )


def test_an_install_failure_halts_and_reverts_each_device_to_its_previous_version() -> None:
    previous = {d: f"1.{i}" for i, d in enumerate(SIX)}
    sim = Sim(previous={**previous})
    sim.to_watching()
    sim.through_window()  # stage 2/3 (50%): two more devices
    new = sim.pending()
    assert len(new) == 2
    sim.commit(new[0])
    sim.failed[new[1]] = "ota_failed: hash mismatch"
    result = sim.tick(5.0)
    assert sim.phase() is Phase.HALTED
    reverted = {ORDER[0], *new}
    assert result.actions == (Revert(versions={d: previous[d] for d in reverted}),)
    assert sim.members(Outcome.REVERTED) == reverted
    assert result.transitions[0].reason == (
        f"stage 2/3 (50%): install failures 1/2 (50%) > 5%: {new[1]} (ota_failed: hash mismatch)"
    )
    assert sim.active == previous  # every device is back where it was


def test_install_failures_within_the_threshold_do_not_halt() -> None:
    devices = [f"d{i:02}" for i in range(40)]
    thresholds = Thresholds(max_install_failures=0.1)
    sim = Sim(make_spec(thresholds=thresholds), devices=devices)
    sim.to_watching()
    sim.through_window()  # 50% of 40: 19 new devices
    new = sim.pending()
    assert len(new) == 19
    sim.failed[new[0]] = "ota_rejected: wrong_hardware"
    sim.commit(*new[1:])
    sim.tick(1.0)
    assert sim.phase() is Phase.WATCHING  # 1 of 19 failed: 5% <= 10%
    assert sim.members(Outcome.FAILED) == {new[0]}


def test_a_silent_member_is_not_reached_after_the_offline_timeout_then_commits_late() -> None:
    sim = Sim()
    canary = ORDER[0]
    sim.offline.add(canary)
    sim.tick(TIMEOUT)  # exactly at the timeout: still waited on
    assert sim.phase() is Phase.INSTALLING
    result = sim.tick(1.0)
    assert sim.phase() is Phase.WATCHING
    assert sim.members(Outcome.NOT_REACHED) == {canary}
    assert sim.state is not None
    assert (sim.state.members[canary].reason or "").startswith("not reached: silent for 1801s")
    assert "0 committed, 0 failed, 1 not reached" in result.transitions[0].reason
    # it comes back and commits: still a member, now committed, the phase unchanged
    sim.offline.discard(canary)
    sim.commit(canary)
    late = sim.tick(10.0)
    assert late.transitions == ()
    assert sim.members(Outcome.COMMITTED) == {canary}
    assert sim.phase() is Phase.WATCHING


def test_a_member_heard_from_recently_is_still_waited_on() -> None:
    sim = Sim()
    sim.tick(TIMEOUT + 100.0)  # seen on every tick, just not committed (a slow download)
    assert sim.phase() is Phase.INSTALLING
    assert sim.members(Outcome.PENDING) == {ORDER[0]}


# -- watching ----------------------------------------------------------------------------------


def test_before_the_window_ends_nothing_changes() -> None:
    sim = Sim()
    sim.to_watching()
    sim.p95["new"] = 1.0  # terrible, but the window is not over
    result = sim.tick(WINDOW - 1.0)
    assert (result.actions, result.transitions) == ((), ())
    assert sim.phase() is Phase.WATCHING


def test_a_pass_starts_the_next_stage_with_its_new_members_only() -> None:
    sim = Sim()
    sim.to_watching()
    result = sim.through_window()
    assert sim.state is not None
    assert sim.phase() is Phase.INSTALLING
    assert sim.state.stage == 1
    assert result.actions == (Deploy(version="2", devices=(ORDER[1], ORDER[2])),)
    (transition,) = result.transitions
    assert transition.reason == "stage 1/3 (1) passed; stage 2/3 (50%): 2 new device(s)"
    assert transition.gate is not None
    assert transition.gate.outcome == "pass"
    assert sim.state.last_gate == transition.gate
    assert sim.state.members[ORDER[1]].stage == 1
    assert sim.state.window_started_at is None


def test_a_pass_on_the_last_stage_completes() -> None:
    sim = Sim()
    sim.reference = ["ref-1"]  # a device on the previous version outside the selection
    for _ in range(2):
        sim.to_watching()
        sim.through_window()
    sim.to_watching()
    assert sim.members() == set(SIX)
    result = sim.through_window()
    assert sim.phase() is Phase.COMPLETED
    assert result.actions == ()
    (transition,) = result.transitions
    assert transition.reason == "stage 3/3 (100%) passed; completed"
    assert [s.state.stage for s in sim.steps if s.actions] == [0, 1, 2]
    assert sorted(d for _, d in sim.deployed) == sorted(SIX)


def test_at_100_percent_the_gate_compares_with_the_last_measured_baseline() -> None:
    # No device is left on the previous version: the stage is judged against the baseline
    # the previous gate measured, and the reason says so.
    sim = Sim()
    for _ in range(2):
        sim.to_watching()
        sim.through_window()
    sim.to_watching()
    result = sim.through_window()
    assert sim.phase() is Phase.COMPLETED
    assert BORROWED_BASELINE in result.transitions[0].reason
    gate = result.transitions[0].gate
    assert gate is not None and gate.baseline is not None and gate.baseline.devices == 3


def test_at_100_percent_a_regression_against_the_last_measured_baseline_halts() -> None:
    sim = Sim()
    for _ in range(2):
        sim.to_watching()
        sim.through_window()
    sim.to_watching()
    sim.p95["new"] = 0.0135
    result = sim.through_window()
    assert sim.phase() is Phase.HALTED
    assert "p95 regression +35% > +20%" in result.transitions[0].reason
    assert BORROWED_BASELINE in result.transitions[0].reason


def test_a_rollout_that_never_measured_a_baseline_is_insufficient_at_100_percent() -> None:
    # One stage of 100%: no device ever stays on the previous version, so p95 is never a pass.
    sim = Sim(make_spec(stages=parse_stages("100%")))
    sim.to_watching()
    result = sim.through_window()
    assert sim.phase() is Phase.WATCHING
    assert result.transitions[0].reason.startswith("insufficient data: p95 regression")


def test_require_approval_waits_then_approve_starts_the_next_stage() -> None:
    sim = Sim(make_spec(require_approval=True))
    sim.to_watching()
    result = sim.through_window()
    assert sim.phase() is Phase.AWAITING_APPROVAL
    assert result.actions == ()
    assert result.transitions[0].reason == "stage 1/3 (1) passed; waiting for approval"
    assert sim.tick(WINDOW * 5).transitions == ()  # it waits, however long
    approved = sim.send(Approve(operator="alice", at=sim.now + 1.0))
    assert sim.state is not None
    assert (sim.phase(), sim.state.stage) == (Phase.INSTALLING, 1)
    assert approved.transitions[0].reason == "approved by alice; stage 2/3 (50%) starts"
    assert approved.transitions[0].at == sim.now + 1.0
    # an approval carries no observation: the stage's devices are picked on the next tick
    assert approved.actions == ()
    picked = sim.tick(2.0)
    assert picked.actions == (Deploy(version="2", devices=(ORDER[1], ORDER[2])),)
    assert picked.transitions == ()
    sim.to_watching()


def test_a_failing_gate_halts_and_reverts_naming_the_metric() -> None:
    sim = Sim()
    sim.to_watching()
    sim.p95["new"] = 0.0135
    result = sim.through_window()
    assert sim.phase() is Phase.HALTED
    (transition,) = result.transitions
    assert "p95 regression +35% > +20%" in transition.reason
    assert transition.reason.startswith("stage 1/3 (1) failed: ")
    assert transition.gate is not None
    assert transition.gate.outcome == "fail"
    assert result.actions == (Revert(versions={ORDER[0]: "1"}),)
    assert sim.members(Outcome.REVERTED) == {ORDER[0]}


def test_insufficient_data_extends_the_window_twice_then_asks_for_approval() -> None:
    sim = Sim()
    sim.to_watching()
    sim.baseline = False
    assert sim.state is not None
    started = sim.state.window_started_at
    first = sim.through_window()
    assert sim.phase() is Phase.WATCHING
    assert first.transitions[0].reason.startswith("insufficient data: p95 regression")
    assert first.transitions[0].reason.endswith("; window extended (1/2)")
    assert (first.transitions[0].from_phase, first.transitions[0].to_phase) == (
        Phase.WATCHING,
        Phase.WATCHING,
    )
    assert sim.state.window_extensions == 1
    assert sim.state.window_started_at == started  # extended, not restarted: samples add up
    assert sim.tick(WINDOW - 1.0).transitions == ()
    second = sim.tick(1.0)
    assert second.transitions[0].reason.endswith("; window extended (2/2)")
    third = sim.through_window()
    assert sim.phase() is Phase.AWAITING_APPROVAL
    assert third.transitions[0].reason.startswith("insufficient data: ")
    assert third.transitions[0].reason.endswith("; waiting for approval")
    assert third.actions == ()
    sim.baseline = True
    sim.send(Approve(operator="bob", at=sim.now))
    assert sim.phase() is Phase.INSTALLING
    assert sim.tick(1.0).actions == (Deploy(version="2", devices=(ORDER[1], ORDER[2])),)


def test_approving_after_the_last_stage_completes() -> None:
    sim = Sim(make_spec(stages=parse_stages("100%")))
    sim.to_watching()
    for _ in range(3):
        sim.through_window()  # nobody is left on the previous version: insufficient
    assert sim.phase() is Phase.AWAITING_APPROVAL
    result = sim.send(Approve(operator="alice", at=sim.now))
    assert sim.phase() is Phase.COMPLETED
    assert result.transitions[0].reason == "approved by alice; completed"


def test_pause_and_resume_restart_the_window() -> None:
    sim = Sim()
    sim.to_watching()
    sim.tick(WINDOW - 10.0)
    paused = sim.send(Pause(operator="alice", at=sim.now))
    assert sim.state is not None
    assert (sim.phase(), sim.state.paused_from) == (Phase.PAUSED, Phase.WATCHING)
    assert paused.transitions[0].reason == "paused by alice"
    assert sim.tick(WINDOW * 3).transitions == ()  # paused: the window's end does not count
    resumed = sim.send(Resume(operator="alice", at=sim.now))
    assert (sim.phase(), sim.state.paused_from) == (Phase.WATCHING, None)
    assert sim.state.window_started_at == sim.now
    assert resumed.transitions[0].reason == "resumed by alice"
    assert sim.tick(WINDOW - 1.0).transitions == ()  # a whole new window
    assert sim.tick(1.0).transitions[0].to_phase is Phase.INSTALLING


def test_pause_and_resume_while_installing() -> None:
    sim = Sim()
    sim.send(Pause(operator="alice", at=sim.now))
    sim.commit()
    assert sim.tick(1.0).transitions == ()  # the commit is recorded, the phase holds
    assert sim.members(Outcome.COMMITTED) == {ORDER[0]}
    assert sim.phase() is Phase.PAUSED
    sim.send(Resume(operator="alice", at=sim.now))
    assert sim.phase() is Phase.INSTALLING
    sim.tick(1.0)
    assert sim.phase() is Phase.WATCHING


def test_pause_while_awaiting_approval_resumes_to_awaiting_approval() -> None:
    sim = Sim(make_spec(require_approval=True))
    sim.to_watching()
    sim.through_window()
    sim.send(Pause(operator="alice", at=sim.now))
    with pytest.raises(RolloutError, match="is paused, not awaiting approval"):
        sim.send(Approve(operator="alice", at=sim.now))
    sim.send(Resume(operator="alice", at=sim.now))
    assert sim.phase() is Phase.AWAITING_APPROVAL


@pytest.mark.parametrize("paused", [False, True])
def test_abort_reverts_what_the_rollout_changed(paused: bool) -> None:
    sim = Sim()
    sim.to_watching()
    sim.through_window()
    sim.commit(ORDER[1])  # ORDER[2] is still pending
    sim.tick(1.0)
    if paused:
        sim.send(Pause(operator="alice", at=sim.now))
    result = sim.send(Abort(operator="alice", at=sim.now))
    assert sim.phase() is Phase.ABORTED
    assert result.actions == (Revert(versions=dict.fromkeys(ORDER[:3], "1")),)
    assert result.transitions[0].reason == "aborted by the operator (alice)"
    assert sim.state is not None
    assert sim.state.paused_from is None
    assert sim.members(Outcome.REVERTED) == set(ORDER[:3])


@pytest.mark.parametrize(
    ("event", "phase", "message"),
    [
        (Approve(operator="a", at=T0), Phase.INSTALLING, "is installing, not awaiting approval"),
        (Approve(operator="a", at=T0), Phase.WATCHING, "is watching, not awaiting approval"),
        (Resume(operator="a", at=T0), Phase.WATCHING, "is watching, not paused"),
        (Resume(operator="a", at=T0), Phase.INSTALLING, "is installing, not paused"),
    ],
)
def test_operator_events_where_they_do_not_apply_are_refused(
    event: OperatorEvent, phase: Phase, message: str
) -> None:
    sim = Sim()
    if phase is Phase.WATCHING:
        sim.to_watching()
    with pytest.raises(RolloutError, match=message) as caught:
        sim.send(event)
    assert caught.value.value == RID
    assert sim.phase() is phase


def test_pausing_twice_is_refused() -> None:
    sim = Sim()
    sim.send(Pause(operator="a", at=T0))
    with pytest.raises(RolloutError, match="already paused"):
        sim.send(Pause(operator="a", at=T0))


def _finished(phase: Phase) -> Sim:
    sim = Sim(make_spec(stages=parse_stages("100%")))
    if phase is Phase.ABORTED:
        sim.send(Abort(operator="a", at=T0))
    elif phase is Phase.HALTED:
        sim.failed[ORDER[0]] = "ota_failed: disk full"
        sim.tick(1.0)
    else:
        sim.reference = ["ref-1"]
        sim.offline.add(ORDER[5])  # completes without it: not reached
        sim.commit(*ORDER[:5])
        sim.tick(TIMEOUT + 1.0)
        assert sim.phase() is Phase.WATCHING
        sim.through_window()
    assert sim.phase() is phase
    return sim


@pytest.mark.parametrize("phase", [Phase.COMPLETED, Phase.HALTED, Phase.ABORTED])
def test_finished_rollouts_stay_finished(phase: Phase) -> None:
    sim = _finished(phase)
    assert sim.state is not None
    settled = sim.state
    for kind in (Approve, Pause, Resume, Abort):
        with pytest.raises(RolloutError, match=f"is {phase}; nothing to {kind.__name__.lower()}"):
            sim.send(kind(operator="a", at=sim.now))
    # whatever the fleet does now (a late commit included) the record stays as it ended
    sim.offline.clear()
    sim.commit(*SIX)
    sim.p95["new"] = 1.0
    sim.failed.update(dict.fromkeys(SIX, "ota_failed"))
    result = sim.tick(WINDOW * 10)
    assert result == Step(state=settled)


def test_members_without_a_previous_version_are_named_when_halting() -> None:
    previous: dict[str, str | None] = dict.fromkeys(SIX, "1")
    previous[ORDER[1]] = previous[ORDER[2]] = None  # nothing installed before
    sim = Sim(previous=previous)
    sim.to_watching()
    sim.through_window()
    sim.commit()
    sim.tick(1.0)
    sim.p95["new"] = 0.020
    result = sim.through_window()
    assert sim.phase() is Phase.HALTED
    reason = result.transitions[0].reason
    assert reason.endswith(f"; no previous version: {', '.join(sorted(ORDER[1:3]))}")
    assert result.actions == (Revert(versions={ORDER[0]: "1"}),)
    assert sim.members(Outcome.REVERTED) == {ORDER[0]}


def test_a_member_already_on_the_version_is_not_sent_back_to_it() -> None:
    previous: dict[str, str | None] = dict.fromkeys(SIX, "1")
    previous[ORDER[0]] = "2"
    sim = Sim(previous=previous)
    result = sim.send(Abort(operator="a", at=T0))
    assert result.actions == ()
    assert "no previous version" not in result.transitions[0].reason


def test_a_device_joining_the_selection_is_picked_up_by_the_next_stage() -> None:
    sim = Sim(make_spec(stages=parse_stages("1,100%")))
    sim.to_watching()
    sim.eligible.append("pi-new")
    sim.active["pi-new"] = "0.9"
    assert sim.tick(10.0).actions == ()  # not by the current one
    result = sim.through_window()
    (deploy,) = result.actions
    assert isinstance(deploy, Deploy)
    assert "pi-new" in deploy.devices
    assert set(deploy.devices) == {*SIX, "pi-new"} - {ORDER[0]}
    assert sim.state is not None
    assert sim.state.members["pi-new"].previous_version == "0.9"


def test_a_device_joining_while_its_stage_installs_is_added_when_the_share_grows() -> None:
    sim = Sim()
    sim.to_watching()
    sim.through_window()  # stage 2/3: 50% of 6 = 3 members
    assert len(sim.members()) == 3
    sim.eligible += ["pi-7", "pi-8"]  # 50% of 8 = 4: one more device for this stage
    sim.active.update({"pi-7": "1", "pi-8": "1"})
    result = sim.tick(1.0)
    (deploy,) = result.actions
    assert isinstance(deploy, Deploy)
    assert len(deploy.devices) == 1
    assert result.transitions == ()
    assert sim.state is not None
    assert sim.state.members[deploy.devices[0]].stage == 1
    assert sim.tick(1.0).actions == ()


def test_a_device_leaving_the_selection_stays_a_member() -> None:
    sim = Sim()
    sim.to_watching()
    sim.eligible.remove(ORDER[0])  # the canary was untagged
    result = sim.through_window()
    assert ORDER[0] in sim.members()
    (deploy,) = result.actions
    assert isinstance(deploy, Deploy)
    assert ORDER[0] not in deploy.devices
    # 50% of the five still selected plus the canary that left: 3 members
    assert len(sim.members()) == 3
    sim.send(Abort(operator="a", at=sim.now))
    assert ORDER[0] in sim.members(Outcome.REVERTED)


def test_a_stage_that_adds_nobody_still_watches_its_window() -> None:
    sim = Sim(make_spec(stages=parse_stages("1,10%,100%")))
    sim.to_watching()
    result = sim.through_window()
    assert result.actions == ()
    assert result.transitions[0].reason.endswith("stage 2/3 (10%): 0 new device(s)")
    sim.tick(1.0)
    assert sim.phase() is Phase.WATCHING


def _whole_rollout(reload: bool) -> Sim:
    sim = Sim(make_spec(require_approval=True), reload=reload)
    sim.reference = ["ref-1"]
    sim.to_watching()
    sim.tick(WINDOW / 2)
    sim.tick(WINDOW / 2)
    sim.send(Approve(operator="alice", at=sim.now))
    sim.tick(1.0)
    sim.offline.add(sim.pending()[0])
    sim.commit(sim.pending()[1])
    sim.tick(TIMEOUT + 1.0)
    sim.send(Pause(operator="alice", at=sim.now))
    sim.send(Resume(operator="alice", at=sim.now))
    sim.through_window()
    sim.send(Approve(operator="alice", at=sim.now))
    sim.tick(1.0)
    sim.to_watching()
    sim.through_window()
    return sim


def test_a_controller_restarted_from_the_saved_state_carries_on_identically() -> None:
    straight, restarted = _whole_rollout(reload=False), _whole_rollout(reload=True)
    assert restarted.phase() is Phase.COMPLETED
    assert restarted.steps == straight.steps
    assert restarted.deployed == straight.deployed
    assert sorted(d for _, d in restarted.deployed) == sorted(SIX)


PURE_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "enum",
    "hashlib",
    "math",
    "re",
    "statistics",
    "typing",
    "pydantic",
    "fleet.errors",
    "fleet.rollouts.gate",
    "fleet.rollouts.model",
    "fleet.rollouts.plan",
}


@pytest.mark.parametrize("module", ["selector", "plan", "gate", "machine", "model"])
def test_the_core_is_pure_no_clock_no_io(module: str) -> None:
    path = Path(__file__).parents[2] / "fleet" / "rollouts" / f"{module}.py"
    tree = ast.parse(path.read_text())
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported <= PURE_IMPORTS  # no time, asyncio, sqlalchemy, paho, os, ...


# -- properties under random event sequences ----------------------------------------------------

_operator_kinds = st.sampled_from([Approve, Pause, Resume, Abort])
_events = st.one_of(
    st.tuples(
        st.just("tick"),
        st.sampled_from([0.0, 1.0, 300.0, WINDOW, TIMEOUT + 1.0]),
        st.sampled_from(["commit", "fail", "offline", "online", "join", "leave", "slow", "none"]),
        st.integers(0, 7),
    ),
    st.tuples(st.just("operator"), _operator_kinds, st.just(""), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_events, max_size=40),
    st.sampled_from(["1,50%,100%", "1,100%", "100%", "2,10%,60%,100%"]),
    st.booleans(),
    st.booleans(),
)
def test_random_sequences_keep_the_invariants(
    events: list[tuple[object, object, object, object]],
    stages: str,
    approval: bool,
    baseline: bool,
) -> None:
    devices = [f"pi-{i}" for i in range(8)]
    sim = Sim(make_spec(stages=parse_stages(stages), require_approval=approval), devices=devices)
    sim.baseline = baseline
    for kind, a, b, c in events:
        assert sim.state is not None
        before = sim.state
        if kind == "tick":
            assert isinstance(a, float)
            assert isinstance(c, int)
            _world(sim, str(b), devices[c % len(devices)])
            result = sim.tick(a)
        else:
            assert isinstance(a, type)
            try:
                result = sim.send(a(operator="op", at=sim.now))
            except RolloutError:
                continue
        _check(before, result)
    # never deployed to a device twice, in any stage
    assert len(sim.deployed) == len({d for _, d in sim.deployed})


def _world(sim: Sim, change: str, device: str) -> None:
    if change == "commit":
        sim.commit()
    elif change == "fail":
        sim.failed[device] = "ota_failed: random"
    elif change == "offline":
        sim.offline.add(device)
    elif change == "online":
        sim.offline.discard(device)
    elif change == "join" and device not in sim.eligible:
        sim.eligible.append(device)
    elif change == "leave" and device in sim.eligible:
        sim.eligible.remove(device)
    elif change == "slow":
        sim.p95["new"] = 0.5


def _check(before: RolloutState, result: Step) -> None:
    after = result.state
    if before.phase not in ACTIVE_PHASES:
        assert result == Step(state=before)
    assert set(before.members) <= set(after.members)  # members stay members
    for transition in result.transitions:
        assert transition.from_phase is not None
    if result.transitions:
        assert result.transitions[0].from_phase is before.phase
        assert result.transitions[-1].to_phase is after.phase
    else:
        assert after.phase is before.phase
    if after.phase is Phase.PAUSED:
        assert after.paused_from in ACTIVE_PHASES - {Phase.PAUSED}
    if any(isinstance(a, Revert) for a in result.actions):
        assert after.phase in (Phase.HALTED, Phase.ABORTED)
