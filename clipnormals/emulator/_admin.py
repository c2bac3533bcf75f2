"""The admin endpoints (``EmulatorConfig(admin=True)``; off by default), under ``/_emulator``.

- ``GET /_emulator/stats``: the counters (see :class:`Stats`), plus ``credits`` per key and the
  ``revoked`` keys.
- ``POST /_emulator/credits`` ``{"key": ..., "credits": n}``: set a balance (adds the key).
- ``POST /_emulator/revoke`` / ``/_emulator/restore`` ``{"key": ...}``.
- ``POST /_emulator/reset``: everything back to the configuration.

Keys travel in JSON bodies, never in URLs, so access logs never show them. There is no
authentication: the emulator serves loopback only unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._state import EmulatorState

__all__ = ["ADMIN_PREFIX", "admin_routes"]

ADMIN_PREFIX: Final = "/_emulator"


def admin_routes(emulator: EmulatorState) -> list[Route]:
    """The admin routes of ``emulator``; their errors are HTTPExceptions (JSON by the app)."""

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data

    async def key_of(request: Request) -> tuple[str, dict[str, Any]]:
        data = await body(request)
        key = data.get("key")
        if not isinstance(key, str) or not emulator.knows(key):
            raise HTTPException(404, "unknown key")
        return key, data

    def state() -> dict[str, Any]:
        data = emulator.stats.snapshot()
        known = emulator.keys()
        data["credits"] = {key: emulator.credits(key) for key in known}
        data["revoked"] = sorted(key for key in known if emulator.is_revoked(key))
        return data

    async def get_stats(request: Request) -> Response:
        return JSONResponse(state())

    async def set_credits(request: Request) -> Response:
        data = await body(request)
        key, credits = data.get("key"), data.get("credits")
        if not isinstance(key, str) or isinstance(credits, bool) or not isinstance(credits, int):
            raise HTTPException(400, 'expected {"key": str, "credits": int}')
        try:
            emulator.set_credits(key, credits)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse(state())

    async def revoke(request: Request) -> Response:
        key, _ = await key_of(request)
        emulator.revoke(key)
        return JSONResponse(state())

    async def restore(request: Request) -> Response:
        key, _ = await key_of(request)
        emulator.restore(key)
        return JSONResponse(state())

    async def reset(request: Request) -> Response:
        emulator.reset()
        return JSONResponse(state())

    handlers: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/stats", get_stats, "GET"),
        ("/credits", set_credits, "POST"),
        ("/revoke", revoke, "POST"),
        ("/restore", restore, "POST"),
        ("/reset", reset, "POST"),
    ]
    return [Route(ADMIN_PREFIX + path, fn, methods=[method]) for path, fn, method in handlers]
