"""``FleetApp``: every operator command as one use case over the store, written once.

Each method takes its typed request (``edge_contract.controller``) and returns its typed
reply (``fleet.app.replies``); deploy and rollback also return the signed desired states
the front end publishes. Whether a mutating request may run at all (the operator's
signature) is the front end's question: the RPC server asks ``fleet.operator_rpc``'s gate,
the CLI's ``--db`` mode is the controller host's own administrator. Runs on whatever thread
owns the store (the controller's store thread, or the CLI's only one).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from edge_contract.controller import (
    AcceptReply,
    AcceptRequest,
    DeployReply,
    DeployRequest,
    DeviceReply,
    DevicesListRequest,
    DevicesReply,
    DeviceSummary,
    OperatorAddedReply,
    OperatorAddRequest,
    OperatorRemovedReply,
    OperatorRemoveRequest,
    OperatorsListRequest,
    OperatorsReply,
    Rejected,
    RollbackReply,
    RollbackRequest,
    ShowRequest,
    StatusReply,
    StatusRequest,
)
from edge_contract.http_api import (
    DevicesQuery,
    EventsQuery,
    EventsReply,
    ReleasesReply,
    TelemetryQuery,
    TelemetrySeriesReply,
)
from fleet.app.replies import Publish
from fleet.app.rollouts import RolloutApp
from fleet.app.series import downsample
from fleet.errors import FleetError
from fleet.operators import check_name, parse_public_key
from fleet.ota import ReleaseService
from fleet.store import ACCEPTED, PENDING, FleetStore

# The newest dead letters ``controller-status`` shows.
RECENT_LETTERS = 10
# The range a telemetry series covers when the request names none (seconds before ``until``).
DEFAULT_SERIES_S = 3600.0
# The most telemetry rows one series reads (the store keeps 10,000 a device by default).
MAX_SERIES_ROWS = 20_000


def _no_refusals() -> Counter[str]:
    return Counter()


class FleetApp:
    """The controller's use cases over one store (and the release service when OTA is on)."""

    def __init__(
        self,
        store: FleetStore,
        *,
        releases: ReleaseService | None = None,
        clock: Callable[[], float] = time.time,
        refusals: Callable[[], Counter[str]] = _no_refusals,
    ) -> None:
        """``refusals``: the messages the running controller refused so far, by reason."""
        self.store = store
        self.releases = releases
        self._clock = clock
        self._refusals = refusals
        # Tags, selections and staged rollouts (fleet.app.rollouts).
        self.rollouts = RolloutApp(store, releases=releases, clock=clock)

    # -- reads (unsigned over MQTT) ----------------------------------------------------------

    def list_devices(self, request: DevicesListRequest) -> DevicesReply:
        """Every device; with ``select``, those it matches and their merged tags.

        Raises:
            SelectorError: the selector does not parse (naming the clause).
        """
        if request.select is not None:
            return self.rollouts.select_devices(request)
        return DevicesReply(devices=self.store.list_devices())

    def show_device(self, request: ShowRequest) -> DeviceReply:
        """Raises ``UnknownDeviceError`` for a device never seen."""
        detail = self.store.device_detail(request.device_id, events=request.events)
        return DeviceReply(device=detail)

    def find_devices(self, query: DevicesQuery) -> DevicesReply:
        """``list_devices`` narrowed to a state (``pending``: not accepted), at most ``limit``.

        Raises:
            SelectorError: the selector does not parse (naming the clause).
        """
        listed = self.list_devices(DevicesListRequest(select=query.select))
        devices = [d for d in listed.devices if _in_state(d, query.state)]
        return listed.model_copy(update={"devices": devices[: query.limit]})

    def telemetry_series(self, query: TelemetryQuery) -> TelemetrySeriesReply:
        """The device's telemetry over ``[since, until]`` in at most ``points`` buckets.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
            FleetError: ``since`` is not before ``until``.
        """
        until = self._clock() if query.until is None else query.until
        since = until - DEFAULT_SERIES_S if query.since is None else query.since
        if not since < until:
            raise FleetError(f"since ({since}) must be before until ({until})")
        rows, truncated = self.store.telemetry_range(
            query.device_id, since, until, limit=MAX_SERIES_ROWS
        )
        if query.since is None and rows and since < rows[0].ts < until:
            # Left to the default, the range starts at the first sample of the hour: a
            # device seen for a minute gets its points over that minute, not one 30 s bucket.
            since = rows[0].ts
        return downsample(
            query.device_id,
            rows,
            since=since,
            until=until,
            points=query.points,
            truncated=truncated,
        )

    def device_events(self, query: EventsQuery) -> EventsReply:
        """A page of the device's events, newest first.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        events = self.store.device_events(query.device_id, limit=query.limit, before=query.before)
        more = len(events) == query.limit and events[-1].id > 1
        return EventsReply(
            device_id=query.device_id,
            events=events,
            next_before=events[-1].id if more else None,
        )

    def list_releases(self) -> ReleasesReply:
        """Every release in the TUF repository; ``FleetError`` when OTA is off."""
        return ReleasesReply(releases=self._releases().releases())

    def controller_status(self, _request: StatusRequest) -> StatusReply:
        counts = self._refusals()
        return StatusReply(
            rejected=Rejected(total=counts.total(), by_reason=dict(counts)),
            dead_letters=self.store.dead_letters(RECENT_LETTERS),
        )

    def list_operators(self, _request: OperatorsListRequest) -> OperatorsReply:
        return OperatorsReply(operators=self.store.list_operators())

    # -- changes (signed by an operator over MQTT) -------------------------------------------

    def accept_device(self, request: AcceptRequest, *, operator: str) -> AcceptReply:
        """Make a pending device a deploy target; ``changed`` is False if it already was.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        changed = self.store.accept_device(request.device_id, operator=operator, now=self._clock())
        return AcceptReply(device_id=request.device_id, admission=ACCEPTED, changed=changed)

    def add_operator(self, request: OperatorAddRequest) -> OperatorAddedReply:
        """Raises ``FleetError`` for a bad name or key, or one already registered."""
        key = parse_public_key(request.public_key)
        key_id = self.store.add_operator(check_name(request.name), key, now=self._clock())
        return OperatorAddedReply(name=request.name, key_id=key_id)

    def remove_operator(
        self, request: OperatorRemoveRequest, *, keep_last: bool = True
    ) -> OperatorRemovedReply:
        """Raises ``FleetError`` for an unknown name, and for the last operator when
        ``keep_last`` (over MQTT: nobody could sign a request any more)."""
        if keep_last and [o.name for o in self.store.list_operators()] == [request.name]:
            raise FleetError(
                f"{request.name!r} is the last operator: remove it with --db on the "
                "controller's host"
            )
        self.store.remove_operator(request.name)
        return OperatorRemovedReply(name=request.name, removed=True)

    def deploy(self, request: DeployRequest) -> tuple[DeployReply, list[Publish]]:
        """Raises ``FleetError`` (or a subclass naming the device) when nothing is deployed."""
        return self._releases().deploy(request)

    def rollback(self, request: RollbackRequest) -> tuple[RollbackReply, list[Publish]]:
        return self._releases().rollback(request)

    def _releases(self) -> ReleaseService:
        if self.releases is None:
            raise FleetError("OTA is not enabled on this controller ([ota] repo)")
        return self.releases


def _in_state(device: DeviceSummary, state: str | None) -> bool:
    if state == "online":
        return device.online
    if state == "offline":
        return not device.online
    if state == "pending":
        return device.admission == PENDING
    return True
