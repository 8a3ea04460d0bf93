"""The HTTP server inside ``fleet serve``: uvicorn on the controller's own asyncio loop.

The socket is bound before the controller starts anything else, so a port in use, or a
non-loopback address without tokens (``fleet.http.auth.check_bind``), stops ``fleet serve``
at once with a config error (exit 78) instead of failing later. Port 0 takes any free port;
the address is logged as ``http.listening`` either way. uvicorn's own signal handling is
off: the controller's SIGTERM handler stops everything, this server included.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import structlog
import uvicorn

from fleet.config import HttpOptions
from fleet.errors import FleetConfigError
from fleet.http.app import build_app
from fleet.http.auth import Authenticator, check_bind, parse_tokens, split_listen
from fleet.http.context import HttpContext

log = structlog.get_logger("fleet.http")


def load_authenticator(options: HttpOptions) -> Authenticator:
    """Raises ``FleetConfigError`` for a tokens file that cannot be read or parsed."""
    if options.tokens_file is None:
        return Authenticator([])
    path = Path(options.tokens_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetConfigError(f"[http] tokens_file {str(path)!r}: {exc.strerror}") from exc
    entries = parse_tokens(text, source=str(path))
    if not entries:
        raise FleetConfigError(f"[http] tokens_file {str(path)!r} holds no token")
    return Authenticator(entries)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the controller owns SIGTERM and SIGINT


class HttpServer:
    """``bind`` (first thing in ``fleet serve``), then ``run`` serves until ``stop``."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.host, self.port = split_listen(ctx.options.listen)
        check_bind(self.host, ctx.auth)
        self._socket: socket.socket | None = None
        config = uvicorn.Config(
            build_app(ctx),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)

    def bind(self) -> None:
        """Raises ``FleetConfigError`` when the address cannot be had (in use, not local)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise FleetConfigError(
                f"[http] listen {self.ctx.options.listen}: {exc.strerror}"
            ) from exc
        sock.listen(128)
        self._socket = sock
        self.port = sock.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def run(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        log.info(
            "http.listening",
            url=self.url,
            auth="tokens" if self.ctx.auth.configured else "none: loopback only, read only",
        )
        await self._server.serve(sockets=[self._socket])

    async def stop(self) -> None:
        self.ctx.hub.close()
        self._server.should_exit = True
        await asyncio.sleep(0)
