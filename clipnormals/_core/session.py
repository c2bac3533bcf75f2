"""The request path every image takes, and the machinery one client shares with its views.

A :class:`Session` owns what must be one per API key and connection pool: the limiter, the
credit ledger, the concurrency slots, the circuit breaker, the counters, the telemetry, the
httpx client, and the binding to one event loop and one process. ``AsyncClient`` and the
clients :meth:`~clipnormals.AsyncClient.with_options` derives from it hold the same session
with their own per-call settings (retry policy, timeouts).

One image: the retry loop (``send``) runs attempts; each attempt (``_attempt``) reserves its
credits, takes a concurrency slot and a limiter token, and makes the exchange
(``_exchange``): the request, then the answer's status line and headers, which settle the
credit reservation at once, then the body, all under the attempt's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    InsufficientCreditsError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
    scrubber,
)
from .circuit import CircuitBreaker
from .credits import CreditHold, Ledger
from .gate import ConnectionHeldTooLong, StartGate, StopSignal
from .http import (
    INLINE_UPLOAD_BYTES,
    MAX_MAP_BYTES,
    AnswerTooLargeError,
    ImageHeader,
    describe_transport_error,
    host_label,
    multipart_upload,
    read_body,
    read_image_body,
    translate,
)
from .limiter import Limiter
from .results import _Counters
from .retry import RetryPolicy
from .telemetry import ImageSpan, Telemetry

if TYPE_CHECKING:
    from .._images.prepare import PreparedImage
    from .map import MapIterator

__all__ = ["Attempts", "Endpoint", "Session", "StopSignal"]

logger = logging.getLogger("clipnormals")

_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One image endpoint of the API: where it lives and what input it takes.

    The siblings of the surface-normals endpoint (depth estimation, background removal, ...)
    share its contract (docs/api-contract.md); describing them here keeps the request path free
    of any one of them. Limits from the API's documentation: 25,000,000 pixels, 30,000,000
    bytes.

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


@dataclass(slots=True)
class Attempts:
    """HTTP attempts made for one image so far, and when the first one started."""

    count: int = 0
    first_started: float | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    """An endpoint's URL and the headers of every upload to it.

    ``extra`` (the key and ``accept``) goes to ``build_request`` with each upload; ``merged``,
    for the session's own httpx client only, is its headers with ``extra`` already applied, so
    a small upload is assembled without merging them again.
    """

    url: httpx.URL
    extra: dict[str, str] = field(repr=False)
    merged: httpx.Headers | None = field(repr=False)


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


class _AttemptState:
    """What one attempt's start decided, shared by the gate's callback and the exchange."""

    __slots__ = ("budget_end", "deadline", "last_error", "probe", "scope", "waiting_since")

    def __init__(
        self,
        *,
        waiting_since: float,
        budget_end: float = math.inf,
        last_error: BaseException | None = None,
    ) -> None:
        self.waiting_since = waiting_since
        self.budget_end = budget_end  # when the image's RetryPolicy.total runs out (a retry)
        self.last_error = last_error  # what the retry follows
        self.deadline = math.inf
        self.probe = False
        self.scope: anyio.CancelScope | None = None


class Session:
    """The shared machinery of one client and the views derived from it."""

    __slots__ = (
        "__weakref__",
        "base_url",
        "circuit",
        "closed",
        "counters",
        "http",
        "key",
        "ledger",
        "limiter",
        "loop",
        "maps",
        "owns_http",
        "pid",
        "prep_slots",
        "rate_limit_streak",
        "routes",
        "scrub",
        "slot_on_wire",
        "slots",
        "telemetry",
    )

    def __init__(
        self,
        *,
        key: str,
        base_url: httpx.URL,
        http: httpx.AsyncClient,
        owns_http: bool,
        limiter: Limiter,
        ledger: Ledger,
        max_concurrency: int,
        retry: RetryPolicy,
        slot_on_wire: bool = False,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self.key = _Secret(key)
        self.scrub = scrubber(key)  # the key's forms worked out once, for every answer
        self.base_url = base_url
        self.http = http
        self.owns_http = owns_http
        self.limiter = limiter
        self.slot_on_wire = slot_on_wire  # see gate.py
        self.ledger = ledger
        # asyncio's semaphore: a free slot is taken without anyio's look-up of the running
        # library (the client runs on asyncio only); a cancellation still ends a wait.
        self.slots = asyncio.Semaphore(max_concurrency)
        self.prep_slots = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self.counters = _Counters()
        self.rate_limit_streak = 0
        self.circuit = CircuitBreaker(
            failures=retry.circuit_failures, reset=retry.circuit_reset, host=host_label(base_url)
        )
        self.telemetry = Telemetry(
            host=self.circuit.host,
            ledger=ledger,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self.closed = False
        self.pid = os.getpid()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.maps: weakref.WeakSet[MapIterator[Any]] = weakref.WeakSet()
        self.routes: dict[str, _Route] = {}  # per endpoint path, made at its first upload

    # -- binding -------------------------------------------------------------------------

    def check_open(self, *, bind: bool = True) -> None:
        """Raise ClientClosedError unless the client may send from here; binds it to the
        running event loop on first use. Called before any I/O."""
        if self.closed:
            raise ClientClosedError("the client is closed")
        if self.pid != os.getpid():
            raise ClientClosedError(
                f"this client was created in process {self.pid}, and this is process "
                f"{os.getpid()} (a fork): its connections and event loop stayed with the parent. "
                "Create one client per process, after the fork"
            )
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # map() is a plain function: it may be called outside a loop
            running = None
        bound = self.loop
        if bound is None:
            if bind and running is not None:
                self.loop = running
            return
        if running is bound or (running is None and not bound.is_closed()):
            return
        state = "has ended" if bound.is_closed() else "is still running elsewhere"
        raise ClientClosedError(
            "this client belongs to the event loop it was first used in, which "
            f"{state}; nothing was sent. Create the client inside the event loop that "
            "uses it (for example inside the coroutine given to asyncio.run), one per loop"
        )

    async def aclose(self) -> None:
        """Stop every ``map`` in progress and close the connection pool if it is ours.

        Idempotent. From another event loop than the one the client was used in (after that
        loop ended), or in a forked child, it only marks the client closed: its connections
        went with that loop or stayed with the parent.
        """
        if self.closed:
            return
        self.closed = True
        if self.pid != os.getpid() or (
            self.loop is not None and self.loop is not asyncio.get_running_loop()
        ):
            return
        for it in list(self.maps):
            await it.abort(
                ClientClosedError(
                    "the client was closed while this map ran: the sources after the "
                    f"{it.delivered} items delivered were not processed"
                )
            )
        if self.owns_http:
            await self.http.aclose()

    # -- one image -----------------------------------------------------------------------

    async def send(
        self,
        endpoint: Endpoint,
        prepared: PreparedImage,
        *,
        retry: RetryPolicy,
        http_timeout: httpx.Timeout | None,
        attempts: Attempts,
        stop: StopSignal,
    ) -> tuple[bytes, httpx.Headers, ImageHeader]:
        """Upload ``prepared`` until an answer is a normal map or the retry policy gives up;
        returns the body and headers of the 200, and its image's header."""
        last_error: BaseException | None = None
        with self.telemetry.image() as span:
            # The first attempt runs outside tenacity: most succeed, and then no retry loop is
            # built. A failure is replayed as the loop's first attempt, so the loop decides
            # about it (retry or not, the wait, the stop) exactly as if it had made it.
            first_failure: Exception | None = None
            try:
                return await self._attempt(
                    endpoint, prepared, retry, http_timeout, attempts, span, stop, None
                )
            except Exception as exc:
                first_failure = exc
            retrying = retry.retrying(
                clock=anyio.current_time, started=lambda: attempts.first_started
            )
            async for attempt in retrying:
                with attempt:
                    if first_failure is not None:
                        replayed, first_failure = first_failure, None
                        raise replayed
                    return await self._attempt(
                        endpoint, prepared, retry, http_timeout, attempts, span, stop, last_error
                    )
                outcome = attempt.retry_state.outcome
                exc = outcome.exception() if outcome is not None else None
                last_error = exc
                if exc is not None and retry.is_retryable(exc):
                    logger.info(
                        "%s: attempt %d failed (%s)",
                        prepared.source_name or "image",
                        attempts.count,
                        getattr(exc, "message", exc),
                    )
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _attempt(
        self,
        endpoint: Endpoint,
        prepared: PreparedImage,
        retry: RetryPolicy,
        http_timeout: httpx.Timeout | None,
        attempts: Attempts,
        span: ImageSpan,
        stop: StopSignal,
        last_error: BaseException | None,
    ) -> tuple[bytes, httpx.Headers, ImageHeader]:
        """One attempt: a credit reservation, a concurrency slot, the limiter's slot (on the
        wire when the transport allows: see ``gate``), then the exchange.

        Every wait runs in a scope a stop cancels: a stopped client starts nothing, and its
        waiters give back what they hold.
        """
        # A retry waits (for credits, a concurrency slot, the limiter's slot: a shared 429
        # pause, say) no longer than the image's total: then it is not made, and the last
        # error stands.
        first_started = attempts.first_started
        budget_end = (
            math.inf if first_started is None or last_error is None else first_started + retry.total
        )
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as held:
            state = _AttemptState(
                waiting_since=loop.time(), budget_end=budget_end, last_error=last_error
            )

            def on_start(started: float) -> None:
                # The limiter's slot is taken: this attempt starts now, unless it may not.
                self.ledger.check_halted()
                first = attempts.first_started if attempts.first_started is not None else started
                deadline = retry.attempt_deadline(first, started)
                if deadline <= 0 and last_error is not None:
                    # ``total`` ran out while this retry waited for the quota: it is not made.
                    raise last_error
                state.probe = self.circuit.before_request()
                attempts.first_started = first
                state.deadline = deadline
                if state.scope is not None:
                    state.scope.deadline = started + deadline
                self.telemetry.attempt(
                    span, retry=attempts.count > 0, waited=started - state.waiting_since
                )
                counters = self.counters
                if attempts.count:
                    counters.retries += 1
                attempts.count += 1
                counters.attempts += 1
                if counters.first_attempt_at is None:
                    counters.first_attempt_at = started
                counters.last_attempt_at = started

            try:
                # One scope for every wait before sending: a stop or the image's total ends it.
                with stop.interruptible(deadline=budget_end) as waiting:
                    reservation = await held.enter_async_context(self.ledger.reserve())
                    await held.enter_async_context(self.slots)
                    stop.check()
                    self.ledger.check_halted()
                    self.circuit.check()
                    state.waiting_since = loop.time()
                    # Made now, not before the waits: an answer that came meanwhile may have
                    # shown that the transport never takes slots on the wire.
                    gate = StartGate(self.limiter, on_start, on_wire=self.slot_on_wire, stop=stop)
                    if not gate.extensions:  # not on the wire: the slot is taken before sending
                        await gate.open()
                # A stop's cancellation ends in that scope; a cancellation from outside goes on.
                stop.check()
                if waiting.cancelled_caught and last_error is not None:
                    raise last_error  # the image's total ran out while this retry waited
                status, headers, body = await self._exchange(
                    endpoint, prepared, reservation, state, gate, http_timeout, span
                )
            finally:
                if state.probe:
                    self.circuit.probe_done()
        started = gate.started if gate.started is not None else state.waiting_since
        span.answered(status, headers)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s: %s %s -> %d in %.3fs (attempt %d)",
                prepared.source_name or "image",
                "POST",
                endpoint.path,
                status,
                asyncio.get_running_loop().time() - started,
                attempts.count,
            )
        counters = self.counters
        counters.statuses[status] = counters.statuses.get(status, 0) + 1
        if status != 429:
            await self.limiter.admitted(started=started)
        if status == 200:
            image = self._check_image(headers, body)
            self.circuit.succeeded()
            counters.successes += 1
            self.rate_limit_streak = 0
            return body, headers, image
        await self._handle_error(status, headers, body, retry, endpoint, started)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self,
        endpoint: Endpoint,
        prepared: PreparedImage,
        reservation: CreditHold,
        state: _AttemptState,
        gate: StartGate,
        http_timeout: httpx.Timeout | None,
        span: ImageSpan,
    ) -> tuple[int, httpx.Headers, bytes]:
        """Send the request; settle the reservation from the answer's headers, then read the
        body, all before the attempt's deadline (counted from its start: the wait for the
        limiter's slot on the wire is not part of it).

        Errors are raised outside the ``except`` blocks that catch httpx's: an httpx exception
        holds the request, whose headers hold the key, and must not become the ``__context__``
        of anything the user sees.
        """
        request = self._request(endpoint, prepared, http_timeout, gate.extensions)
        failure: APIConnectionError | UnexpectedResponseError | ClientClosedError
        maybe_charged = True  # did the whole request possibly reach the server?
        answered = False
        scope = state.scope = anyio.CancelScope(
            deadline=state.budget_end if gate.started is None else gate.started + state.deadline
        )
        try:
            with scope:
                # Never a redirect, even through an http_client that follows them: httpx would
                # carry the key header to wherever the server points.
                try:
                    response = await self.http.send(request, stream=True, follow_redirects=False)
                except ConnectionHeldTooLong:
                    # The slot is taken; the connection, idle all that time, is given up.
                    response = await self.http.send(request, stream=True, follow_redirects=False)
                try:
                    answered = True
                    _started, hooked = await gate.settle()
                    if not hooked:
                        self.slot_on_wire = False
                    self.circuit.connected()
                    spent = reservation.answered(response.status_code, response.headers)
                    span.charged(spent)
                    self.telemetry.outcome(status=response.status_code, error=None)
                    if response.status_code == 200:
                        body = await read_body(response, MAX_MAP_BYTES, truncate=False)
                    else:
                        body = await read_body(response, _MAX_ERROR_BODY, truncate=True)
                finally:
                    await response.aclose()
                return response.status_code, response.headers, body
            # Only the attempt's own deadline ends up here (its scope caught the cancellation).
            if gate.started is None and state.last_error is not None:
                # Still waiting on the wire for its slot when the image's total ran out: this
                # retry is not made (nothing was written), and the last error stands.
                raise state.last_error
            failure = APITimeoutError(
                f"no complete answer from {self.circuit.host} within {state.deadline:.1f}s "
                "(the attempt's deadline)"
            )
            if self.circuit.answer_failed(failure.message):
                failure = self.circuit.open_error()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            detail = describe_transport_error(exc, self.key.reveal())
            if self.circuit.connection_failed(detail):
                failure = self.circuit.open_error()  # this one opened it: stop here
            else:
                failure = APIConnectionError(f"cannot connect to {self.circuit.host}: {detail}")
            maybe_charged = False
        except (httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout) as exc:
            # The request never reached the server whole: it cannot have been charged.
            failure = translate(exc, self.key.reveal())
            maybe_charged = False
        except httpx.TransportError as exc:
            failure = translate(exc, self.key.reveal())
            if self.circuit.answer_failed(failure.message):  # reached, then nothing usable
                failure = self.circuit.open_error()
        except AnswerTooLargeError as exc:
            failure = UnexpectedResponseError(
                f"{exc} (a broken proxy, or not the API)", status_code=200, headers={}
            )
        except httpx.RequestError as exc:
            # Anything else httpx raises while reading (a body its content-encoding cannot
            # decode, say): not chained either.
            failure = translate(exc, self.key.reveal())
        except RuntimeError:
            if not self.http.is_closed:
                raise
            # httpx refuses to send through a closed client: closed while this one waited.
            failure = ClientClosedError("the client was closed before this request was sent")
            maybe_charged = False
        except BaseException:
            if not answered and gate.started is not None:
                reservation.unanswered()  # cancelled while waiting: it may have been charged
            raise
        if not answered and gate.started is None:
            maybe_charged = False  # the headers never left: nothing reached the server
        if maybe_charged and not answered:
            reservation.unanswered()
        if not answered:
            self.telemetry.outcome(status=None, error=type(failure).__name__)
        self.counters.connection_errors += 1
        raise failure

    def _request(
        self,
        endpoint: Endpoint,
        prepared: PreparedImage,
        http_timeout: httpx.Timeout | None,
        extensions: dict[str, Any],
    ) -> httpx.Request:
        """The upload of ``prepared`` to ``endpoint``: what ``http.build_request`` makes of it.

        An upload of at most ``INLINE_UPLOAD_BYTES`` is one multipart body built here; through
        the httpx client built for this session (no cookies, query parameters or auth of its
        own, see ``http.build_http_client``), the request is assembled directly from headers
        merged once per endpoint, which ``build_request`` would merge again for every request
        (about a tenth of a bare request's CPU). Anything else goes through ``build_request``.
        """
        route = self._route(endpoint)
        timeout = self.http.timeout if http_timeout is None else http_timeout
        data = prepared.data
        small = len(data) <= INLINE_UPLOAD_BYTES
        if small:
            content_type, body = multipart_upload(
                endpoint.field, prepared.filename, prepared.content_type, data
            )
            if route.merged is not None:
                headers = route.merged.copy()
                headers["content-type"] = content_type
                return httpx.Request(
                    "POST",
                    route.url,
                    headers=headers,
                    content=body,
                    extensions={**extensions, "timeout": timeout.as_dict()},
                )
        # httpx replaces a URL's query with the client's own parameters (an http_client's
        # params=): given as parameters, the base URL's (a gateway's ?code=...) are kept too.
        params = route.url.params if route.url.query and self.http.params else None
        return self.http.build_request(
            "POST",
            route.url,
            params=params,
            content=body if small else None,
            files=None
            if small
            else {endpoint.field: (prepared.filename, data, prepared.content_type)},
            headers={**route.extra, "content-type": content_type} if small else route.extra,
            timeout=timeout,
            extensions=extensions,
        )

    def _route(self, endpoint: Endpoint) -> _Route:
        route = self.routes.get(endpoint.path)
        if route is None:
            extra = {"x-api-key": self.key.reveal(), "accept": endpoint.accept}
            merged = None
            if self.owns_http:  # nothing can change this client's headers later
                merged = self.http.headers.copy()
                merged.update(extra)
            url = _endpoint_url(self.base_url, endpoint.path)
            route = self.routes[endpoint.path] = _Route(url, extra, merged)
        return route

    def _check_image(self, headers: httpx.Headers, body: bytes) -> ImageHeader:
        ctype = headers.get("content-type", "")
        if not ctype.lower().startswith("image/"):
            self.counters.other_errors += 1
            raise UnexpectedResponseError(
                f"200 OK but the body is {ctype or 'untyped'}, not an image",
                status_code=200,
                body=body,
                headers=headers,
                secret=self.key.reveal(),
            )
        found = read_image_body(body)
        if isinstance(found, str):
            # Most likely cut short on the way (a proxy, a reset): worth another attempt. It
            # was charged all the same; the ledger counted it from the headers.
            self.counters.connection_errors += 1
            message = f"200 OK but the image body is unusable: {found}"
            if self.circuit.answer_failed(message):
                raise self.circuit.open_error()
            raise APIConnectionError(message)
        return found

    async def _handle_error(
        self,
        status: int,
        headers: httpx.Headers,
        body: bytes,
        retry: RetryPolicy,
        endpoint: Endpoint,
        started: float,
    ) -> None:
        url = str(_endpoint_url(self.base_url, endpoint.path).copy_with(query=None))
        error = APIStatusError.from_parts(status, headers, body, secret=self.key.reveal(), url=url)
        if isinstance(error, RateLimitError):
            self.counters.rate_limited += 1
            self.rate_limit_streak += 1
            pause = retry.rate_limit_pause(self.rate_limit_streak, error.retry_after)
            logger.info("429 from the server: every sender pauses %.2fs", pause)
            await self.limiter.rate_limited(
                started=started, pause=pause, retry_after=error.retry_after
            )
        elif isinstance(error, ServerError):
            self.counters.server_errors += 1
            self.circuit.answer_failed(error.message)
        else:
            self.counters.other_errors += 1
            self.circuit.succeeded()  # the server is there and answering
        if isinstance(error, InsufficientCreditsError):
            self.ledger.halt(error, remaining=0)
        elif isinstance(error, PermissionDeniedError):
            self.ledger.halt(error)
        raise error


@functools.lru_cache(maxsize=64)
def _endpoint_url(base: httpx.URL, path: str) -> httpx.URL:
    """``path`` under ``base``, keeping a path prefix and a query the base may have (a
    gateway's ``?code=...``). Cached: parsing a URL costs more than a request's multipart body
    (``httpx.URL`` is immutable and hashable)."""
    return base.copy_with(path=base.path.rstrip("/") + path)
