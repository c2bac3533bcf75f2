"""The emulator's HTTP face: a Starlette app speaking the Portrait Surface Normals contract.

Order of checks on ``POST /portrait-surface-normals/v1``, like a gateway in front of a worker:

1. arrival: the clock is read and the arrival counted, before anything can wait;
2. ``x-api-key``: absent or empty -> 401; unknown or revoked -> 403;
3. the rate limiter of the key -> 429. Every authenticated arrival counts, including those
   that later fail with 406, 402 or 400 (the conservative reading: a client must spend a
   token on every attempt);
4. ``Accept`` -> 406 (header-only, before the upload is read);
5. the balance -> 402 when it cannot pay for a success;
6. the upload: multipart/form-data with exactly one file part named ``image_file``; a missing
   part, a wrong name, a second file, an extra text field (unless ``allow_extra_fields``), a
   body or file over 30 MB, an empty, non-image, unsupported (GIF, BMP, TIFF...), corrupt or
   over-25-MP image -> 400;
7. the fault draw (script, then probabilities) -> 5xx, 429, reset, stall, truncation;
8. latency, the synthetic map, the charge, the 200 with ``x-remaining-credits`` and
   ``x-credits-consumed``.

The synthetic map's template is placed on where the subject of the upload seems to be
(:mod:`._fit`), worked out right after the checks, in the same worker thread, from the small
copy of the pixels the checks keep (so a PNG is decoded once) and before the bytes are dropped.
Uploads under ``MIN_PIXELS`` (and canned maps) keep the default placement and never reach the
fit: the tests' and benchmarks' tiny images cost what they always did.

Errors are ``{"error": "..."}`` with ``content-type: application/json``. Every response says
``x-emulator: clipnormals``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Final, Protocol

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ._admin import admin_routes
from ._config import EmulatorConfig
from ._fit import GRID, MIN_PIXELS, fit_placement
from ._state import EmulatorState, Refusal
from ._synth import cached_jpeg, synthetic_jpeg
from ._template import Placement
from ._validate import ImageInfo, Rejected, accepts_jpeg, inspect_image

__all__ = ["CONNECTION_EXTENSION", "ENDPOINT", "build_app"]

ENDPOINT: Final = "/portrait-surface-normals/v1"
#: ASGI scope extension through which the emulator's own server lets the app drop a connection.
CONNECTION_EXTENSION: Final = "clipnormals.connection"
EMULATOR_HEADER: Final = ("x-emulator", "clipnormals")

_MULTIPART_SLACK = 1 << 20  # room for boundaries and part headers around a maximal file
_MAX_FILE_PARTS = 8
_MAX_TEXT_FIELDS = 32
_MAX_TEXT_FIELD_BYTES = 64 * 1024
_THREAD_THRESHOLD = 256 * 1024  # decode smaller uploads inline: a thread hop costs more
_INLINE_MAP_PIXELS = 128 * 128  # and build smaller maps inline
_DISCONNECT_WAIT = 5.0


class Connection(Protocol):
    """What the emulator's server puts under ``scope["extensions"][CONNECTION_EXTENSION]``."""

    def reset(self) -> None:
        """Abort the connection with a TCP reset."""
        ...

    def close(self) -> None:
        """Close the connection after flushing what was sent."""
        ...


class _BodyTooLarge(Exception):
    pass


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    all_headers = dict(headers or {})
    all_headers[EMULATOR_HEADER[0]] = EMULATOR_HEADER[1]
    return JSONResponse({"error": message}, status_code=status, headers=all_headers)


def _capped(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return capped


async def _wait_for_disconnect(receive: Receive) -> None:
    with anyio.move_on_after(_DISCONNECT_WAIT):
        while (await receive())["type"] != "http.disconnect":
            pass


def _connection(scope: Scope) -> Connection | None:
    extensions = scope.get("extensions") or {}
    found: Connection | None = extensions.get(CONNECTION_EXTENSION)
    return found


class _Endpoint:
    """The ASGI app behind the one route (raw ASGI: faults need to misbehave at the socket)."""

    def __init__(self, emulator: EmulatorState) -> None:
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        emulator = self.emulator
        config = emulator.config
        now = config.clock()
        headers = Headers(scope=scope)
        sent_key = headers.get("x-api-key") or None
        admitted = emulator.arrive(sent_key, now)
        if isinstance(admitted, Refusal):
            stats_key = sent_key if emulator.knows(sent_key) else None
            await self._refuse(admitted, stats_key, scope, receive, send)
            return
        key = admitted
        if not accepts_jpeg(", ".join(headers.getlist("accept")) or None):
            message = "Not acceptable: this endpoint only produces image/jpeg"
            await self._refuse(Refusal(406, message), key, scope, receive, send)
            return
        if not emulator.has_credits(key):
            message = "Insufficient credits: this api key has no credits left"
            await self._refuse(Refusal(402, message), key, scope, receive, send)
            return
        try:
            data = await self._read_upload(scope, receive, headers, config)
            info, placement = await self._inspect(data, config)
        except Rejected as exc:
            await self._refuse(Refusal(exc.status, exc.message), key, scope, receive, send)
            return
        except ClientDisconnect:
            emulator.stats.record_abandoned(key)
            return
        del data
        cancelled = anyio.get_cancelled_exc_class()
        try:
            await self._answer(key, info, placement, scope, receive, send)
        except cancelled:
            # In process, a client deadline cancels the app: the request was abandoned.
            emulator.stats.record_abandoned(key)
            raise

    async def _refuse(
        self, refusal: Refusal, stats_key: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.emulator.stats.record_status(stats_key, refusal.status)
        response = _json_error(refusal.status, refusal.error, dict(refusal.headers))
        await response(scope, receive, send)

    async def _read_upload(
        self, scope: Scope, receive: Receive, headers: Headers, config: EmulatorConfig
    ) -> bytes:
        cap = config.max_file_bytes + _MULTIPART_SLACK
        too_large = f"image_file is too large: the limit is {config.max_file_bytes} bytes"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise Rejected(400, too_large)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "multipart/form-data":
            raise Rejected(
                400, "The request must be multipart/form-data with a file part named image_file"
            )
        request = Request(scope, _capped(receive, cap))
        try:
            async with request.form(
                max_files=_MAX_FILE_PARTS,
                max_fields=_MAX_TEXT_FIELDS,
                max_part_size=_MAX_TEXT_FIELD_BYTES,
            ) as form:
                upload = _pick_upload(form.multi_items(), config)
                if upload.size is not None and upload.size > config.max_file_bytes:
                    raise Rejected(400, too_large)
                return await upload.read()
        except _BodyTooLarge:
            raise Rejected(400, too_large) from None
        except (HTTPException, MultiPartException) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else exc.message
            raise Rejected(400, f"Malformed multipart body: {detail}") from None

    async def _inspect(
        self, data: bytes, config: EmulatorConfig
    ) -> tuple[ImageInfo, Placement | None]:
        """The upload's checks (400s) and, for a full-size map, where its template goes."""
        check = partial(
            inspect_image,
            data,
            max_pixels=config.max_pixels,
            max_file_bytes=config.max_file_bytes,
            verify=config.verify_images,
            # What the checks decode, the fit need not decode again.
            keep=GRID if config.synth == "full" else 0,
        )
        if len(data) < _THREAD_THRESHOLD:
            info = check()
            if not _wants_placement(info, config):
                return info, None
            # Fitting costs milliseconds: off the event loop.
            return info, await anyio.to_thread.run_sync(_placed, data, info)
        return await anyio.to_thread.run_sync(_checked_and_placed, data, check, config)

    async def _answer(
        self,
        key: str,
        info: ImageInfo,
        placement: Placement | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        emulator = self.emulator
        config = emulator.config
        step = emulator.next_fault()
        if step != "ok":
            emulator.stats.record_fault(key, step)
        if step.isdigit() and step != "429":
            message = f"Internal server error (emulated fault {step})"
            await self._refuse(Refusal(int(step), message), key, scope, receive, send)
            return
        if step == "429":
            extra: tuple[tuple[str, str], ...] = ()
            if config.faults.retry_after is not None:
                extra = (("retry-after", f"{config.faults.retry_after:g}"),)
            refusal = Refusal(429, "Too many requests (emulated rate-limit storm)", extra)
            await self._refuse(refusal, key, scope, receive, send)
            return
        if step == "reset":
            await self._reset(scope, receive)
            return
        if step == "stall" and not await self._stall(config.faults.stall_seconds, receive):
            emulator.stats.record_abandoned(key)
            return
        latency = emulator.next_latency()
        if latency > 0:
            await anyio.sleep(latency)
        body = await self._normal_map(info, placement, config)
        left = emulator.charge(key)
        if left is None:
            message = "Insufficient credits: this api key has no credits left"
            await self._refuse(Refusal(402, message), key, scope, receive, send)
            return
        raw = [(b"content-type", b"image/jpeg")]
        if config.remaining_header:
            raw.append((b"x-remaining-credits", str(left).encode()))
        if config.consumed_header:
            raw.append((b"x-credits-consumed", str(config.cost).encode()))
        raw.append((EMULATOR_HEADER[0].encode(), EMULATOR_HEADER[1].encode()))
        emulator.stats.record_status(key, 200)
        if step == "truncate":
            await self._truncated(body, raw, scope, receive, send)
            return
        if step == "truncate-jpeg":
            body = body[: len(body) // 2]
        else:
            emulator.stats.record_success(key)
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _normal_map(
        self, info: ImageInfo, placement: Placement | None, config: EmulatorConfig
    ) -> bytes:
        if config.synth == "canned":
            width, height = config.canned_size
            placement = None
        else:
            width, height = info.width, info.height
        quality = config.jpeg_quality
        found = cached_jpeg(width, height, quality=quality, placement=placement)
        if found is not None:
            return found
        build = partial(synthetic_jpeg, width, height, quality=quality, placement=placement)
        if width * height <= _INLINE_MAP_PIXELS:
            return build()  # a few milliseconds at most: a thread hop costs more
        return await anyio.to_thread.run_sync(build)

    async def _reset(self, scope: Scope, receive: Receive) -> None:
        connection = _connection(scope)
        if connection is None:
            # In process there is no socket: raise what httpx raises when a server drops the
            # connection before answering. httpx.ASGITransport hands it to the client.
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response (emulated connection reset)"
            )
        connection.reset()
        await _wait_for_disconnect(receive)

    async def _stall(self, seconds: float, receive: Receive) -> bool:
        """Sleep ``seconds``; False when the client disconnected meanwhile."""
        with anyio.move_on_after(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
            return False
        return True

    async def _truncated(
        self,
        body: bytes,
        raw: list[tuple[bytes, bytes]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        connection = _connection(scope)
        if connection is None:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body (emulated truncation)"
            )
        connection.close()
        await _wait_for_disconnect(receive)


def _checked_and_placed(
    data: bytes, check: Callable[[], ImageInfo], config: EmulatorConfig
) -> tuple[ImageInfo, Placement | None]:
    """Blocking: the upload's checks, then (a full-size map of a large enough image) the fit."""
    info = check()
    return info, _placed(data, info) if _wants_placement(info, config) else None


def _placed(data: bytes, info: ImageInfo) -> Placement | None:
    """Blocking: the fit, from the pixels the checks kept when they did, else from the bytes."""
    if info.pixels is not None:
        return fit_placement(info.pixels, size=(info.width, info.height))
    return fit_placement(data)


def _wants_placement(info: ImageInfo, config: EmulatorConfig) -> bool:
    return config.synth == "full" and info.width * info.height >= MIN_PIXELS


def _pick_upload(items: list[tuple[str, UploadFile | str]], config: EmulatorConfig) -> UploadFile:
    """The one ``image_file`` file part, or a 400 saying what is wrong with the form."""
    uploads = [v for name, v in items if name == "image_file" and isinstance(v, UploadFile)]
    other_files = [n for n, v in items if n != "image_file" and isinstance(v, UploadFile)]
    text_fields = [name for name, value in items if not isinstance(value, UploadFile)]
    if "image_file" in text_fields:
        raise Rejected(400, "image_file must be a file upload, not a text field")
    if not uploads:
        if other_files:
            raise Rejected(
                400, f"Missing image_file (got a file part named {_quote(other_files[0])})"
            )
        raise Rejected(400, "Missing image_file: send the image as a file part named image_file")
    if len(uploads) > 1:
        raise Rejected(400, "Only one image_file may be sent")
    if other_files:
        raise Rejected(400, f"Unexpected file part {_quote(other_files[0])}: send only image_file")
    if text_fields and not config.allow_extra_fields:
        raise Rejected(400, f"Unexpected field {_quote(text_fields[0])}: send only image_file")
    return uploads[0]


def _quote(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "...")


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        return _json_error(500, "Internal server error")
    return _json_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    return _json_error(500, "Internal server error")


def build_app(emulator: EmulatorState) -> Starlette:
    """The Starlette app serving ``emulator`` (use :attr:`Emulator.app`)."""
    routes = [Route(ENDPOINT, _Endpoint(emulator), methods=["POST"])]
    if emulator.config.admin:
        routes.extend(admin_routes(emulator))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.emulator = emulator
    return app
