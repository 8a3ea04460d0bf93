"""The use cases' replies (``fleet.app.usecases``): the wire contract's reply models.

They live in ``edge_contract.controller`` beside the requests, because the CLI decodes the
controller's answers into the same models the use cases return; this module names them for
the application layer and adds what only the controller needs (``Publish``).
"""

from __future__ import annotations

from edge_contract.controller import (
    AcceptReply,
    DeployReply,
    DeviceReply,
    DevicesReply,
    OperatorAddedReply,
    OperatorRemovedReply,
    OperatorsReply,
    Rejected,
    Reply,
    RollbackReply,
    Skipped,
    StatusReply,
    reply_body,
)

__all__ = [
    "AcceptReply",
    "DeployReply",
    "DeviceReply",
    "DevicesReply",
    "OperatorAddedReply",
    "OperatorRemovedReply",
    "OperatorsReply",
    "Publish",
    "Rejected",
    "Reply",
    "RollbackReply",
    "Skipped",
    "StatusReply",
    "to_json",
]

# A message a use case hands back for the front end to publish: (topic, payload).
Publish = tuple[str, bytes]

# The reply as the JSON object sent on the wire (nested records included), before its ``ok``.
to_json = reply_body
