"""The asynchronous client: one request path shared by every endpoint and by the batch runner.

Data flow for one image: prepare (worker thread) -> credit reservation -> concurrency slot ->
limiter token (on the wire where the transport allows, see _gate.py) -> HTTP attempt -> (retry:
back to the slot) -> commit or release -> NormalMap.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx
from PIL import Image, UnidentifiedImageError

from ._config import check_base_url, resolve_api_key, resolve_base_url
from ._credits import CreditLedger, CreditPolicy, Reservation, parse_credit_header
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    ClipnormalsError,
    InsufficientCreditsError,
    InvalidImageError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
)
from ._gate import StartGate, calls_trace_hooks
from ._limiter import Limiter, LocalLimiter, RateLimit
from ._map import MapIterator
from ._normalmap import NormalMap
from ._prepare import ImageSource, PreparedImage, PrepareOptions, prepare_image
from ._results import ClientStats, _Counters
from ._retry import RetryPolicy
from ._version import __version__

__all__ = ["AsyncClient", "Endpoint"]

logger = logging.getLogger("clipnormals")

S = TypeVar("S")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One image endpoint of the API: where it lives and what input it takes.

    The siblings of the surface-normals endpoint (depth estimation, background removal, ...)
    share its contract; describing them here keeps the request path free of any one of them.

    Example:
        >>> SURFACE_NORMALS.path
        '/portrait-surface-normals/v1'
    """

    path: str
    field: str = "image_file"
    max_pixels: int = 25_000_000
    max_bytes: int = 30_000_000
    accept: str = "image/jpeg"


SURFACE_NORMALS = Endpoint(path="/portrait-surface-normals/v1")


class _Secret:
    """Holds the API key; its repr and str never show it (tracebacks with locals included)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


@dataclass(slots=True)
class _Attempts:
    count: int = 0


class AsyncClient:
    """Asynchronous client for the Clipdrop Portrait Surface Normals API.

    Stays under the rate limit, retries transient failures, tracks credits from the response
    headers and refuses to send what the account or the budget cannot pay for.

    Args:
        api_key: the key; ``None`` reads ``CLIPDROP_API_KEY``. Missing: AuthenticationError now.
        base_url: the API root; ``None`` reads ``CLIPDROP_BASE_URL``, else the public API.
            Plain ``http://`` is refused except for a loopback host (an emulator).
        rate_limit: the quota to stay under.
        max_concurrency: requests in flight at most.
        retry: the retry policy.
        credits: the credit reserve and budget.
        timeout: seconds for each attempt's connect, write, read (a float or an httpx.Timeout).
        transport: an httpx async transport (``httpx.MockTransport``, ``httpx.ASGITransport``, ...).
        limiter: a custom :class:`Limiter` (e.g. one shared through Redis); default: in-process.
        prepare: image preparation options (``PrepareOptions(strict=True)`` never downscales).
        flip_x, flip_y: negate the decoded X / Y components of every normal map.

    Example:
        >>> async def main() -> None:
        ...     async with AsyncClient() as client:
        ...         nm = await client.surface_normals("portrait.jpg")
        ...         print(nm.normals.shape, client.credits.remaining)
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        rate_limit: RateLimit | None = None,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        credits: CreditPolicy | None = None,
        timeout: float | httpx.Timeout = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        prepare: PrepareOptions | None = None,
        flip_x: bool = False,
        flip_y: bool = False,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._key = _Secret(resolve_api_key(api_key))
        self._base_url = check_base_url(resolve_base_url(base_url))
        self.rate_limit = rate_limit or RateLimit()
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._limiter: Limiter = limiter or LocalLimiter(self.rate_limit)
        self._slot_on_wire = calls_trace_hooks(transport)  # see _gate.py
        self._ledger = CreditLedger(credits or CreditPolicy())
        self._prepare = prepare or PrepareOptions()
        self._flip = (flip_x, flip_y)
        self._slots = anyio.Semaphore(max_concurrency)
        self._prep_slots = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._counters = _Counters()
        self._rate_limit_streak = 0
        self._closed = False
        self._maps: set[MapIterator[Any]] = set()
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            transport=transport,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            headers={"user-agent": f"clipnormals/{__version__}"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return (
            f"AsyncClient(base_url={str(self._base_url)!r}, api_key='***', "
            f"rate_limit={self.rate_limit!r}, max_concurrency={self.max_concurrency})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every ``map`` in progress and close the connection pool."""
        self._closed = True
        for it in list(self._maps):
            await it.aclose()
        await self._http.aclose()

    @property
    def credits(self) -> CreditLedger:
        """The live credit ledger: ``remaining``, ``consumed``, ``reserved``."""
        return self._ledger

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the requests made so far."""
        return self._counters.snapshot(learned=self._limiter.learned)

    @property
    def halted(self) -> bool:
        """True after a 402 or 403: every later call fails without I/O."""
        return self._ledger.halted

    async def surface_normals(self, image: ImageSource, *, name: str | None = None) -> NormalMap:
        """Turn one portrait into a surface-normal map.

        Args:
            image: a path, bytes, a binary file object, a PIL image, a numpy array or a
                :class:`PreparedImage`.
            name: a file name for error messages when ``image`` has none.

        Raises:
            InvalidImageError: rejected before upload; nothing sent, nothing reserved.
            CreditBudgetError: the reserve or budget was reached; nothing sent.
            APIStatusError: the server refused it (after retries, for 429 and 5xx).
            APIConnectionError: the server could not be reached (after retries).
        """
        result, _ = await self._run(SURFACE_NORMALS, image, name, _Attempts())
        return result

    def map(
        self,
        images: Iterable[S] | AsyncIterable[S],
        *,
        prefetch: int | None = None,
    ) -> MapIterator[S]:
        """Process many images concurrently; yield a :class:`MapItem` each, in completion order.

        Sources are pulled lazily: at most ``max_concurrency + prefetch`` are held at a time,
        whatever the number of images. A failed image becomes an item with ``error`` set; the
        iteration goes on. Use it as ``async for item in client.map(images)`` or, to stop early
        and release everything at once, ``async with client.map(images) as items``.
        """
        self._check_open()
        depth = self.max_concurrency + (self.max_concurrency if prefetch is None else prefetch)
        it: MapIterator[S] = MapIterator(
            images, depth=depth, run=self._run_item, on_close=self._maps.discard
        )
        self._maps.add(it)
        return it

    async def _run_item(self, image: Any) -> tuple[NormalMap, int] | tuple[ClipnormalsError, int]:
        attempts = _Attempts()
        try:
            return await self._run(SURFACE_NORMALS, image, None, attempts)
        except ClipnormalsError as exc:
            return exc, attempts.count
        except Exception as exc:  # a bug must not sink a batch of thousands
            logger.exception("unexpected error while processing an image")
            error = ClipnormalsError(f"unexpected {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error, attempts.count

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed")

    async def _run(
        self, endpoint: Endpoint, image: ImageSource, name: str | None, attempts: _Attempts
    ) -> tuple[NormalMap, int]:
        self._check_open()
        self._ledger.check()  # credits gone for good: fail before any Pillow work
        prepared = await self._prepared(endpoint, image, name)
        async with self._ledger.reserve() as reservation:
            response = await self._send_with_retries(endpoint, prepared, reservation, attempts)
        consumed = parse_credit_header(response.headers, "x-credits-consumed")
        remaining = parse_credit_header(response.headers, "x-remaining-credits")
        try:
            result = NormalMap(
                response.content,
                credits_remaining=remaining,
                credits_consumed=consumed,
                prepared=prepared,
                flip_x=self._flip[0],
                flip_y=self._flip[1],
            )
        except InvalidImageError as exc:  # the server's image, not the user's: not "invalid input"
            raise UnexpectedResponseError(
                f"200 OK but the normal map is unusable: {exc.message}",
                status_code=200,
                headers=response.headers,
            ) from exc
        return result, attempts.count

    async def _prepared(
        self, endpoint: Endpoint, image: ImageSource, name: str | None
    ) -> PreparedImage:
        options = replace(
            self._prepare,
            max_pixels=min(self._prepare.max_pixels, endpoint.max_pixels),
            max_bytes=min(self._prepare.max_bytes, endpoint.max_bytes),
        )
        if isinstance(image, PreparedImage):
            # Prepared elsewhere (the batch runner does): check it against this endpoint.
            width, height = image.size
            if width * height > options.max_pixels or len(image.data) > options.max_bytes:
                raise InvalidImageError(
                    f"{image.source_name or 'prepared image'}: {width}x{height}, "
                    f"{len(image.data)} bytes is over this endpoint's limits "
                    f"({options.max_pixels} pixels, {options.max_bytes} bytes)"
                )
            return image
        return await anyio.to_thread.run_sync(
            partial(prepare_image, image, options=options, name=name), limiter=self._prep_slots
        )

    async def _send_with_retries(
        self,
        endpoint: Endpoint,
        prepared: PreparedImage,
        reservation: Reservation,
        attempts: _Attempts,
    ) -> httpx.Response:
        async for attempt in self.retry.retrying(clock=anyio.current_time):
            with attempt:
                if attempts.count:
                    self._counters.retries += 1
                attempts.count += 1
                response = await self._attempt(endpoint, prepared)
                reservation.commit(
                    parse_credit_header(response.headers, "x-credits-consumed"),
                    parse_credit_header(response.headers, "x-remaining-credits"),
                )
                return response
            outcome = attempt.retry_state.outcome
            exc = outcome.exception() if outcome is not None else None
            if exc is not None and self.retry.is_retryable(exc):
                logger.info(
                    "%s: attempt %d failed (%s); at most %d attempts",
                    prepared.source_name or "image",
                    attempts.count,
                    getattr(exc, "message", exc),
                    self.retry.attempts,
                )
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _started(self, now: float) -> None:
        self._ledger.check_halted()
        counters = self._counters
        counters.attempts += 1
        if counters.first_attempt_at is None:
            counters.first_attempt_at = now
        counters.last_attempt_at = now

    async def _attempt(self, endpoint: Endpoint, prepared: PreparedImage) -> httpx.Response:
        counters = self._counters
        async with self._slots:
            self._ledger.check_halted()
            gate = StartGate(self._limiter, self._started, on_wire=self._slot_on_wire)
            if not self._slot_on_wire:
                await gate.open()
            try:
                response = await self._http.post(
                    endpoint.path,
                    files={
                        endpoint.field: (prepared.filename, prepared.data, prepared.content_type)
                    },
                    headers={"x-api-key": self._key.reveal(), "accept": endpoint.accept},
                    extensions=gate.extensions,
                )
            # The httpx exception is not chained: its message and its request's headers are not
            # ours to vet, and a chained exception is printed with every traceback.
            except httpx.TimeoutException as exc:
                counters.connection_errors += 1
                raise APITimeoutError(
                    self._scrub(f"timed out: {type(exc).__name__}: {exc}")
                ) from None
            except httpx.TransportError as exc:
                counters.connection_errors += 1
                raise APIConnectionError(
                    self._scrub(f"connection failed: {type(exc).__name__}: {exc}")
                ) from None
            if gate.started is None:
                self._slot_on_wire = False
            now = await gate.settle()
        counters.statuses[response.status_code] = counters.statuses.get(response.status_code, 0) + 1
        if response.status_code != 429:
            await self._limiter.admitted(started=now)
        if response.status_code == 200:
            self._check_image(response)
            counters.successes += 1
            self._rate_limit_streak = 0
            return response
        await self._handle_error(response, started=now)
        raise AssertionError("unreachable")  # pragma: no cover

    def _scrub(self, text: str) -> str:
        return text.replace(self._key.reveal(), "***")

    def _check_image(self, response: httpx.Response) -> None:
        ctype = response.headers.get("content-type", "")
        if not ctype.lower().startswith("image/"):
            self._counters.other_errors += 1
            raise UnexpectedResponseError(
                f"200 OK but the body is {ctype or 'untyped'}, not an image",
                status_code=200,
                body=response.content[:4096],
                headers=response.headers,
            )
        problem = _image_body_problem(response.content)
        if problem is not None:
            # Most likely cut short on the way (a proxy, a reset): worth another attempt.
            self._counters.connection_errors += 1
            raise APIConnectionError(f"200 OK but the image body is unusable: {problem}")

    async def _handle_error(self, response: httpx.Response, *, started: float) -> None:
        error = APIStatusError.from_response(response, secret=self._key.reveal())
        self._ledger.observe(parse_credit_header(response.headers, "x-remaining-credits"))
        if isinstance(error, RateLimitError):
            self._counters.rate_limited += 1
            self._rate_limit_streak += 1
            pause = self.retry.rate_limit_pause(self._rate_limit_streak, error.retry_after)
            logger.warning("429 from the server: every sender pauses %.2fs", pause)
            await self._limiter.rate_limited(
                started=started, pause=pause, retry_after=error.retry_after
            )
        elif isinstance(error, ServerError):
            self._counters.server_errors += 1
        else:
            self._counters.other_errors += 1
        if isinstance(error, InsufficientCreditsError):
            self._ledger.halt(error, remaining=0)
        elif isinstance(error, PermissionDeniedError):
            self._ledger.halt(error)
        raise error


def _image_body_problem(body: bytes) -> str | None:
    """Why ``body`` is not a complete image, or None. Reads headers only; no full decode."""
    if not body:
        return "empty body"
    try:
        with Image.open(io.BytesIO(body)) as im:
            fmt = im.format
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"not a decodable image ({exc})"
    except Image.DecompressionBombError:  # pragma: no cover - size is bounded by the upload
        return "image too large to decode"
    if fmt == "JPEG" and not body.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return "JPEG without its end marker (truncated)"
    if fmt == "PNG" and b"IEND" not in body[-16:]:
        return "PNG without its end chunk (truncated)"
    return None
