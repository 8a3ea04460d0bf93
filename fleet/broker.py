"""The link settings towards the configured broker, for the controller and for a CLI call.

Shared by the server (``fleet.service``) and the CLI's client (``fleet.rpc``), so the client
need not import the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from edge_runtime.mqtt.base import LinkSettings, TlsSettings
from fleet.config import FleetConfig, parse_broker_url
from fleet.errors import FleetError

if TYPE_CHECKING:
    from edge_runtime.mqtt.link import MqttLink


def link_settings_for(
    config: FleetConfig, *, client_id: str, persistent: bool, session_expiry_s: int = 86400
) -> LinkSettings:
    """Link settings towards the configured broker for the controller or a CLI call."""
    address = parse_broker_url(config.broker)
    tls = None
    if address.tls or config.tls.ca_file is not None:
        if config.tls.ca_file is None:
            raise FleetError(f"{config.broker} needs --ca-file (or FLEET_TLS__CA_FILE)")
        tls = TlsSettings(config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
    return LinkSettings(
        host=address.host,
        port=address.port,
        client_id=client_id,
        clean_start=not persistent,
        session_expiry_s=session_expiry_s if persistent else 0,
        tls=tls,
        reconnect_max_s=10.0,
        max_inflight=100,
        manual_ack=persistent,
    )


async def close_link(link: MqttLink, runner: asyncio.Task[None]) -> None:
    """A CLI call's short-lived link closed (a second at most) and its network loop ended."""
    with contextlib.suppress(Exception):
        await link.close(timeout=1.0)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
