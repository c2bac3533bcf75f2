"""When an attempt may start: the limiter's slot, taken at the last moment, and the stop signal.

**On the wire.** The server counts arrivals. Whatever passes between the moment the limiter lets
an attempt start and the moment its bytes leave (a connection or TLS set-up, a pool wait, other
tasks running on a busy event loop) moves the arrival away from the start the limiter planned:
two starts a spacing apart can arrive together, which a leaky bucket without burst refuses. So
when the transport is httpx's own (``httpx.AsyncHTTPTransport``, the default), the attempt takes
its slot through httpcore's ``trace`` request extension, on the ``send_request_headers.started``
event: after the connection is ready, right before the headers are written. Other transports
(``MockTransport``, ``ASGITransport``, wrappers) never call the hook, so the slot is taken before
the request is handed to them.

A connection held while the attempt waits for its slot sits idle, and a server closes idle
connections after a few seconds (uvicorn and Node.js 5 s): the headers would then meet a
closed socket, a broken pipe, an attempt lost. So an attempt that waited on the wire longer
than :data:`HOLD_LIMIT` keeps its slot but gives up that connection before writing anything
(:class:`ConnectionHeldTooLong`); the session sends again at once, on a connection the pool
has checked or a new one, and the slot is not waited for twice.

An attempt that fails before its headers were sent (a refused connection) took no slot and
reached no server. Should a transport send a request without calling the hook after all, the
slot is taken when the response comes back, a warning is logged once, and the session takes
its slots before sending from then on.

**Stopping.** :class:`StopSignal` is what ``AsyncClient.stop_sending`` sets: every wait of an
attempt that has not started (credits, a concurrency slot, the limiter's slot, on the wire
included) runs in a cancel scope the stop cancels, and nothing starts once it is set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from .._errors import SendingStoppedError
from .limiter import Limiter

__all__ = ["HOLD_LIMIT", "ConnectionHeldTooLong", "StartGate", "StopSignal", "calls_trace_hooks"]

logger = logging.getLogger("clipnormals")

_HEADERS_SENT = "send_request_headers.started"

#: Seconds an attempt may hold a connection while it waits for its slot before the connection
#: is given up (see the module docstring). With the pool's own idle limit (1 s), a connection
#: is never written to after more than 4 s of silence: less than the 5 s after which uvicorn
#: and Node.js close one, far less than nginx's 75 s. Waits that long only come with slow
#: quotas (60 a minute: up to ``max_concurrency`` seconds), where a new connection's set-up is
#: small beside the spacing; at high rates the slot is still taken on the connection itself.
HOLD_LIMIT = 3.0


class ConnectionHeldTooLong(Exception):
    """The slot was taken after a long wait on a connection that may have been closed since:
    send again (nothing was written)."""


def calls_trace_hooks(
    transport: httpx.AsyncBaseTransport | None, http_client: httpx.AsyncClient | None = None
) -> bool:
    """Whether requests reach httpcore, which calls the trace hook: httpx's own transport, the
    default of a client built here or of an ``http_client`` given (when it can be seen)."""
    if http_client is not None:
        transport = getattr(http_client, "_transport", None)
        return isinstance(transport, httpx.AsyncHTTPTransport)
    return transport is None or isinstance(transport, httpx.AsyncHTTPTransport)


class StopSignal:
    """Whether a client (or a view of it) may still start requests; see ``stop_sending``.

    A view's signal has the signal of the client it came from as its parent: stopping the
    client stops its views, stopping a view stops only that view. Waits for credits, a slot and
    the quota run in cancel scopes registered here, so a stop wakes every waiter at once.
    """

    __slots__ = ("_parent", "_stopped", "_waiting")

    def __init__(self, parent: StopSignal | None = None) -> None:
        self._parent = parent
        self._stopped = False
        self._waiting: set[anyio.CancelScope] = set()

    @property
    def stopped(self) -> bool:
        """True once this client or one it came from stopped sending."""
        return self._stopped or (self._parent is not None and self._parent.stopped)

    def stop(self) -> None:
        """Start no request any more; wake every request waiting to start."""
        self._stopped = True
        for scope in list(self._waiting):
            scope.cancel()

    def check(self) -> None:
        """Raise :class:`SendingStoppedError` once stopped."""
        if self.stopped:
            raise SendingStoppedError("not sent: the client stopped sending before it started")

    def interruptible(self, *, deadline: float = math.inf) -> _Interruptible:
        """A cancel scope (the context manager's value) that a stop of this signal or an
        ancestor cancels, and that ``deadline`` (the event loop's clock, seconds) ends."""
        return _Interruptible(self, deadline)


class _Interruptible:
    """See :meth:`StopSignal.interruptible` (a class, not a generator: it runs several times
    for every request)."""

    __slots__ = ("_scope", "_signals")

    def __init__(self, signal: StopSignal, deadline: float) -> None:
        signals: list[StopSignal] = []
        current: StopSignal | None = signal
        while current is not None:
            signals.append(current)
            current = current._parent
        self._signals = signals
        self._scope = anyio.CancelScope(deadline=deadline)

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope.__enter__()
        for signal in self._signals:
            signal._waiting.add(scope)
        if self._signals[0].stopped:
            scope.cancel()
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        for signal in self._signals:
            signal._waiting.discard(self._scope)
        return bool(self._scope.__exit__(exc_type, exc, tb))


class StartGate:
    """One attempt's start: the limiter's slot, taken before sending or on the wire.

    ``on_start(started)`` runs right after the slot is taken (the session checks the attempt
    may still go, and counts it); ``started`` is the start time, ``None`` before it.
    """

    __slots__ = ("_limiter", "_on_start", "_stop", "extensions", "started")

    def __init__(
        self,
        limiter: Limiter,
        on_start: Callable[[float], None],
        *,
        on_wire: bool,
        stop: StopSignal,
    ) -> None:
        self._limiter = limiter
        self._on_start = on_start
        self._stop = stop
        self.started: float | None = None
        self.extensions: dict[str, Any] = {"trace": self._trace} if on_wire else {}

    async def open(self) -> float:
        """Take the slot now (once per attempt); return the start time.

        The caller waits in a scope that a stop cancels (``StopSignal.interruptible``): the
        session's, around every wait before sending, or the hook's own on the wire.

        Raises:
            SendingStoppedError: the client stopped sending while this attempt waited.
        """
        if self.started is None:
            started = await self._limiter.acquire()
            # A task woken at the instant its scope was cancelled (its wait already over) runs
            # on until it next yields: it must not send. The slot stays used (conservative).
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._stop.check()  # woken by a stop: the slot is not used
            self._on_start(started)  # may refuse (the attempt is then not made)
            self.started = started
        return self.started

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(_HEADERS_SENT) and self.started is None:
            waiting_since = anyio.current_time()
            await self._open_interruptible()
            if anyio.current_time() - waiting_since > HOLD_LIMIT:
                raise ConnectionHeldTooLong

    async def settle(self) -> tuple[float, bool]:
        """After the response: the start time, and whether the hook had run (the slot is
        taken now when it had not)."""
        if self.started is not None:
            return self.started, True
        logger.warning(
            "the transport sent a request without calling httpcore's trace hook; "
            "rate-limit slots are taken before sending from now on"
        )
        return await self._open_interruptible(), False

    async def _open_interruptible(self) -> float:
        """:meth:`open` in a scope of its own that a stop cancels (on the wire, and late)."""
        with self._stop.interruptible():
            await self.open()
        self._stop.check()  # the stop ended the wait
        return await self.open()  # taken by now: returns at once
