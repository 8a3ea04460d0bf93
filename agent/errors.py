"""The agent's error hierarchy: every error the agent raises on purpose derives from AgentError.

Errors carry the offending value as an attribute and name it in their message, so a log line
or a CLI message says what was wrong without a traceback. Foreign exceptions (paho, sqlite3,
pydantic, OSError) are wrapped at the boundary that caught them, with ``raise ... from``.
Private exceptions that steer control flow inside one module (the command dispatcher's
``_Refused``, the REST server's ``_BodyBudgetFull``) derive from it too;
``tests/unit/test_agent_errors.py`` checks every exception class defined in ``agent/``.

The wire's errors (``TopicError``, ``PayloadError``, ``UpdateError``, ``CardError``) are the
contract's (``edge_contract.errors``), the MQTT link's (``MqttError`` and its kinds) the shared
runtime's (``edge_runtime.errors``): the agent catches those bases beside ``AgentError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from edge_contract.errors import UpdateError

# sysexits.h EX_CONFIG: systemd units list it in RestartPreventExitStatus= so that a config
# typo stops the service instead of restarting it forever.
EXIT_CONFIG = 78
EXIT_RUNTIME = 1


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file or environment is invalid; the agent cannot start."""

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class StoreError(AgentError):
    """The on-disk store (outbox, sequence counter) could not be read or written."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")


class CommandError(AgentError):
    """A command handler's way of answering ``ok: false`` with a reason (the reply's error)."""


class BoardParseError(AgentError, ValueError):
    """A board tool's output is not in the expected vendor-tool format at all."""

    # Long tegrastats lines would otherwise flood logs when echoed in errors.
    ECHO_LIMIT = 120

    def __init__(self, message: str, line: str) -> None:
        self.line = line
        preview = line if len(line) <= self.ECHO_LIMIT else line[: self.ECHO_LIMIT] + "..."
        super().__init__(f"{message}: {preview!r}")


class BoardReadError(AgentError, OSError):
    """A board tool (vcgencmd, tegrastats) could not be run or exited unsuccessfully."""

    def __init__(self, command: Sequence[str], reason: str) -> None:
        self.command = tuple(command)
        super().__init__(f"{' '.join(self.command)}: {reason}")


class SerialLinkError(AgentError):
    """The serial link to a peripheral failed: port, handshake, or protocol."""


class FrameError(SerialLinkError, ValueError):
    """Bytes on the serial line are not a valid frame (COBS, length, CRC)."""

    def __init__(self, message: str, *, data: bytes) -> None:
        self.data = data
        super().__init__(f"{message}: {data[:32].hex()}")


class MessageError(SerialLinkError, ValueError):
    """A valid frame carries a message that does not decode (unknown type, bad length)."""

    def __init__(self, message: str, *, msg_type: int, payload: bytes) -> None:
        self.msg_type = msg_type
        self.payload = payload
        super().__init__(f"{message} (type 0x{msg_type:02x}, payload {payload[:32].hex()})")


class HandshakeError(SerialLinkError):
    """The peripheral speaks another protocol version: the two sides refuse each other."""


class InferenceError(AgentError):
    """A model could not be loaded or run, or a request to it was invalid."""


class ModelLoadError(InferenceError):
    """A model file cannot be loaded: missing, corrupt, truncated, or for another runtime."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")


class ModelSignatureError(InferenceError):
    """A loaded model's inputs or outputs differ from its card (the I/O contract)."""

    def __init__(self, message: str, *, model: str) -> None:
        self.model = model
        super().__init__(f"{model}: {message}")


class GoldenMismatchError(InferenceError):
    """A model's output for its golden input is outside the card's tolerance."""

    def __init__(self, *, model: str, max_abs_error: float, tolerance: float) -> None:
        self.model = model
        self.max_abs_error = max_abs_error
        self.tolerance = tolerance
        super().__init__(
            f"{model}: golden output off by {max_abs_error:.3g}, tolerance {tolerance:.3g}"
        )


class InvalidInputError(InferenceError, ValueError):
    """A request's input has the wrong name, shape or dtype for the model."""

    # What the REST edge counts it as (``agent.inference.metrics.REST_ERROR_REASONS``).
    reason: ClassVar[str] = "bad_input"

    def __init__(self, message: str, *, model: str, detail: str = "") -> None:
        self.model = model
        self.detail = detail
        super().__init__(f"{model}: {message}")


class NonFiniteOutputError(InferenceError):
    """A model returned NaN or Inf: its result is not passed on."""

    def __init__(self, *, model: str, output: str, count: int) -> None:
        self.model = model
        self.output = output
        self.count = count
        super().__init__(f"{model}: output {output!r} has {count} NaN/Inf values")


class UnknownModelError(InferenceError, LookupError):
    """No model (or no such version of it) is loaded under that name."""

    def __init__(self, name: str, version: str | None = None) -> None:
        self.name = name
        self.version = version
        what = f"{name!r} version {version!r}" if version is not None else repr(name)
        super().__init__(f"no model {what} is loaded")


class ServiceBusyError(InferenceError):
    """The inference queue is full: the request is refused instead of waiting without bound."""

    def __init__(self, *, model: str, queued: int) -> None:
        self.model = model
        self.queued = queued
        super().__init__(f"{model}: {queued} requests already queued")


class UnknownPredictionError(InferenceError, LookupError):
    """Feedback names a prediction id that is unknown or has aged out of the window."""

    def __init__(self, *, model: str, prediction_id: str) -> None:
        self.model = model
        self.prediction_id = prediction_id
        super().__init__(f"{model}: no recent prediction with id {prediction_id!r}")


class ModelRunError(InferenceError):
    """The runtime failed while running a model on a request that passed validation."""

    def __init__(self, message: str, *, model: str) -> None:
        self.model = model
        super().__init__(f"{model}: {message}")


class FetchError(UpdateError, AgentError):
    """A repository file could not be fetched over MQTT (``status`` as in HTTP: 404 missing)."""

    def __init__(self, path: str, status: int, detail: str) -> None:
        self.path = path
        self.status = status
        super().__init__("transport", f"{path}: {detail} (status {status})", path=path)


class SlotError(AgentError):
    """An A/B slot operation does not fit the slots' state (e.g. activating an empty slot)."""

    def __init__(self, message: str, *, model: str, slot: str | None) -> None:
        self.model = model
        self.slot = slot
        super().__init__(f"{model} slot {slot}: {message}")
