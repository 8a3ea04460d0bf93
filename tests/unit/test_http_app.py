"""The HTTP application's limits and refusals (fleet/http/app.py, context.py), driven over
ASGI in process: no server, no socket. Every refusal is a JSON ``Refusal`` with a 4xx status;
a body over the limit is refused before it is read whole; every response carries the CSP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.app.usecases import FleetApp
from fleet.config import HttpOptions
from fleet.http.app import build_app
from fleet.http.auth import Authenticator, Role, parse_tokens, token_line
from fleet.http.context import HttpContext
from fleet.http.live import LiveHub
from fleet.ingest import StoreThread
from fleet.store import SqliteFleetStore

VIEWER, OPERATOR = "viewer-token-1", "operator-token-1"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[HttpContext]:
    store = SqliteFleetStore(tmp_path / "fleet.db")
    thread = StoreThread()
    lines = [token_line("ann", Role.VIEWER, VIEWER), token_line("op", Role.OPERATOR, OPERATOR)]
    context = HttpContext(
        app=FleetApp(store),
        thread=thread,
        publish=lambda _messages: None,
        hub=LiveHub(),
        auth=Authenticator(parse_tokens("\n".join(lines))),
        options=HttpOptions(max_body_bytes=2048),
    )
    yield context
    thread.shutdown()
    store.close()


def call(
    ctx: HttpContext,
    method: str,
    path: str,
    *,
    token: str | None = VIEWER,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    chunks: int = 1,
) -> tuple[int, dict[str, str], Any]:
    """One request through the ASGI app; the body arrives in ``chunks`` pieces."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if token is not None:
        raw_headers.append((b"authorization", f"Bearer {token}".encode()))
    if chunks == 1:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    path_part, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_part,
        "raw_path": path_part.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8080"), *raw_headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(build_app(ctx)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    got = {k.decode(): v.decode() for k, v in start["headers"]}
    is_json = got.get("content-type", "").startswith("application/json")
    return start["status"], got, json.loads(content) if is_json else content


def test_a_viewer_reads_and_every_response_carries_the_csp(ctx: HttpContext) -> None:
    status, headers, body = call(ctx, "GET", "/api/v1/devices")
    assert (status, body) == (200, {"devices": [], "select": None})
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("token", [None, "wrong", "x" * 300])
def test_no_or_a_bad_token_is_401_json(ctx: HttpContext, token: str | None) -> None:
    status, headers, body = call(ctx, "GET", "/api/v1/devices", token=token)
    assert status == 401 and body["kind"] == "Unauthorized" and body["ok"] is False
    assert headers["www-authenticate"].startswith("Bearer")
    assert ctx.refused["unauthorized"] == 1


def test_the_cookie_authenticates_too(ctx: HttpContext) -> None:
    cookie = {"cookie": f"fleet_token={VIEWER}"}
    assert call(ctx, "GET", "/api/v1/devices", token=None, headers=cookie)[0] == 200


def test_unknown_device_bad_selector_and_bad_id_are_4xx_json(ctx: HttpContext) -> None:
    status, _, body = call(ctx, "GET", "/api/v1/devices/nosuch")
    assert (status, body["kind"], body["device_id"]) == (404, "UnknownDeviceError", "nosuch")
    status, _, body = call(ctx, "GET", "/api/v1/devices?select=a=1,%25%25")
    assert status == 400 and body["kind"] == "SelectorError" and "'%%'" in body["error"]
    status, _, body = call(ctx, "GET", "/api/v1/devices/Bad%20Id")
    assert status == 422 and body["kind"] == "ValidationError" and "device_id" in body["error"]
    status, _, body = call(ctx, "GET", "/api/v1/rollouts?limit=0")
    assert status == 422 and "limit" in body["error"]


def test_unknown_path_and_wrong_method_are_json(ctx: HttpContext) -> None:
    status, _, body = call(ctx, "GET", "/api/v1/nothing")
    assert (status, body["kind"]) == (404, "NotFound")
    status, _, body = call(ctx, "DELETE", "/api/v1/devices")
    assert (status, body["kind"]) == (405, "MethodNotAllowed")


def test_a_body_announced_over_the_limit_is_413_before_any_route(ctx: HttpContext) -> None:
    status, _, body = call(ctx, "POST", "/api/v1/devices", body=b"x" * 5000)
    assert (status, body["kind"]) == (413, "PayloadTooLarge")
    assert "2048 bytes" in body["error"] and ctx.refused["too_large"] == 1


def test_healthz_needs_no_token(ctx: HttpContext) -> None:
    assert call(ctx, "GET", "/healthz", token=None)[:3:2] == (200, {"ok": True})


def test_a_chunked_body_over_the_limit_is_413_as_it_arrives(ctx: HttpContext) -> None:
    """No Content-Length: the limit counts what the route reads."""
    body = b'{"model": "digits", "version": "' + b"9" * 5000 + b'"}'
    status, _, reply = call(ctx, "POST", "/api/v1/deploy", token=OPERATOR, body=body, chunks=4)
    assert (status, reply["kind"]) == (413, "PayloadTooLarge")
    assert ctx.refused["too_large"] == 1
