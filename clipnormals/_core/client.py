"""The asynchronous client: one request path shared by every endpoint and by the batch runner.

Data flow for one image: prepare (worker thread) -> credit reservation -> concurrency slot ->
limiter token -> HTTP attempt -> (retry: back to the slot) -> commit or release -> NormalMap.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import weakref
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx
from PIL import Image, UnidentifiedImageError

from .._errors import (
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
    scrub,
)
from .._images.prepare import ImageSource, PreparedImage, PrepareOptions, prepare_image
from .._normals.normalmap import NormalMap
from .._version import __version__
from .circuit import CircuitBreaker
from .config import check_base_url, resolve_api_key, resolve_base_url
from .credits import CreditHold, CreditLedger, CreditPolicy, Ledger, parse_credit_header
from .limiter import Limiter, LocalLimiter, RateLimit
from .map import MapIterator
from .results import ClientStats, _Counters
from .retry import RetryPolicy

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
        ledger: a custom :class:`Ledger` (e.g. ``clipnormals.redis.RedisLedger``, one credit
            balance and budget for many processes); default: a :class:`CreditLedger` with
            ``credits``. It carries its own policy: passing ``credits`` too is a ValueError.
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
        ledger: Ledger | None = None,
        prepare: PrepareOptions | None = None,
        flip_x: bool = False,
        flip_y: bool = False,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if ledger is not None and credits is not None:
            raise ValueError("pass credits= or ledger=, not both: a ledger has its own policy")
        self._key = _Secret(resolve_api_key(api_key))
        self._base_url = check_base_url(resolve_base_url(base_url))
        self.rate_limit = rate_limit or RateLimit()
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._limiter: Limiter = limiter or LocalLimiter(self.rate_limit)
        self._ledger: Ledger = (
            ledger if ledger is not None else CreditLedger(credits or CreditPolicy())
        )
        self._prepare = prepare or PrepareOptions()
        self._flip = (flip_x, flip_y)
        self._slots = anyio.Semaphore(max_concurrency)
        self._prep_slots = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._counters = _Counters()
        self._rate_limit_streak = 0
        self._circuit = CircuitBreaker(
            failures=self.retry.circuit_failures,
            reset=self.retry.circuit_reset,
            host=_host_label(self._base_url),
        )
        self._closed = False
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._maps: weakref.WeakSet[MapIterator[Any]] = weakref.WeakSet()
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
        """Stop every ``map`` in progress and close the connection pool.

        Idempotent. Closing from another event loop than the one the client was used in (after
        that loop ended) only marks the client closed: its connections went with that loop.
        """
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid() or (
            self._loop is not None and self._loop is not asyncio.get_running_loop()
        ):
            return
        for it in list(self._maps):
            await it.aclose()
        await self._http.aclose()

    @property
    def credits(self) -> Ledger:
        """The live credit ledger: ``remaining``, ``consumed``, ``reserved``, ``uncertain``."""
        return self._ledger

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the requests made so far."""
        return self._counters.snapshot()

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
        image: Callable[[S], ImageSource] | None = None,
        prefetch: int | None = None,
    ) -> MapIterator[S]:
        """Process many images concurrently; yield a :class:`MapItem` each, in completion order.

        Args:
            images: the sources (any :data:`ImageSource`), or objects of your own, such as jobs
                or records, with ``image`` saying where each one's image is. Sync or async
                iterable, pulled lazily.
            image: turns one element of ``images`` into its image, e.g. ``lambda job:
                job.path`` or ``operator.itemgetter(1)`` for ``(tag, image)`` pairs. Each
                item's ``source`` is then the element itself, so results come back with the
                caller's own objects.
            prefetch: sources pulled ahead of the requests in flight (default
                ``max_concurrency``).

        At most ``max_concurrency + prefetch`` sources are held at a time, whatever the number of
        images. A failed image becomes an item with ``error`` set; the iteration goes on. Use
        ``async with client.map(images) as items`` to own the work in a task group of your
        task; a bare ``async for`` works too, and leaving it (``break``, an exception) stops
        every image in progress: no upload starts for a result nobody can read.

        Raises:
            ClientClosedError: the client is closed.

        Example:
            >>> import asyncio
            >>> async def main() -> list[tuple[str, bool]]:
            ...     jobs = [("first", "a.jpg"), ("second", "b.png")]
            ...     async with AsyncClient() as client:
            ...         async with client.map(jobs, image=lambda job: job[1]) as items:
            ...             return sorted([(item.source[0], item.ok) async for item in items])
            >>> asyncio.run(main())
            [('first', True), ('second', True)]
        """
        self._check_open(bind=False)
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must not be negative")
        depth = self.max_concurrency + (self.max_concurrency if prefetch is None else prefetch)
        it: MapIterator[S] = MapIterator(
            images, depth=depth, run=self._run_item, image=image, on_close=self._maps.discard
        )
        self._maps.add(it)
        return it

    async def prepare(self, image: ImageSource, *, name: str | None = None) -> PreparedImage:
        """Prepare ``image`` for upload exactly as :meth:`surface_normals` would; send nothing.

        Uses this client's :class:`PrepareOptions` and the endpoint's limits (25,000,000 pixels,
        30,000,000 bytes, from the API's documentation), in a worker thread. Pass the result to
        :meth:`surface_normals` or :meth:`map` to upload it without preparing it again.

        Raises:
            InvalidImageError: the image cannot be sent (see :func:`prepare_image`).
            ClientClosedError: the client is closed.

        Example:
            >>> import asyncio
            >>> async def main() -> tuple[tuple[int, int], str]:
            ...     async with AsyncClient() as client:
            ...         prepared = await client.prepare("portrait.jpg")
            ...     return prepared.size, prepared.content_type
            >>> asyncio.run(main())
            ((512, 512), 'image/jpeg')
        """
        self._check_open()
        return await self._prepared(SURFACE_NORMALS, image, name)

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

    def _check_open(self, *, bind: bool = True) -> None:
        """Raise ClientClosedError unless this client may send from here; binds it to the
        running event loop on first use. Called before any I/O."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._pid != os.getpid():
            raise ClientClosedError(
                f"this client was created in process {self._pid}, and this is process "
                f"{os.getpid()} (a fork): its connections and event loop stayed with the parent. "
                "Create one client per process, after the fork"
            )
        if not bind:
            return
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            state = "has ended" if self._loop.is_closed() else "is still running elsewhere"
            raise ClientClosedError(
                "this client belongs to the event loop it was first used in, which "
                f"{state}; nothing was sent. Create the client inside the event loop that "
                "uses it (for example inside the coroutine given to asyncio.run), one per loop"
            )

    async def _run(
        self, endpoint: Endpoint, image: ImageSource, name: str | None, attempts: _Attempts
    ) -> tuple[NormalMap, int]:
        self._check_open()
        self._ledger.check()  # credits gone for good: fail before any Pillow work
        self._circuit.check()  # the server cannot be reached: likewise
        prepared = await self._prepared(endpoint, image, name)
        body, headers = await self._send_with_retries(endpoint, prepared, attempts)
        try:
            result = NormalMap(
                body,
                credits_remaining=parse_credit_header(headers, "x-remaining-credits"),
                credits_consumed=parse_credit_header(headers, "x-credits-consumed"),
                prepared=prepared,
                flip_x=self._flip[0],
                flip_y=self._flip[1],
            )
        except InvalidImageError as exc:  # the server's image, not the user's: not "invalid input"
            raise UnexpectedResponseError(
                f"200 OK but the normal map is unusable: {exc.message}",
                status_code=200,
                headers=headers,
                secret=self._key.reveal(),
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
        self, endpoint: Endpoint, prepared: PreparedImage, attempts: _Attempts
    ) -> tuple[bytes, httpx.Headers]:
        started = anyio.current_time()
        async for attempt in self.retry.retrying(clock=anyio.current_time, started=started):
            with attempt:
                return await self._attempt(endpoint, prepared, started, attempts)
            outcome = attempt.retry_state.outcome
            exc = outcome.exception() if outcome is not None else None
            if exc is not None and self.retry.is_retryable(exc):
                logger.info(
                    "%s: attempt %d failed (%s)",
                    prepared.source_name or "image",
                    attempts.count,
                    getattr(exc, "message", exc),
                )
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _attempt(
        self, endpoint: Endpoint, prepared: PreparedImage, started: float, attempts: _Attempts
    ) -> tuple[bytes, httpx.Headers]:
        """One attempt: a credit reservation, a slot, a token, then the exchange."""
        async with self._ledger.reserve() as reservation, self._slots:
            self._ledger.check_halted()
            self._circuit.check()
            await self._limiter.acquire()
            self._ledger.check_halted()
            probe = self._circuit.before_request()
            now = anyio.current_time()
            counters = self._counters
            if attempts.count:
                counters.retries += 1
            attempts.count += 1
            counters.attempts += 1
            if counters.first_attempt_at is None:
                counters.first_attempt_at = now
            counters.last_attempt_at = now
            deadline = self.retry.attempt_deadline(started, now)
            try:
                status, headers, body = await self._exchange(
                    endpoint, prepared, reservation, deadline
                )
            finally:
                if probe:
                    self._circuit.probe_done()
        counters.statuses[status] = counters.statuses.get(status, 0) + 1
        if status == 200:
            self._check_image(headers, body)
            counters.successes += 1
            self._rate_limit_streak = 0
            return body, headers
        await self._handle_error(status, headers, body)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self,
        endpoint: Endpoint,
        prepared: PreparedImage,
        reservation: CreditHold,
        deadline: float,
    ) -> tuple[int, httpx.Headers, bytes]:
        """Send the request; settle the reservation from the answer's headers, then read the
        body, all within ``deadline`` seconds.

        Errors are raised outside the ``except`` blocks that catch httpx's: an httpx exception
        holds the request, whose headers hold the key, and must not become the ``__context__``
        of anything the user sees.
        """
        request = self._http.build_request(
            "POST",
            endpoint.path,
            files={endpoint.field: (prepared.filename, prepared.data, prepared.content_type)},
            headers={"x-api-key": self._key.reveal(), "accept": endpoint.accept},
        )
        failure: APIConnectionError
        maybe_charged = True  # did the whole request possibly reach the server?
        answered = False
        try:
            with anyio.fail_after(deadline):
                response = await self._http.send(request, stream=True)
                try:
                    answered = True
                    self._circuit.connected()
                    reservation.answered(response.status_code, response.headers)
                    cap = None if response.status_code == 200 else _MAX_ERROR_BODY
                    body = await _read_body(response, cap)
                finally:
                    await response.aclose()
                return response.status_code, response.headers, body
        except TimeoutError:
            failure = APITimeoutError(
                f"no complete answer from {self._circuit.host} within {deadline:.1f}s "
                "(the attempt's deadline)"
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            detail = _describe_transport_error(exc, self._key.reveal())
            if self._circuit.connection_failed(detail):
                failure = self._circuit.open_error()  # this one opened it: stop here
            else:
                failure = APIConnectionError(f"cannot connect to {self._circuit.host}: {detail}")
            maybe_charged = False
        except (httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout) as exc:
            # The request never reached the server whole: it cannot have been charged.
            failure = _translate(exc, self._key.reveal())
            maybe_charged = False
        except httpx.TransportError as exc:
            failure = _translate(exc, self._key.reveal())
        except BaseException:
            if not answered:
                reservation.unanswered()  # cancelled while waiting: it may have been charged
            raise
        if maybe_charged and not answered:
            reservation.unanswered()
        self._counters.connection_errors += 1
        raise failure

    def _check_image(self, headers: httpx.Headers, body: bytes) -> None:
        ctype = headers.get("content-type", "")
        if not ctype.lower().startswith("image/"):
            self._counters.other_errors += 1
            raise UnexpectedResponseError(
                f"200 OK but the body is {ctype or 'untyped'}, not an image",
                status_code=200,
                body=body,
                headers=headers,
                secret=self._key.reveal(),
            )
        problem = _image_body_problem(body)
        if problem is not None:
            # Most likely cut short on the way (a proxy, a reset): worth another attempt. It
            # was charged all the same; the ledger counted it from the headers.
            self._counters.connection_errors += 1
            raise APIConnectionError(f"200 OK but the image body is unusable: {problem}")

    async def _handle_error(self, status: int, headers: httpx.Headers, body: bytes) -> None:
        error = APIStatusError.from_parts(status, headers, body, secret=self._key.reveal())
        if isinstance(error, RateLimitError):
            self._counters.rate_limited += 1
            self._rate_limit_streak += 1
            pause = self.retry.rate_limit_pause(self._rate_limit_streak, error.retry_after)
            logger.info("429 from the server: every sender pauses %.2fs", pause)
            await self._limiter.cooldown(pause)
        elif isinstance(error, ServerError):
            self._counters.server_errors += 1
        else:
            self._counters.other_errors += 1
        if isinstance(error, InsufficientCreditsError):
            self._ledger.halt(error, remaining=0)
        elif isinstance(error, PermissionDeniedError):
            self._ledger.halt(error)
        raise error


_MAX_ERROR_BODY = 64 * 1024


async def _read_body(response: httpx.Response, cap: int | None) -> bytes:
    """The body, or its first ``cap`` bytes (an error page needs no more)."""
    if cap is None:
        return await response.aread()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(chunks)[:cap]


def _describe_transport_error(exc: httpx.TransportError, secret: str) -> str:
    """httpx's message, and the operating system's reason when httpx hides it underneath
    ("All connection attempts failed" says less than "Connection refused")."""
    text = str(exc).strip() or "no detail"
    cause: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(8):  # a short chain; never a cycle
        if cause is None:
            break
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            reason = os.strerror(cause.errno) if cause.errno else str(cause.strerror)
            if reason not in text:
                text = f"{text}: {reason}"
            break
        cause = cause.__cause__ or cause.__context__
    return scrub(f"{text} ({type(exc).__name__})", secret)


def _translate(exc: httpx.TransportError, secret: str) -> APIConnectionError:
    detail = _describe_transport_error(exc, secret)
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"timed out: {detail}")
    return APIConnectionError(f"connection failed: {detail}")


def _host_label(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.host}{port}"


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
