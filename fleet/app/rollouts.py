"""``RolloutApp``: tags, selectors and staged rollouts as use cases over the store.

Every change to a rollout goes one way, whoever causes it (``rollout start``, an operator
event, the driver's tick): the pure state machine (``fleet.rollouts.machine``) answers with a
``Step``; the new state, its transitions and the desired states its actions set are saved in
ONE store transaction (each directive signed there with the device's next counter, by
``ReleaseService.signer``); only then are the signed messages handed back to be published.
A controller killed between the commit and the publish re-publishes the stored payloads of the
pending members when it starts again (``republish``); one killed before the commit decides
again from the same stored state. Runs on the store's thread, like ``fleet.app.usecases``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence

import structlog
from pydantic import ValidationError

from edge_contract.controller import (
    DevicesListRequest,
    DevicesReply,
    RolloutDetail,
    RolloutGate,
    RolloutHistoryReply,
    RolloutListRequest,
    RolloutMember,
    RolloutReply,
    RolloutRequest,
    RolloutsReply,
    RolloutStage,
    RolloutStartRequest,
    RolloutStatusRequest,
    RolloutSummary,
    RolloutThresholds,
    RolloutTransition,
    RolloutVerdict,
    TagRequest,
    TagsReply,
    UntagRequest,
)
from edge_contract.messages import InferenceReport
from edge_contract.topics import Channel, topic_for
from fleet.app.replies import Publish
from fleet.errors import FleetError, RolloutError
from fleet.ota import ReleaseService
from fleet.records import Directive, TaggedDevice, TelemetrySample
from fleet.rollouts import machine
from fleet.rollouts.health import device_health
from fleet.rollouts.model import (
    Abort,
    Action,
    Approve,
    Deploy,
    DeviceHealth,
    GateResult,
    Observation,
    OperatorEvent,
    Outcome,
    Pause,
    Phase,
    Resume,
    RolloutSpec,
    RolloutState,
    Step,
    Thresholds,
)
from fleet.rollouts.plan import format_stage, parse_stages
from fleet.rollouts.selector import Selector, parse_selector
from fleet.store import FleetStore

log = structlog.get_logger("fleet.rollouts")

# The operator events by RPC method (``rollout-<event>``).
EVENTS: dict[str, type[OperatorEvent]] = {
    "pause": Pause,
    "resume": Resume,
    "approve": Approve,
    "abort": Abort,
}


class RolloutApp:
    """Tags, selections and rollouts over one store (and the release service when OTA is on)."""

    def __init__(
        self,
        store: FleetStore,
        *,
        releases: ReleaseService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.releases = releases
        self._clock = clock
        # The rollouts ``apply`` changed since ``take_changed`` last ran, newest summary each
        # (the live feed's rollout events; bounded by the number of rollouts changed).
        self._changed: dict[str, RolloutSummary] = {}

    # -- tags and selections -----------------------------------------------------------------

    def tag(self, request: TagRequest) -> TagsReply:
        """Raises ``UnknownDeviceError`` for a device never seen."""
        self.store.set_tags(request.device_id, request.tags)
        tags = self.store.device_tags(request.device_id)
        return TagsReply(device_id=request.device_id, tags=tags, removed=[])

    def untag(self, request: UntagRequest) -> TagsReply:
        removed = self.store.remove_tags(request.device_id, request.keys)
        tags = self.store.device_tags(request.device_id)
        return TagsReply(device_id=request.device_id, tags=tags, removed=removed)

    def select_devices(self, request: DevicesListRequest) -> DevicesReply:
        """The devices ``request.select`` matches, with their merged tags.

        Raises:
            SelectorError: the selector does not parse (naming the clause).
        """
        selector = parse_selector(request.select or "")
        tagged = {d.device_id: d for d in self.store.tagged_devices()}
        matched = [
            summary.model_copy(update={"tags": dict(tagged[summary.device_id].tags)})
            for summary in self.store.list_devices()
            if summary.device_id in tagged and selector.matches(tagged[summary.device_id].tags)
        ]
        return DevicesReply(devices=matched, select=str(selector))

    # -- reads ---------------------------------------------------------------------------------

    def list_rollouts(self, request: RolloutListRequest) -> RolloutsReply:
        states = self.store.rollouts(active=request.active)[: request.limit]
        return RolloutsReply(rollouts=[_summary(s) for s in states])

    def status(self, request: RolloutStatusRequest) -> RolloutReply:
        """One rollout; without an id the newest active one, else the newest."""
        if request.rollout_id is not None:
            return RolloutReply(rollout=detail(self._get(request.rollout_id)))
        states = self.store.rollouts(active=True) or self.store.rollouts()
        if not states:
            raise RolloutError("no rollout yet (start one with `fleet rollout start`)", value="")
        return RolloutReply(rollout=detail(states[0]))

    def history(self, request: RolloutRequest) -> RolloutHistoryReply:
        self._get(request.rollout_id)
        transitions = [
            RolloutTransition(
                at=t.at,
                from_phase=None if t.from_phase is None else t.from_phase.value,
                to_phase=t.to_phase.value,
                stage=t.stage,
                reason=t.reason,
                gate=_gate(t.gate),
            )
            for t in self.store.rollout_history(request.rollout_id)
        ]
        return RolloutHistoryReply(rollout_id=request.rollout_id, transitions=transitions)

    def _get(self, rollout_id: str) -> RolloutState:
        state = self.store.rollout(rollout_id)
        if state is None:
            raise RolloutError(f"unknown rollout {rollout_id}", value=rollout_id)
        return state

    # -- changes -------------------------------------------------------------------------------

    def start(
        self, request: RolloutStartRequest, *, operator: str
    ) -> tuple[RolloutReply, list[Publish]]:
        """Parse, resolve the eligible devices, refuse a conflict, check the release, start.

        Raises:
            SelectorError, RolloutError: a bad selector or stage list, no eligible device, or
                an active rollout of the same model holding one of them (named).
            FleetError: OTA is off, or no signed release ``model@version``.
        """
        releases = self._releases()
        selector = parse_selector(request.select)
        stages = parse_stages(request.stages)
        releases.check_release(request.model, request.version)
        now = self._clock()
        spec = RolloutSpec(
            rollout_id=f"r-{secrets.token_hex(4)}",
            name=request.name,
            model=request.model,
            version=request.version,
            selector=str(selector),
            stages=stages,
            thresholds=_thresholds(request),
            health_window_s=request.health_window_s,
            offline_timeout_s=request.offline_timeout_s,
            require_approval=request.require_approval,
            operator=operator,
            created_at=now,
        )
        eligible = self._eligible(spec)
        if not eligible:
            raise RolloutError(
                f"no accepted device with OTA enabled matches {spec.selector!r}",
                value=spec.selector,
            )
        self._refuse_conflicts(spec, eligible)
        observation = Observation(
            now=now,
            eligible=tuple(eligible),
            installs=self.store.installs(spec.model, spec.version, dict.fromkeys(eligible, now)),
        )
        step = machine.start(spec, observation)
        messages = self.apply(step)
        return RolloutReply(rollout=detail(step.state)), messages

    def event(
        self, kind: str, request: RolloutRequest, *, operator: str
    ) -> tuple[RolloutReply, list[Publish]]:
        """``pause`` / ``resume`` / ``approve`` / ``abort`` through the state machine.

        Raises:
            RolloutError: an unknown rollout, or an event its phase does not take.
        """
        state = self._get(request.rollout_id)
        if kind == "abort":
            self._releases()  # an abort signs rollbacks: refuse before the state changes
        event = EVENTS[kind](operator=operator, at=self._clock())
        step = machine.step(state, event)
        messages = self.apply(step)
        return RolloutReply(rollout=detail(step.state)), messages

    def _releases(self) -> ReleaseService:
        if self.releases is None:
            raise FleetError(
                "rollouts need the running controller with OTA enabled ([ota] repo): send "
                "this over the broker, not with --db"
            )
        return self.releases

    def _eligible(self, spec: RolloutSpec) -> list[str]:
        selector = parse_selector(spec.selector)
        return [d.device_id for d in self.store.tagged_devices() if _eligible(d, selector)]

    def _refuse_conflicts(self, spec: RolloutSpec, eligible: Iterable[str]) -> None:
        wanted = set(eligible)
        for other in self.store.rollouts(active=True, model=spec.model):
            held = sorted(wanted & (set(other.members) | set(self._eligible(other.spec))))
            if held:
                raise RolloutError(
                    f"rollout {other.spec.rollout_id} ({other.spec.model}@"
                    f"{other.spec.version}, {other.phase.value}) already holds "
                    f"{', '.join(held[:5])}{' ...' if len(held) > 5 else ''}: pause is not "
                    f"enough, abort it or wait for it to finish",
                    value=other.spec.rollout_id,
                )

    # -- the driver's side ---------------------------------------------------------------------

    def tick(self) -> list[Publish]:
        """Step every active rollout once with a fresh observation; the messages to publish.

        A rollout whose step fails is logged and left as it was (the next tick tries again);
        the others go on.
        """
        messages: list[Publish] = []
        for state in self.store.rollouts(active=True):
            if state.phase is Phase.PAUSED:
                continue
            try:
                step = machine.step(state, self.observe(state))
                messages += self.apply(step)
            except FleetError as exc:
                log.error("rollout.tick_failed", rollout=state.spec.rollout_id, error=str(exc))
        return messages

    def take_changed(self) -> list[RolloutSummary]:
        """The rollouts changed (a transition, or devices sent a version) since the last
        call, each once with its newest summary; store thread, like every change."""
        changed, self._changed = list(self._changed.values()), {}
        return changed

    def republish(self) -> list[Publish]:
        """The stored signed desired state of every PENDING member of the active rollouts
        (sent again at start: the agent ignores a counter it has already applied)."""
        messages: list[Publish] = []
        for state in self.store.rollouts(active=True):
            pending = [d for d, m in state.members.items() if m.outcome is Outcome.PENDING]
            payloads = self.store.desired_payloads(state.spec.model, pending)
            messages += [(topic_for(d, Channel.DESIRED), p) for d, p in sorted(payloads.items())]
        return messages

    def observe(self, state: RolloutState) -> Observation:
        """The fleet as the store sees it now, for ``state``'s rollout."""
        spec, now = state.spec, self._clock()
        eligible = self._eligible(spec)
        since: dict[str, float] = dict.fromkeys(eligible, now)
        since.update({d: m.sent_at for d, m in state.members.items()})
        installs = self.store.installs(spec.model, spec.version, since)
        candidate: list[DeviceHealth] = []
        baseline: list[DeviceHealth] = []
        start = state.window_started_at
        if state.phase is Phase.WATCHING and start is not None:
            on_new = [d for d, m in state.members.items() if m.outcome is Outcome.COMMITTED]
            on_old = {
                d: version
                for d in eligible
                if d not in state.members
                and (version := installs[d].active_version) is not None
                and version != spec.version
            }
            samples = self.store.telemetry_samples([*on_new, *on_old], start, now)
            candidate = _healths(samples, dict.fromkeys(on_new, spec.version), spec, start, now)
            baseline = _healths(samples, on_old, spec, start, now)
        return Observation(
            now=now,
            eligible=tuple(eligible),
            installs=installs,
            candidate=tuple(candidate),
            baseline=tuple(baseline),
        )

    def apply(self, step: Step) -> list[Publish]:
        """Persist ``step`` (state, transitions, signed desired states: one transaction), log
        its transitions; the messages to publish, only after the commit."""
        spec = step.state.spec
        directives = _directives(spec, step.actions)
        if directives:
            versions = {d.version for d in directives}
            with self._releases().signer(spec.model, versions) as sign:
                sent = self.store.save_rollout(step.state, step.transitions, directives, sign)
        else:
            sent = self.store.save_rollout(step.state, step.transitions)
        if step.transitions or step.actions:
            self._changed[spec.rollout_id] = _summary(step.state)
        for t in step.transitions:
            log.info(
                "rollout.transition",
                rollout=spec.rollout_id,
                **{"from": None if t.from_phase is None else t.from_phase.value},
                to=t.to_phase.value,
                stage=t.stage,
                reason=t.reason,
            )
        return [(topic_for(device_id, Channel.DESIRED), payload) for device_id, payload in sent]


def _eligible(device: TaggedDevice, selector: Selector) -> bool:
    return device.target and selector.matches(device.tags)


def _thresholds(request: RolloutStartRequest) -> Thresholds:
    given = {
        name: value
        for name in (
            "max_install_failures",
            "max_p95_regression",
            "max_error_rate",
            "max_drift",
            "max_accuracy_drop",
            "min_requests",
            "min_batches",
        )
        if (value := getattr(request, name)) is not None
    }
    return Thresholds(**given)


def _directives(spec: RolloutSpec, actions: Sequence[Action]) -> list[Directive]:
    directives = []
    for action in actions:
        if isinstance(action, Deploy):
            directives += [
                Directive(d, spec.model, action.version, "deploy") for d in action.devices
            ]
        else:
            directives += [
                Directive(d, spec.model, version, "rollback")
                for d, version in sorted(action.versions.items())
            ]
    return directives


def _healths(
    samples: dict[str, list[TelemetrySample]],
    versions: dict[str, str],
    spec: RolloutSpec,
    start: float,
    end: float,
) -> list[DeviceHealth]:
    """Each device's health on its version over ``[start, end]``; devices without data are
    left out (the gate counts what it has)."""
    healths = []
    for device_id, version in sorted(versions.items()):
        typed = _reports(samples.get(device_id, []))
        health = device_health(device_id, typed, spec.model, version, start, end)
        if health is not None:
            healths.append(health)
    return healths


def _reports(samples: Sequence[TelemetrySample]) -> list[tuple[float, InferenceReport]]:
    """The samples' inference blocks, typed; one that does not validate is skipped (it was
    stored before the block was typed, or by an agent that sends something else)."""
    typed = []
    for sample in samples:
        if sample.inference is None:
            continue
        try:
            typed.append((sample.ts, InferenceReport.model_validate(sample.inference)))
        except ValidationError:
            continue
    return typed


# -- the views of a rollout (edge_contract.controller's reply models) --------------------------


def _summary(state: RolloutState) -> RolloutSummary:
    spec = state.spec
    return RolloutSummary(
        rollout_id=spec.rollout_id,
        name=spec.name,
        model=spec.model,
        version=spec.version,
        select=spec.selector,
        phase=state.phase.value,
        stage=state.stage,
        stages=len(spec.stages),
        members=len(state.members),
        reason=state.reason,
        created_at=spec.created_at,
        updated_at=state.updated_at,
    )


def detail(state: RolloutState) -> RolloutDetail:
    """What ``fleet rollout status`` shows of a rollout."""
    spec, t = state.spec, state.spec.thresholds
    members = [
        RolloutMember(
            device_id=d,
            stage=m.stage,
            previous_version=m.previous_version,
            outcome=m.outcome.value,
            variant=m.variant,
            reason=m.reason,
        )
        for d, m in sorted(state.members.items(), key=lambda item: (item[1].stage, item[0]))
    ]
    stages = []
    for index, size in enumerate(spec.stages):
        outcomes = [m.outcome for m in state.members.values() if m.stage == index]
        stages.append(
            RolloutStage(
                index=index,
                size=format_stage(size),
                members=len(outcomes),
                **{o.value: outcomes.count(o) for o in Outcome},
            )
        )
    return RolloutDetail(
        summary=_summary(state),
        thresholds=RolloutThresholds(**t.model_dump()),
        health_window_s=spec.health_window_s,
        offline_timeout_s=spec.offline_timeout_s,
        require_approval=spec.require_approval,
        window_started_at=state.window_started_at,
        stages=stages,
        members=members,
        gate=_gate(state.last_gate),
    )


def _gate(gate: GateResult | None) -> RolloutGate | None:
    if gate is None:
        return None
    return RolloutGate(
        outcome=gate.outcome,
        verdicts=[RolloutVerdict(**v.model_dump()) for v in gate.verdicts],
        candidate_devices=gate.candidate.devices,
        candidate_requests=gate.candidate.requests,
        baseline_devices=None if gate.baseline is None else gate.baseline.devices,
        baseline_requests=None if gate.baseline is None else gate.baseline.requests,
    )
