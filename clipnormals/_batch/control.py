"""Stopping a run from outside (:class:`BatchControl`), and the gate that makes a stop immediate.

A graceful stop means: no request starts after it, the requests already sent finish and are
recorded. The runner stops handing images to the client at once, but images it handed over
earlier may still be waiting inside the client, for a preparation thread or for a token of the
rate limiter; without help they would go out one by one as tokens come. :meth:`BatchControl.gate`
wraps the client's limiter: once the run stops, every waiter (and every retry) is refused with
:class:`SendingStoppedError` before its request starts, and the batch records it ``not_sent``.
The ``clipnormals`` command always builds its client with the gate; a Python program gets the
same by passing ``limiter=control.gate(LocalLimiter(rate))`` to its client.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from .._core.limiter import Limiter
from .errors import SendingStoppedError

__all__ = ["BatchControl", "StopGate"]


class StopGate:
    """A :class:`Limiter` that lets requests start until :meth:`close`, then refuses them.

    ``acquire`` waits on the wrapped limiter; when the gate closes, every waiter is woken and
    refused with :class:`SendingStoppedError`, and so is every later call. A token the wrapped
    limiter handed out at the instant the gate closed is simply not used.

    Example:
        >>> from clipnormals import LocalLimiter, RateLimit
        >>> gate = StopGate(LocalLimiter(RateLimit()))
        >>> gate.close(); gate.closed
        True
    """

    __slots__ = ("_inner", "_waiting", "closed")

    def __init__(self, inner: Limiter) -> None:
        self._inner = inner
        self._waiting: set[anyio.CancelScope] = set()
        self.closed = False

    @property
    def inner(self) -> Limiter:
        """The wrapped limiter."""
        return self._inner

    async def acquire(self) -> None:
        """Wait for the wrapped limiter; raise :class:`SendingStoppedError` once closed."""
        self._refuse_if_closed()
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                await self._inner.acquire()
            finally:
                self._waiting.discard(scope)
        # Checked after the wait whether or not this waiter was woken by close(): no request
        # starts once the gate is closed.
        self._refuse_if_closed()

    async def cooldown(self, seconds: float) -> None:
        """Pass the pause on to the wrapped limiter."""
        await self._inner.cooldown(seconds)

    def close(self) -> None:
        """Refuse every request that has not started yet, now and later."""
        self.closed = True
        for scope in list(self._waiting):
            scope.cancel()

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise SendingStoppedError("not sent: the run stopped before this request started")

    def __getattr__(self, name: str) -> object:
        # Whatever else the wrapped limiter offers (cooldown_remaining, aclose...).
        return getattr(self._inner, name)


class BatchControl:
    """Stops a running batch from outside: a signal handler, a timer, another task.

    :meth:`stop` is graceful: no image is handed to the client any more, and with a client
    built with :meth:`gate` no request starts any more either; the requests already sent finish
    and are recorded, and every other image is recorded ``not_sent``. :meth:`abort` cancels
    everything at once; the manifest stays valid (records are whole lines, written after
    their outputs), every image still gets a record, but answers in flight are lost.

    Example:
        >>> control = BatchControl()
        >>> control.stop()
        >>> control.stop_requested
        True
    """

    __slots__ = ("_gates", "_on_abort", "_on_stop", "abort_requested", "stop_requested")

    def __init__(self) -> None:
        self.stop_requested = False
        self.abort_requested = False
        self._gates: list[StopGate] = []
        self._on_stop: Callable[[], None] | None = None
        self._on_abort: Callable[[], None] | None = None

    def gate(self, limiter: Limiter) -> StopGate:
        """Wrap the limiter of the client the batch will use, so that a stop is immediate.

        Example:
            >>> from clipnormals import AsyncClient, LocalLimiter, RateLimit
            >>> control = BatchControl()
            >>> rate = RateLimit()
            >>> client = AsyncClient(rate_limit=rate, limiter=control.gate(LocalLimiter(rate)))
            ... # doctest: +SKIP
        """
        gate = StopGate(limiter)
        if self.stop_requested:
            gate.close()
        self._gates.append(gate)
        return gate

    def stop(self) -> None:
        """Stop sending; let the requests already sent finish."""
        self.stop_requested = True
        self.close_gates()
        if self._on_stop is not None:
            self._on_stop()

    def abort(self) -> None:
        """Cancel the run now."""
        self.stop_requested = self.abort_requested = True
        self.close_gates()
        if self._on_abort is not None:
            self._on_abort()

    def close_gates(self) -> None:
        """Refuse every request that has not started (the runner calls it on any stop)."""
        for gate in self._gates:
            gate.close()

    def _attach(self, on_stop: Callable[[], None], on_abort: Callable[[], None]) -> None:
        self._on_stop, self._on_abort = on_stop, on_abort
        if self.abort_requested:
            on_abort()
        elif self.stop_requested:
            on_stop()
