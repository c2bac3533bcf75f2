"""Value objects the client hands back: per-item results of ``map`` and request statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from .._errors import ClipnormalsError

if TYPE_CHECKING:
    from .._normals.normalmap import NormalMap
    from .limiter import RateLimit

__all__ = ["ClientStats", "MapItem"]

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class MapItem(Generic[S]):
    """One source's outcome in :meth:`AsyncClient.map`: a result or an error, never both.

    Attributes:
        index: the source's position in the input (items arrive in completion order).
        source: the source as given.
        result: the normal map, or ``None`` on failure.
        error: why it failed, or ``None`` on success. ``CreditBudgetError`` means it was not sent.
            It carries no traceback (nor do its causes): a traceback's frames would keep the
            image (its bytes, its pixels) alive for as long as the item is kept.
        attempts: HTTP attempts made for it (0 when it was never sent).

    Example:
        >>> item = MapItem(index=0, source="a.png", error=ClipnormalsError("boom"))
        >>> item.ok
        False
    """

    index: int
    source: S
    result: NormalMap | None = None
    error: ClipnormalsError | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """True when the item has a result."""
        return self.error is None

    def unwrap(self) -> NormalMap:
        """The result, or raise the item's error."""
        if self.error is not None:
            raise self.error
        assert self.result is not None  # noqa: S101 - an item holds one of the two
        return self.result


@dataclass(slots=True)
class _Counters:
    attempts: int = 0
    successes: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    other_errors: int = 0
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    statuses: dict[int, int] = field(default_factory=dict)

    def snapshot(self, *, learned: RateLimit | None = None) -> ClientStats:
        return ClientStats(
            attempts=self.attempts,
            successes=self.successes,
            retries=self.retries,
            rate_limited=self.rate_limited,
            server_errors=self.server_errors,
            connection_errors=self.connection_errors,
            other_errors=self.other_errors,
            first_attempt_at=self.first_attempt_at,
            last_attempt_at=self.last_attempt_at,
            statuses=dict(self.statuses),
            learned=learned,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStats:
    """What a client has sent and received so far (a snapshot).

    Attributes:
        attempts: HTTP requests started, retries included.
        successes: requests that returned a normal map.
        retries: attempts after a first one.
        rate_limited: 429 responses received.
        server_errors: 5xx responses received.
        connection_errors: attempts that failed without a usable response (timeouts included).
        other_errors: 4xx responses other than 429, and unexpected responses.
        first_attempt_at, last_attempt_at: event-loop clock of the first and last start.
        statuses: response count per HTTP status.
        learned: what the rate limiter learned from 429s it did not expect (stricter spacing, a
            lower quota, a wider window margin), as a :class:`RateLimit` to pass as
            ``rate_limit`` next time; ``None`` when it learned nothing or does not learn.

    Example:
        >>> ClientStats(attempts=0, successes=0).requests_per_minute is None
        True
    """

    attempts: int
    successes: int
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    other_errors: int = 0
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    learned: RateLimit | None = None

    @property
    def requests_per_minute(self) -> float | None:
        """Average start rate between the first and the last attempt, per minute."""
        if self.first_attempt_at is None or self.last_attempt_at is None or self.attempts < 2:
            return None
        span = self.last_attempt_at - self.first_attempt_at
        return None if span <= 0 else (self.attempts - 1) / span * 60.0
