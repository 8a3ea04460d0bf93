"""docs/http-api.md against the REST API's router: every route (method and path) is documented,
and every route is a read by GET or an action by POST. Pure: reads a file and the router."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from fleet.http import api

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def _routes() -> list[tuple[str, str]]:
    """(METHOD, path under /api/v1) of every operation the router puts in /openapi.json."""
    app = FastAPI()
    app.include_router(api.router)
    paths = app.openapi()["paths"]
    return [
        (method.upper(), path.removeprefix("/api/v1"))
        for path, operations in paths.items()
        for method in operations
    ]


def test_every_route_is_in_the_document() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for method, path in _routes():
        # As written in the document: `GET /devices/{id}...`; an action's suffix may be
        # listed with its siblings (`POST /rollouts/{id}/pause`, `/resume`, ...).
        written = path.replace("{device_id}", "{id}").replace("{rollout_id}", "{id}")
        last = "/" + written.rsplit("/", 1)[1]
        if f"`{method} {written}" not in text and f"`{last}`" not in text:
            missing.append(f"{method} {written}")
    assert not missing, f"not in docs/http-api.md: {missing}"


def test_reads_are_gets_and_actions_are_posts() -> None:
    methods = {method for method, _path in _routes()}
    assert methods == {"GET", "POST"}
    assert len(_routes()) >= 17  # the rollouts router (fleet.http.api_rollouts) included
