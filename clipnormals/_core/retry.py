"""Retries: what is retried, how long to wait, and when to give up.

Retried: 429, 5xx, connection errors, timeouts and truncated responses. Never retried: 400, 401,
402, 403, 406 and anything the contract does not describe, because sending the same request
again would fail the same way (and some of them mean the whole job must stop).

Waits are "full jitter" exponential (a uniform draw in ``[0, min(max_backoff, initial * 2**n)]``),
which spreads clients that failed together. A 429 is different: the client pauses every sender
through the limiter's shared cooldown (``Retry-After`` when the server sends it, else a backoff
that grows with consecutive 429s), so the retrying task itself does not wait on top of that.

Only this module imports tenacity; users never see ``tenacity.RetryError``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import tenacity

from .._errors import APIConnectionError, RateLimitError, ServerError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How the client retries transient failures.

    Args:
        attempts: attempts per image in all, the first included (1 disables retries).
        initial: the first backoff window, in seconds; it doubles with each retry.
        max_backoff: the largest backoff window, in seconds.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds (a server asking for
            an hour is capped to this, then the retry budget decides).
        total: the most time one image may spend from its first attempt to its last, in seconds.
        retry_rate_limited: retry 429 responses.
        retry_server_errors: retry 5xx responses.
        retry_connection_errors: retry connection errors, timeouts and truncated bodies.

    Example:
        >>> RetryPolicy(attempts=3).attempts
        3
        >>> RetryPolicy.disabled().attempts
        1
    """

    attempts: int = 8
    initial: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    total: float = 600.0
    retry_rate_limited: bool = True
    retry_server_errors: bool = True
    retry_connection_errors: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        for name in ("initial", "max_backoff", "max_retry_after", "total"):
            value = getattr(self, name)
            if not (value >= 0 and not math.isnan(value)):
                raise ValueError(f"RetryPolicy.{name} must not be negative")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(attempts=1)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt under this policy."""
        if isinstance(exc, RateLimitError):
            return self.retry_rate_limited
        if isinstance(exc, ServerError):
            return self.retry_server_errors
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

    def retrying(self, *, clock: Callable[[], float]) -> tenacity.AsyncRetrying:
        """A tenacity loop for one image, measuring the total budget on ``clock``.

        Failures end with the last exception re-raised (never ``tenacity.RetryError``).
        """
        started = clock()
        policy = self

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimitError):
                return 0.0  # the limiter's shared cooldown is the wait
            return policy.backoff(state.attempt_number)

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= policy.attempts:
                return True
            return clock() - started + (state.upcoming_sleep or 0.0) > policy.total

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self.is_retryable),
            wait=wait,
            stop=stop,
            sleep=anyio.sleep,  # the event loop's clock, like the limiter's
            reraise=True,
        )
