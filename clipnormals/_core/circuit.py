"""The circuit breaker: stop trying when the server cannot be reached or cannot answer.

A client pointed at a host where nothing listens, cut off from the network, or behind a gateway
whose upstream is down would otherwise retry every image separately: eight attempts each,
minutes per batch, while looking busy. The breaker counts failures in a row across every request
of the client, of two kinds:

- *connection failures*: the request never reached a server (refused, DNS, connect timeout).
  ``failures`` of them in a row open the circuit; ``min(3, failures)`` for a client that has
  never connected, so that a wrong URL fails in seconds.
- *failed answers*: the server was reached but gave nothing usable: the connection was reset or
  timed out before an answer, or the answer was a 5xx. These happen now and then to a healthy
  API, so it takes ``4 * failures`` of them in a row, with no good answer in between.

Any good answer (a 200, or a 4xx other than 429: the server is there and working) ends both
runs; a 429 counts for neither.

- closed: requests go out.
- open: requests fail at once with :class:`~clipnormals.CircuitOpenError`, without I/O, for
  ``reset`` seconds.
- half-open: after that, one request (the probe) goes out; the others still fail at once. A
  good answer to the probe closes the circuit; a failure opens it for another ``reset`` seconds.

For a server that answered before, an outage may be a restart: until a probe has failed, the
errors say when the probe is due (``CircuitOpenError.retry_in``) and the client retries the
image then, without using an attempt, within ``RetryPolicy.total``. Once a probe has failed (or
for a server never reached), the errors are final: a dead host still fails a batch in about one
``reset``, not one ``total`` per image.

Time comes from the event loop's clock (``anyio.current_time``), like the limiter's.
"""

from __future__ import annotations

import math
from typing import NoReturn

import anyio

from .._errors import CircuitOpenError

__all__ = ["CircuitBreaker"]

_NEVER_CONNECTED_FAILURES = 3
_ANSWER_FAILURES_PER_CONNECTION_FAILURE = 4
_PROBE_POLL = 0.1  # seconds between looks while another request probes


class CircuitBreaker:
    """Failures in a row across one client, and whether to try at all.

    Example:
        >>> breaker = CircuitBreaker(failures=5, reset=30.0, host="api.example")
        >>> breaker.state
        'closed'
    """

    __slots__ = (
        "_bad_answers",
        "_connect_failures",
        "_connected_once",
        "_open_until",
        "_probe_failed",
        "_probing",
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
        self._connect_failures = 0
        self._bad_answers = 0
        self._connected_once = False
        self._open_until = -math.inf
        self._probing = False
        self._probe_failed = False

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        if not self._tripped():
            return "closed"
        return "open" if anyio.current_time() < self._open_until or self._probing else "half-open"

    def _tripped(self) -> bool:
        return self._open_until != -math.inf

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
        it goes out as the half-open probe (report its outcome as for any request, then call
        :meth:`probe_done`)."""
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
        if self._connect_failures >= self._bad_answers:
            why = f"{self._connect_failures} connection failures in a row"
            verb = "could not be reached"
        else:
            why = f"{self._bad_answers} failed answers in a row"
            verb = "is not answering"
        retry_in: float | None = None
        if self._connected_once and not self._probe_failed:
            # A server that answered before, and no probe has failed yet: perhaps a restart.
            retry_in = _PROBE_POLL if self._probing else max(wait, _PROBE_POLL)
        return CircuitOpenError(
            f"{prefix}{self.host} {verb} ({why}, last: {self.last_error}); {when}",
            host=self.host,
            retry_in=retry_in,
        )

    def connected(self) -> None:
        """The server sent an answer's status line: it can be reached."""
        self._connected_once = True
        self._connect_failures = 0

    def succeeded(self) -> None:
        """A good answer (a 200, or a 4xx other than 429): close the circuit."""
        self._connect_failures = 0
        self._bad_answers = 0
        self._open_until = -math.inf
        self._probing = False
        self._probe_failed = False

    def connection_failed(self, error: str) -> bool:
        """A request could not reach the server; returns True when this opened the circuit."""
        self._connect_failures += 1
        threshold = self.failures if self._connected_once else _NEVER_CONNECTED_FAILURES
        return self._failed(error, self._connect_failures >= min(threshold, self.failures))

    def answer_failed(self, error: str) -> bool:
        """The server was reached but gave no usable answer (a reset, a read timeout, a 5xx);
        returns True when this opened the circuit."""
        self._bad_answers += 1
        threshold = _ANSWER_FAILURES_PER_CONNECTION_FAILURE * self.failures
        return self._failed(error, self._bad_answers >= threshold)

    def _failed(self, error: str, over: bool) -> bool:
        self.last_error = error
        was_probing, self._probing = self._probing, False
        if self.failures == 0:
            return False
        now = anyio.current_time()
        # A failure once the pause is over is the probe's (its outcome may be reported after
        # probe_done, as a 5xx is): the circuit opens again.
        probe = was_probing or (self._tripped() and now >= self._open_until)
        if probe or (not self._tripped() and over):
            self._probe_failed = self._probe_failed or probe
            self._open_until = now + self.reset
            return True
        return False

    def probe_done(self) -> None:
        """The probe's attempt is over. If its outcome decided nothing (it was cancelled, or
        answered 429), the next request may probe."""
        self._probing = False
