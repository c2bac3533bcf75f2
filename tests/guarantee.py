"""The rate-limit guarantee checked at both ends of a real connection, on a machine that may be
busy.

The limiter promises something about *starts* (the moments it lets requests go): any
``requests + 1`` of them span at least ``per`` plus one spacing (docs: the limiter module). A
server counts *arrivals*, and an arrival is its start plus a delay (the client's event loop, the
kernel, the server's own event loop). The guarantee covers arrival delays that vary by up to one
spacing; a loaded machine can delay one request by more than that and not the next. So a test
that counts arrivals must not fail on a window the machine crowded, and must fail on one the
limiter crowded. With each request's start and arrival on one clock, it can tell them apart:

- the starts are checked against the promise directly (with half a spacing for taking the time);
- a window of ``per`` holding more than ``requests`` arrivals is the limiter's fault unless the
  delays of the requests in it spread by more than half a spacing (if the starts kept their
  promise, ``requests + 1`` arrivals within ``per`` need a spread of more than a spacing);
- a refusal (429) is the limiter's fault unless an earlier arrival of the last ``per`` seconds
  was delayed more than half a spacing longer than the refused one (arrivals squeezed together).

Everything else (at most N, no 429) then holds by arithmetic, whatever the load.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clipnormals import LocalLimiter, RateLimit
from clipnormals.emulator import Emulator

from .fakeapi import max_in_window

START_HEADER = "x-test-start"
_start: contextvars.ContextVar[float] = contextvars.ContextVar("start")


@dataclass(frozen=True, slots=True)
class Arrival:
    start: float  # when the limiter let the request go (time.monotonic)
    arrived: float  # when the server counted it (time.monotonic)
    status: int

    @property
    def delay(self) -> float:
        return self.arrived - self.start


class StampingLimiter:
    """A LocalLimiter that notes each start (time.monotonic, the event loop's clock) and hands
    it to the request the same task sends next, through :func:`stamp`."""

    def __init__(self, rate_limit: RateLimit) -> None:
        self.inner = LocalLimiter(rate_limit)
        self.starts: list[float] = []

    async def acquire(self) -> None:
        await self.inner.acquire()
        now = time.monotonic()
        self.starts.append(now)
        _start.set(now)  # the task that acquired is the one that sends (same context)

    async def cooldown(self, seconds: float) -> None:
        await self.inner.cooldown(seconds)


async def stamp(request: Any) -> None:
    """An httpx request hook: the start of this attempt, in a header the server records."""
    request.headers[START_HEADER] = repr(_start.get(float("nan")))


class ObservedEmulator(Emulator):
    """The emulator, with every request's start header, arrival time and status recorded at
    its door (the emulator reads its own clock in the same step)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[Arrival] = []

    @property
    def app(self) -> Any:
        inner = super().app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            arrived = time.monotonic()
            headers = dict(scope["headers"])
            start = float(headers.get(START_HEADER.encode(), b"nan"))

            async def noting(message: Any) -> None:
                if message["type"] == "http.response.start":
                    self.arrivals.append(Arrival(start, arrived, message["status"]))
                await send(message)

            await inner(scope, receive, noting)

        return app


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.problems


def check(starts: Sequence[float], arrivals: Sequence[Arrival], rate_limit: RateLimit) -> Verdict:
    """Everything the guarantee says about these starts and arrivals (see the module)."""
    verdict = Verdict()
    requests, per, spacing = rate_limit.requests, rate_limit.per, rate_limit.spacing
    margin = spacing / 2
    # Each attempt that reached the server took a token of its own, before it arrived.
    if sorted(a.start for a in arrivals) != sorted(starts):
        verdict.problems.append("the arrivals do not carry one start each")
    late = [a for a in arrivals if not a.delay >= 0]
    if late:
        verdict.problems.append(f"{len(late)} arrivals before their start")
    # The promise at the source.
    crowded_starts = max_in_window(starts, per + margin)
    if crowded_starts > requests:
        verdict.problems.append(f"{crowded_starts} starts within {per + margin:.3f} s")
    # Windows at the server.
    verdict.problems += crowded_windows(
        [(a.start, a.arrived) for a in arrivals], limit=requests, per=per, margin=margin
    )
    by_time = sorted(arrivals, key=lambda a: a.arrived)
    # Refusals.
    for k, refused in enumerate(by_time):
        if refused.status != 429:
            continue
        earlier = [a for a in by_time[:k] if refused.arrived - a.arrived <= per]
        if not any(a.delay - refused.delay > margin for a in earlier):
            verdict.problems.append(
                f"a 429 at {refused.arrived:.3f} that no squeeze of the arrivals explains"
            )
    return verdict


def crowded_windows(
    events: Sequence[tuple[float, float]], *, limit: int, per: float, margin: float
) -> list[str]:
    """Windows of ``per`` seconds holding more than ``limit`` of the ``(start, seen)`` events
    (by ``seen``) whose delays ``seen - start`` spread by no more than ``margin``: crowding that
    the delays do not explain (both times on one clock)."""
    problems = []
    by_time = sorted(events, key=lambda e: e[1])
    lo = 0
    for hi, (_, last) in enumerate(by_time):
        while last - by_time[lo][1] > per:
            lo += 1
        group = by_time[lo : hi + 1]
        if len(group) > limit:
            delays = [seen - start for start, seen in group]
            spread = max(delays) - min(delays)
            if spread <= margin:
                problems.append(
                    f"{len(group)} within {per} s at {last:.3f} with delays spread by only "
                    f"{spread * 1000:.1f} ms"
                )
    return problems
