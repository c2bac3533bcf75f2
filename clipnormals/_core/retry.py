"""Retries: what is retried, how long to wait, and when to give up.

Retried: 429, 5xx, connection errors, timeouts and truncated responses. Never retried: 400, 401,
402, 403, 406 and anything the contract does not describe, because sending the same request
again would fail the same way (and some of them mean the whole job must stop); nor
:class:`~clipnormals.CircuitOpenError`, which says the client has stopped trying for now.

Waits are "full jitter" exponential (a uniform draw in ``[0, min(max_backoff, initial * 2**n)]``),
which spreads clients that failed together. A ``Retry-After`` on a retried error (a 503, say) is
honoured instead, capped at ``max_retry_after``. A 429 is different: the client pauses every
sender through the limiter's shared cooldown (``Retry-After`` when the server sends it, else a
backoff that grows with consecutive 429s), so the retrying task itself does not wait on top of
that, and a 429 waited out as the server asked does not use up an attempt: ``attempts`` counts
real errors, and 429s are bounded by ``total`` alone.

Every attempt also runs under a deadline: ``attempt_timeout`` from its start to the last byte of
its answer, and never past what is left of ``total`` (a server that trickles its body one byte
at a time cannot hold an attempt forever, whatever the per-read timeout says).

Only this module imports tenacity; users never see ``tenacity.RetryError``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import tenacity

from .._errors import (
    APIConnectionError,
    APIStatusError,
    CircuitOpenError,
    RateLimitError,
    ServerError,
)
from .validate import require_int, require_seconds

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How the client retries transient failures, and when it stops trying altogether.

    Args:
        attempts: attempts per image that may fail with a real error (5xx, connection errors,
            timeouts), the first included; 429s waited out as the server asked do not count.
            1: no retry after a real error.
        initial: the first backoff window, in seconds; it doubles with each retry.
        max_backoff: the largest backoff window, in seconds.
        max_retry_after: the longest wait a server's ``Retry-After`` may impose, in seconds, on a
            429 (a pause of every sender) or on another retried error (a server asking for an
            hour is capped to this, then ``total`` decides).
        total: the most time one image may spend from the start of its first attempt to the end
            of its last, in seconds (waits for the quota between attempts included; the wait
            before the first attempt is not). A retry that could not start in time is not made:
            the last error is raised.
        attempt_timeout: the most one attempt may take, from its start to the last byte of its
            answer, in seconds (the client's ``timeout`` bounds each network phase; this bounds
            the whole).
        circuit_failures: consecutive connection failures (nothing listening, DNS, connect
            timeouts), across the whole client, that open its circuit: later requests fail at
            once with :class:`~clipnormals.CircuitOpenError` instead of each using up its
            retries. A client that has never connected opens after ``min(3,
            circuit_failures)``. 0 disables the circuit breaker.
        circuit_reset: seconds the circuit stays open before one probe request may try again.
        retry_rate_limited: retry 429 responses.
        retry_server_errors: retry 5xx responses.
        retry_connection_errors: retry connection errors, timeouts and truncated bodies.

    Example:
        >>> RetryPolicy(attempts=3).attempts
        3
        >>> RetryPolicy.disabled().retry_rate_limited
        False
    """

    attempts: int = 8
    initial: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    total: float = 600.0
    attempt_timeout: float = 300.0
    circuit_failures: int = 5
    circuit_reset: float = 30.0
    retry_rate_limited: bool = True
    retry_server_errors: bool = True
    retry_connection_errors: bool = True

    def __post_init__(self) -> None:
        require_int("RetryPolicy.attempts", self.attempts, minimum=1)
        require_int("RetryPolicy.circuit_failures", self.circuit_failures, minimum=0)
        for name in ("initial", "max_backoff", "max_retry_after", "total", "circuit_reset"):
            require_seconds(f"RetryPolicy.{name}", getattr(self, name))
        require_seconds("RetryPolicy.attempt_timeout", self.attempt_timeout, positive=True)

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries anything, 429s included."""
        return cls(
            attempts=1,
            retry_rate_limited=False,
            retry_server_errors=False,
            retry_connection_errors=False,
        )

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt under this policy."""
        if isinstance(exc, RateLimitError):
            return self.retry_rate_limited
        if isinstance(exc, ServerError):
            return self.retry_server_errors
        if isinstance(exc, CircuitOpenError):
            # Waiting for the probe of a server that answered before (see CircuitOpenError).
            return self.retry_connection_errors and exc.retry_in is not None
        if isinstance(exc, APIConnectionError):
            return self.retry_connection_errors
        return False

    def backoff(self, retry: int, *, rng: random.Random | None = None) -> float:
        """Full-jitter wait before retry number ``retry`` (1 for the first retry)."""
        window = min(self.max_backoff, self.initial * 2.0 ** max(retry - 1, 0))
        return (rng or random).uniform(0.0, window)

    def rate_limit_pause(self, streak: int, retry_after: float | None) -> float:
        """The shared pause after the ``streak``-th 429 in a row.

        ``Retry-After`` wins when the server gave one (capped at ``max_retry_after``). Otherwise
        the pause grows with the streak, jittered between half and all of the window so that it
        is never ~0, which would make the pause useless.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        window = min(self.max_backoff, self.initial * 2.0 ** max(streak - 1, 0))
        return random.uniform(window / 2, window)  # noqa: S311 - jitter, not secrecy

    def attempt_deadline(self, started: float, now: float) -> float:
        """Seconds the attempt starting at ``now`` may take, for an image first tried at
        ``started`` (both on the same clock): ``attempt_timeout``, or what is left of ``total``
        if that is less (never below zero)."""
        return max(0.0, min(self.attempt_timeout, self.total - (now - started)))

    def retrying(
        self, *, clock: Callable[[], float], started: Callable[[], float | None]
    ) -> tenacity.AsyncRetrying:
        """A tenacity loop for one image; ``started()`` is when its first attempt started on
        ``clock`` (``None`` before: waiting for the quota before the first attempt does not
        count against ``total``).

        Failures end with the last exception re-raised (never ``tenacity.RetryError``).
        """
        policy = self
        errors = 0  # failed attempts that were not 429s

        def elapsed() -> float:
            first = started()
            return 0.0 if first is None else clock() - first

        def wait(state: tenacity.RetryCallState) -> float:
            nonlocal errors
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimitError):
                return 0.0  # the limiter's shared cooldown is the wait
            if isinstance(exc, CircuitOpenError) and exc.retry_in is not None:
                return exc.retry_in  # until the probe may tell; not an attempt of its own
            errors += 1
            if isinstance(exc, APIStatusError) and exc.retry_after is not None:
                return min(exc.retry_after, policy.max_retry_after)
            return policy.backoff(errors)

        def stop(state: tenacity.RetryCallState) -> bool:
            if errors >= policy.attempts:
                return True
            exc = state.outcome.exception() if state.outcome else None
            upcoming = state.upcoming_sleep or 0.0
            if isinstance(exc, RateLimitError) and exc.retry_after is not None:
                # The shared pause the server asked for comes before the next attempt.
                upcoming = min(exc.retry_after, policy.max_retry_after)
            return elapsed() + upcoming >= policy.total

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self.is_retryable),
            wait=wait,
            stop=stop,
            sleep=anyio.sleep,  # the event loop's clock, like the limiter's
            reraise=True,
        )
