"""The wire contract's errors: what a malformed topic, payload, release or card raises.

``ContractError`` is their base; ``agent.errors`` and ``fleet.errors`` build on these (the
agent's ``FetchError`` is an ``UpdateError``) and catch them beside their own. Errors carry
the offending value as an attribute and name it in their message.
"""

from __future__ import annotations


class ContractError(Exception):
    """Base of every error the wire contract raises on purpose."""


class TopicError(ContractError, ValueError):
    """A topic or device id does not follow the fleet's topic scheme."""

    def __init__(self, message: str, *, topic: str) -> None:
        self.topic = topic
        super().__init__(f"{message}: {topic!r}")


class PayloadError(ContractError, ValueError):
    """A message payload is not valid JSON of the expected shape.

    ``reason`` is a short, stable code (``too_large``, ``too_deep``, ``not_json``, ...) that
    rejection counters are keyed by; the message says the rest.
    """

    def __init__(self, message: str, *, excerpt: str, reason: str = "invalid") -> None:
        self.excerpt = excerpt
        self.reason = reason
        super().__init__(f"{message}: {excerpt!r}")


class UpdateError(ContractError):
    """An over-the-air model update was refused or failed.

    ``reason`` is machine-readable (events, the reported state, the fleet CLI): one of
    ``edge_contract.reasons.Reason``. ``detail`` names the offending value in words.
    """

    def __init__(self, reason: str, detail: str, **fields: object) -> None:
        self.reason = reason
        self.detail = detail
        self.fields = fields
        super().__init__(f"{reason}: {detail}")


class CardError(ContractError, ValueError):
    """A model card is not valid JSON of the card schema (``source`` names where it came from).

    The agent reports it as its ``ModelLoadError`` (``agent.inference.cardfile``).
    """

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        self.problem = message
        super().__init__(f"{message}: {source}")
