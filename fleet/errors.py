"""The fleet package's error hierarchy; each error names the value it is about."""

from __future__ import annotations

EXIT_CONFIG = 78
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the controller or broker did not answer
EXIT_NOT_FOUND = 2


class FleetError(Exception):
    """Base of every error the fleet package raises on purpose."""

    exit_code = 1


class FleetConfigError(FleetError):
    """The fleet configuration (file, environment or options) is invalid."""

    exit_code = EXIT_CONFIG


class BrokerUrlError(FleetConfigError):
    """A ``--broker`` URL that is not ``mqtt://host:port`` or ``mqtts://host:port``."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"invalid broker URL {url!r}: {reason}")


class ControllerUnavailableError(FleetError):
    """No controller answered a request in time."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, broker: str, timeout_s: float) -> None:
        self.broker = broker
        super().__init__(
            f"the broker at {broker} is up, but no fleet controller answered within "
            f"{timeout_s:g}s (is `fleet serve` running?)"
        )


class UnknownDeviceError(FleetError):
    """The device id has never been seen by the controller."""

    exit_code = EXIT_NOT_FOUND

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        super().__init__(f"unknown device {device_id!r}")


class StoreError(FleetError):
    """The controller's database could not be read or written."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")


EXIT_DATA = 65  # sysexits EX_DATAERR: the input is well formed but refused


class ReleaseRepositoryError(FleetConfigError):
    """The TUF repository directory is missing, corrupt, unwritable, or already exists."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")


class ReleaseInputError(FleetConfigError):
    """A file or option given to a release command is unusable (missing model, bad card)."""

    def __init__(self, message: str, *, value: str) -> None:
        self.value = value
        super().__init__(f"{message}: {value}")


class PublishRefusedError(FleetError):
    """A release that would break the repository's rules (duplicate, counter not growing)."""

    exit_code = EXIT_DATA

    def __init__(self, message: str, *, model: str) -> None:
        self.model = model
        super().__init__(f"{message}: {model}")


# -- operator authentication and device admission (fleet.operators) ---------------------------

EXIT_NOPERM = 77  # sysexits EX_NOPERM: the controller refused the operator's request


class BrokerUnreachableError(ControllerUnavailableError):
    """The broker itself could not be reached (refused, unreachable, TLS failure)."""

    def __init__(self, broker: str, reason: str) -> None:
        self.broker = broker
        self.reason = reason
        FleetError.__init__(self, f"cannot reach the broker at {broker} ({reason})")


class OperatorKeyError(FleetConfigError):
    """An operator key (file or text) that cannot be used, or a missing one."""

    def __init__(self, message: str, *, value: str) -> None:
        self.value = value
        super().__init__(f"{message}: {value}")


class OperatorRefusedError(FleetError):
    """A mutating request refused by the controller: unsigned, unknown key, bad signature,
    outside the time window or replayed (``reason`` says which)."""

    exit_code = EXIT_NOPERM

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"unauthorized ({reason}): {detail}")


class DeviceNotAcceptedError(FleetError):
    """A deploy or rollback target that an operator has not accepted yet."""

    exit_code = EXIT_DATA

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        super().__init__(
            f"device {device_id!r} is pending: accept it first with `fleet devices accept "
            f"{device_id}`"
        )


class DeviceRevokedError(DeviceNotAcceptedError):
    """A device whose certificate was revoked (``fleet devices revoke ID --db``): it is
    neither accepted again nor a deploy or rollback target; provision it anew instead."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        FleetError.__init__(
            self,
            f"device {device_id!r} is revoked: provision it again under a new device id",
        )


# -- staged rollouts (fleet.rollouts) --------------------------------------------------------


class RolloutError(FleetError):
    """A rollout request or event that cannot apply: a bad ``--stages`` entry, no eligible
    device, an operator event in a phase where it does not apply. ``value`` is what it is
    about (the rollout id or the offending entry); the message names it."""

    exit_code = EXIT_DATA

    def __init__(self, message: str, *, value: str) -> None:
        self.value = value
        super().__init__(message)


class SelectorError(FleetError):
    """A device selector that does not parse; the message names the clause at fault."""

    exit_code = EXIT_DATA

    def __init__(self, text: str, reason: str, *, clause: str | None = None) -> None:
        self.text = text
        self.clause = clause
        super().__init__(f"invalid selector {text!r}: {reason}")
