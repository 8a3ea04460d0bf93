"""What the use cases (``fleet.app.usecases``) hand back besides their typed reply.

The replies themselves are the wire contract's models (``edge_contract.controller``), because
the CLI decodes the controller's answers into the same models the use cases return. This
module adds what only the controller needs: the messages a use case hands the front end to
publish, and the reply as the JSON object the RPC front end sends.
"""

from __future__ import annotations

from edge_contract.controller import reply_body

# A message a use case hands back for the front end to publish: (topic, payload).
Publish = tuple[str, bytes]

# The reply as the JSON object sent on the wire (nested records included), before its ``ok``.
to_json = reply_body

__all__ = ["Publish", "to_json"]
