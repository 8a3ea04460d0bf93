"""``/metrics`` on a port of its own (``[metrics] port``): the agent's second aiohttp door.

The inference REST service (``agent.inference.rest``) serves ``/metrics`` beside the models'
API when inference is on; this small server serves it with or without models, for a board
whose only job is a pipeline, a serial link or OTA. ``GET /metrics`` (Prometheus text) and
``GET /healthz``, nothing else; no request body is ever read (``client_max_size`` 1 KiB).
Loopback by default: exposing it is the operator's choice (``[metrics] host``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("agent.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """A running metrics server; ``close()`` stops it."""

    def __init__(self, runner: web.AppRunner, url: str, port: int) -> None:
        self._runner = runner
        self.url = url
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_metrics_server(
    render: Callable[[], Awaitable[bytes]], *, host: str, port: int
) -> MetricsServer:
    """Serve ``render()`` at ``/metrics`` on ``host:port`` (0: any free port); raises
    ``OSError`` when the address cannot be bound."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=await render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    shown = f"[{host}]" if ":" in host else host
    return MetricsServer(runner, f"http://{shown}:{bound}", bound)
