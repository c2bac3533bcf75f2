"""The circuit breaker: stop trying to connect when the server cannot be reached.

A client pointed at a host where nothing listens, or cut off from the network, would otherwise
retry every image separately: eight attempts each, minutes per batch, while looking busy. The
breaker counts *connection* failures (the request never reached a server: refused, DNS, connect
timeout) in a row, across every request of the client. Any answer from the server, even an error
status, closes the run.

- closed: requests go out. ``failures`` consecutive connection failures open it (fewer, ``min(3,
  failures)``, for a client that has never connected: a wrong URL should fail in seconds).
- open: requests fail at once with :class:`~clipnormals.CircuitOpenError`, without I/O, for
  ``reset`` seconds.
- half-open: after that, one request (the probe) goes out; the others still fail at once. The
  probe's connection decides: it closes the circuit, or opens it for another ``reset`` seconds.

Time comes from the event loop's clock (``anyio.current_time``), like the limiter's.
"""

from __future__ import annotations

import math
from typing import NoReturn

import anyio

from .._errors import CircuitOpenError

__all__ = ["CircuitBreaker"]

_NEVER_CONNECTED_FAILURES = 3


class CircuitBreaker:
    """Consecutive connection failures across one client, and whether to try at all.

    Example:
        >>> breaker = CircuitBreaker(failures=5, reset=30.0, host="api.example")
        >>> breaker.state
        'closed'
    """

    __slots__ = (
        "_connected_once",
        "_open_until",
        "_probing",
        "_streak",
        "failures",
        "host",
        "last_error",
        "reset",
    )

    def __init__(self, *, failures: int, reset: float, host: str) -> None:
        self.failures = failures
        self.reset = reset
        self.host = host
        self.last_error = ""
        self._streak = 0
        self._connected_once = False
        self._open_until = -math.inf
        self._probing = False

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        if not self._tripped():
            return "closed"
        return "open" if anyio.current_time() < self._open_until or self._probing else "half-open"

    def _tripped(self) -> bool:
        return self._open_until != -math.inf

    def _threshold(self) -> int:
        if self._connected_once:
            return self.failures
        return min(_NEVER_CONNECTED_FAILURES, self.failures)

    def check(self) -> None:
        """Raise :class:`CircuitOpenError` while the circuit is open (no probe due yet)."""
        if (
            self.failures
            and self._tripped()
            and (self._probing or anyio.current_time() < self._open_until)
        ):
            self._refuse()

    def before_request(self) -> bool:
        """Raise :class:`CircuitOpenError` when the request must not go out; return True when
        it goes out as the half-open probe (report its outcome with :meth:`connected` or
        :meth:`connection_failed`, or :meth:`probe_abandoned` if it never left)."""
        if self.failures == 0 or not self._tripped():
            return False
        if anyio.current_time() >= self._open_until and not self._probing:
            self._probing = True
            return True
        self._refuse()

    def _refuse(self) -> NoReturn:
        raise self.open_error("not sent: ")

    def open_error(self, prefix: str = "") -> CircuitOpenError:
        """The error that says the circuit is open, why, and until when."""
        wait = max(0.0, self._open_until - anyio.current_time())
        when = "a probe is under way" if self._probing else f"next try in {wait:.0f}s"
        return CircuitOpenError(
            f"{prefix}{self.host} could not be reached ({self._streak} connection failures in "
            f"a row, last: {self.last_error}); {when}",
            host=self.host,
        )

    def connected(self) -> None:
        """The server answered (any status): close the circuit."""
        self._connected_once = True
        self._streak = 0
        self._open_until = -math.inf
        self._probing = False

    def connection_failed(self, error: str) -> bool:
        """A request could not reach the server; returns True when this opened the circuit."""
        self._streak += 1
        self.last_error = error
        was_probing, self._probing = self._probing, False
        if self.failures == 0:
            return False
        if was_probing or (not self._tripped() and self._streak >= self._threshold()):
            self._open_until = anyio.current_time() + self.reset
            return True
        return False

    def probe_done(self) -> None:
        """The probe's attempt is over. If it neither connected nor failed to connect (it was
        cancelled, or failed after connecting), the next request may probe."""
        self._probing = False
