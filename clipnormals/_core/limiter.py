"""Client-side rate limiting: a schedule of start slots that keeps every window under the quota,
and learns from the 429s it did not expect.

The guarantee: no window of ``per`` seconds ever contains more than ``requests`` request starts,
whatever way the server counts (fixed calendar windows, a sliding log, a token bucket, an
nginx-style leaky bucket). Two mechanisms keep it, each enough on its own in steady state:

- *The schedule* is GCRA, the "theoretical arrival time" form of a token bucket of capacity
  ``C = burst + slack`` refilled at ``r = (requests - burst - slack) / per``: such a bucket allows
  at most ``C + r * T`` starts in any interval of length ``T``, which is ``requests`` for
  ``T = per``. Each caller of ``acquire`` is handed its slot on the schedule when it queues
  (reserved slots, served in order), so a caller that wakes up late does not push later slots
  back: lateness is not lost, it is made up by the next start. A change of settings (a lesson,
  a cooldown) voids the slots handed out; their callers queue again.
- *The start log* keeps the time of the last ``requests`` starts and holds back any start that
  would put ``requests + 1`` starts in a span shorter than ``per`` plus one spacing. It is exact:
  it holds whatever the schedule does, after late wake-ups included. A start that comes late by
  up to ``burst + slack - 1`` spacings never meets it; a later one delays only the start one
  window after it (which keeps its own place), never the whole schedule.

Why ``requests - burst`` and not ``requests``: the server counts arrivals, not sends, and
arrivals wander (connection set-up, upload time, network). Holding back one token per window
means ``requests + 1`` sends always span at least ``per`` plus about one spacing, so arrivals
may wander by up to a spacing and no server window sees more than ``requests``.

Strict spacing (``RateLimit(strict=True)``): for servers that count like a leaky bucket without
burst (nginx ``limit_req`` without ``burst``), which refuse any two arrivals closer than
``per / requests``. No two starts are then closer than one spacing (``1 / r``, a little more
than ``per / requests``): the schedule still hands out slots from ideal start times, but a late
start moves the next one back instead of letting it come early.

Learning (``RateLimit(adaptive=True)``, the default). A 429 for an attempt started under the
current settings, when the limiter's own count says the server should not refuse, tells
something: the server counts more strictly, allows less than configured, or sees arrivals
wander more than one spacing. The lessons, in order:

1. A refused start less than ``per / requests`` (of the quota as now believed) after the one
   before it: the server counts like a leaky bucket without burst. Strict spacing from now on,
   at least 3% wider than the server's (one spacing alone is only 0.2% wider at 600 a minute,
   which arrival jitter would soon turn into the next lesson).
2. A refused start when the admitted starts in the trailing window came within two of the
   window's limit, and almost every attempt since the last lesson was admitted: arrivals wander
   more than one spacing. The window margin widens: the window is stretched by two spacings,
   then by twice its stretch each time.
3. Otherwise the server allows less than configured: the quota drops to the share of attempts
   the server admitted since the last lesson (when at least 20 were answered; with fewer, by
   3%, or by 30% when fewer than five were admitted since a lowering less than a window ago), by
   at least 3% and at most by half, and to the number of admitted starts in the trailing window
   when that is lower but at least a quarter of the quota (half while the client has been
   sending for less than a window): what a window counter held when it refused; and to the
   rate at which the server admitted starts since the refusal before, or the end of the pause
   that followed it (from full to full again: its rate, a token bucket's included).

Four windows after a lesson, and then after each window without one, the limiter probes back
up by one request (or one spacing of margin), never above the configured quota. A 429 during a
probe's first window undoes the probe, and the next probe waits eight windows (twice as long
after each failure). 429s for attempts that started before the last lesson teach nothing (they
were sent under the old settings), nor do 429s before anything was admitted, at first or since
the last lesson (a window counter may still be full of an earlier run's requests). What was
learned is a plain :class:`RateLimit` (``LocalLimiter.learned``, ``client.stats.learned``) to
pass as ``rate_limit`` next time; each lesson is logged once, at INFO.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import warnings
from collections import deque
from dataclasses import dataclass, replace
from typing import Final, Protocol, runtime_checkable

import anyio

__all__ = ["Limiter", "LocalLimiter", "RateLimit"]

logger = logging.getLogger("clipnormals")


def _now() -> float:
    """The event loop's clock in seconds: ``anyio.current_time()`` on asyncio, without looking
    the backend up on every call (a tenth of the limiter's cost per request)."""
    return asyncio.get_running_loop().time()


_PENDING, _ADMITTED, _REFUSED = 0, 1, 2
_MIN_STEP: Final = 0.97  # a lesson lowers the rate by at least 3%
_MAX_STEP: Final = 0.5  # and at most halves it
_REPEAT_STEP: Final = 0.7  # a lesson hard on the heels of another, with few answers between
_THICK: Final = 5  # fewer admissions than this between two lowerings: 429s thick and fast
_MIN_ANSWERS: Final = 20  # answers since the last lesson needed to trust the admitted share
_FIRST_PROBE: Final = 4  # windows after a lesson before the first probe back up
_PROBE_HOLD: Final = 8  # windows to wait before probing again after a failed probe


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """The quota to stay under: ``requests`` request starts per ``per`` seconds.

    Args:
        requests: the quota (60 per key by default on Clipdrop).
        per: the window, in seconds.
        burst: how many requests may start back to back from an idle client. Each one of burst
            is taken from the sustained rate, so the guarantee holds for any value.
        slack: a fraction of a token the bucket may hold above ``burst``: after a pause, the
            second start may come ``slack`` spacings early. It costs ``slack`` tokens of
            sustained rate. (Late wake-ups no longer need it: slots are reserved.)
        strict: no two starts closer than one spacing, for servers that count like a leaky
            bucket without burst (nginx ``limit_req`` without ``burst``). Needs ``burst=1``.
        adaptive: learn from 429s the limiter did not expect (see :class:`LocalLimiter`); it only
            ever lowers the rate, never above this quota.
        max_cooldown: deprecated: ``RetryPolicy.max_retry_after`` is the one cap on the
            pause a 429 imposes (the client caps the pause before it reaches the limiter).
            Still honoured by :meth:`LocalLimiter.cooldown` when set.

    Example:
        >>> rl = RateLimit(requests=60, per=60.0)
        >>> round(rl.sustained_fraction, 3)
        0.982
        >>> RateLimit.parse("600/60 strict").strict
        True
    """

    requests: int = 60
    per: float = 60.0
    burst: int = 1
    slack: float = 0.1
    strict: bool = False
    adaptive: bool = True
    max_cooldown: float | None = None

    def __post_init__(self) -> None:
        if self.requests < 2:
            raise ValueError("RateLimit.requests must be at least 2 (one token is the margin)")
        if not (math.isfinite(self.per) and self.per > 0):
            raise ValueError("RateLimit.per must be a positive number of seconds")
        if not 1 <= self.burst < self.requests:
            raise ValueError("RateLimit.burst must be at least 1 and below requests")
        if not 0 <= self.slack < 1:
            raise ValueError("RateLimit.slack must be in [0, 1)")
        if self.requests - self.burst - self.slack <= 0:
            raise ValueError("RateLimit leaves no sustained rate: lower burst")
        if self.strict and self.burst != 1:
            raise ValueError("RateLimit.strict allows no burst: use burst=1")
        if self.max_cooldown is not None:
            warnings.warn(
                "RateLimit.max_cooldown is deprecated: RetryPolicy.max_retry_after caps the "
                "pause a 429 imposes",
                DeprecationWarning,
                stacklevel=3,
            )
            if self.max_cooldown < 0:
                raise ValueError("RateLimit.max_cooldown must not be negative")

    @classmethod
    def parse(cls, text: str, *, burst: int = 1) -> RateLimit:
        """Parse ``"60/60"`` (requests/seconds) or ``"60/min"``, optionally followed by
        ``strict``; :attr:`spec` gives this form back.

        Example:
            >>> RateLimit.parse("600/6").requests
            600
        """
        try:
            words = text.replace(",", " ").split()
            if not words or any(word.lower() != "strict" for word in words[1:]):
                raise ValueError(text)
            count_text, _, per_text = words[0].partition("/")
            per_text = per_text.strip().lower()
            units = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}
            per = units[per_text] if per_text in units else float(per_text)
            return cls(requests=int(count_text), per=per, burst=burst, strict=len(words) > 1)
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"invalid rate {text!r}: expected REQUESTS/SECONDS, e.g. 60/60 or 600/60 strict"
            ) from exc

    @property
    def spec(self) -> str:
        """``requests/per`` (and ``strict``), the form :meth:`parse` and ``--rate`` read."""
        return f"{self.requests}/{self.per:g}" + (" strict" if self.strict else "")

    @property
    def capacity(self) -> float:
        """Bucket capacity in tokens: ``burst + slack``."""
        return self.burst + self.slack

    @property
    def rate(self) -> float:
        """Sustained refill rate in tokens per second."""
        return (self.requests - self.burst - self.slack) / self.per

    @property
    def spacing(self) -> float:
        """Seconds between starts at the sustained rate."""
        return 1.0 / self.rate

    @property
    def sustained_fraction(self) -> float:
        """The sustained rate as a fraction of the quota (0.982 by default)."""
        return self.rate * self.per / self.requests


@runtime_checkable
class Limiter(Protocol):
    """What the client needs from a rate limiter; implement it to share a quota between processes.

    The client tells the limiter what it saw; the limiter decides what to do about it.

    - ``acquire`` returns when one request may start (every attempt calls it, retries included)
      and returns the start time (``anyio.current_time()``). Cancelling it must not use a slot.
    - ``rate_limited`` reports a 429 for the attempt that started at ``started``: pause every
      sender of the quota for at least ``pause`` seconds (what the retry policy asks for:
      ``Retry-After`` when the server sent one, capped, else a backoff); ``retry_after`` is the
      header's value, ``None`` when absent.
    - ``admitted`` reports any other response for the attempt that started at ``started``.
    - ``learned`` is what the limiter learned from 429s, as a :class:`RateLimit` to pass next
      time, or ``None`` when it learned nothing (or does not learn).
    """

    async def acquire(self) -> float:
        """Wait until one request may start; return the start time."""
        ...

    async def rate_limited(
        self, *, started: float, pause: float, retry_after: float | None = None
    ) -> None:
        """The server answered 429 to the attempt that started at ``started``."""
        ...

    async def admitted(self, *, started: float) -> None:
        """The server answered the attempt that started at ``started`` with anything but 429."""
        ...

    @property
    def learned(self) -> RateLimit | None:
        """The rate limit learned from 429s, or ``None``."""
        ...


class _Start:
    __slots__ = ("status", "time")

    def __init__(self, time: float) -> None:
        self.time = time
        self.status = _PENDING


class LocalLimiter:
    """The in-process limiter: reserved slots on a GCRA schedule, an exact start log, one shared
    cooldown, and the lessons of unexpected 429s (see the module docstring).

    Create one per event loop (the client does).

    Example:
        >>> limiter = LocalLimiter(RateLimit(requests=60, per=60.0))
        >>> # async: started = await limiter.acquire() before each request
        >>> limiter.learned is None
        True
    """

    __slots__ = (
        "_before_probe",
        "_changed_at",
        "_cooldown_until",
        "_current",
        "_epoch",
        "_first_start",
        "_last_reserved",
        "_lesson_at",
        "_lessons",
        "_lowered_at",
        "_outstanding",
        "_probe_after",
        "_probe_hold",
        "_returned",
        "_spacing",
        "_starts",
        "_tat",
        "_tolerance",
        "_window",
        "rate_limit",
    )

    def __init__(self, rate_limit: RateLimit) -> None:
        self.rate_limit = rate_limit
        self._tat = -math.inf
        self._last_reserved: tuple[float, float] | None = None
        self._returned: list[float] = []
        self._starts: deque[_Start] = deque(maxlen=rate_limit.requests)
        self._first_start: float | None = None
        self._cooldown_until = -math.inf
        self._epoch = 0
        self._outstanding = 0  # slots handed out on the schedule, not started yet
        self._lessons = 0
        self._lesson_at = -math.inf
        self._lowered_at = -math.inf  # the last lesson that lowered the rate
        self._changed_at = -math.inf
        self._before_probe: RateLimit | None = None
        self._probe_after = -math.inf
        self._probe_hold = _PROBE_HOLD
        self._current = rate_limit
        self._spacing = self._tolerance = self._window = 0.0
        self._use(rate_limit)

    def __repr__(self) -> str:
        return f"LocalLimiter({self.rate_limit!r}, current={self._current!r})"

    @property
    def current(self) -> RateLimit:
        """The limits in force now: the configured ones, or what the limiter learned."""
        return self._current

    @property
    def learned(self) -> RateLimit | None:
        """What unexpected 429s taught the limiter, to pass as ``rate_limit`` next time; ``None``
        while it learned nothing."""
        return self._current if self._lessons else None

    @property
    def lessons(self) -> int:
        """How many 429s taught the limiter something."""
        return self._lessons

    async def cooldown_remaining(self) -> float:
        """Seconds left in the current cooldown (0 when none); async, as on every limiter."""
        return max(0.0, self._cooldown_until - _now())

    # -- the schedule -----------------------------------------------------------------------

    def _use(self, rl: RateLimit) -> None:
        self._current = rl
        self._spacing = rl.spacing
        self._tolerance = 0.0 if rl.strict else (rl.capacity - 1.0) * rl.spacing
        self._window = rl.per + rl.spacing
        self._restart(_now() if self._starts else -math.inf)

    def _restart(self, now: float) -> None:
        """Void every slot handed out and start the schedule again from ``now``."""
        self._epoch += 1
        self._outstanding = 0
        self._returned.clear()
        self._tat = min(self._tat, now + self._tolerance + self._spacing)

    async def acquire(self) -> float:
        """Wait for the cooldown, then for a slot on the schedule; return the start time.

        A cooldown that begins while waiting voids the slot: sends held back by a cooldown must
        not all start at its end, so they queue for fresh slots instead. Cancelling gives the
        slot back.
        """
        while True:
            now = _now()
            if self._cooldown_until > now:
                await anyio.sleep(self._cooldown_until - now)
                continue
            epoch = self._epoch
            slot = self._reserve(now)
            try:
                while epoch == self._epoch:
                    now = _now()
                    due = max(slot, self._earliest())
                    if due <= now:
                        self._outstanding -= 1
                        self._starts.append(_Start(now))
                        if self._first_start is None:
                            self._first_start = now
                        return now
                    await anyio.sleep(due - now)
            except BaseException:
                self._give_back(slot, epoch)
                raise

    def _reserve(self, now: float) -> float:
        returned = self._returned
        while returned and returned[0] < now:
            heapq.heappop(returned)
        if returned:
            self._outstanding += 1
            return heapq.heappop(returned)
        slot = max(self._tat - self._tolerance, now)
        blocked = self._earliest(ahead=self._outstanding)
        self._outstanding += 1
        # Within a window of a lowering, the start log still holds starts made at the old rate:
        # the schedule follows it, so that the waiters it holds back do not start together
        # when it lets go. Later, it only holds back the start one window after a late one,
        # by less than a late wake-up: that start waits, and the schedule is left alone.
        lowered = now - self._lowered_at < self._window
        if blocked > slot + (0.0 if lowered else max(2.0 * self._spacing, self._current.per / 4)):
            slot = blocked
        self._last_reserved = (slot, self._tat)
        self._tat = max(self._tat, slot) + self._spacing
        return slot

    def _give_back(self, slot: float, epoch: int) -> None:
        if epoch != self._epoch:
            return  # a cooldown voided the slot and restarted the schedule
        self._outstanding -= 1
        if self._last_reserved is not None and self._last_reserved[0] == slot:
            self._tat = self._last_reserved[1]
            self._last_reserved = None
        else:
            heapq.heappush(self._returned, slot)

    def _earliest(self, ahead: int = 0) -> float:
        """The earliest time the start log and strict spacing allow the next start (or, for
        the schedule, the start after ``ahead`` more)."""
        starts, rl = self._starts, self._current
        earliest = -math.inf
        if 0 < rl.requests - ahead <= len(starts):
            earliest = starts[ahead - rl.requests].time + self._window
        if rl.strict and starts:
            earliest = max(earliest, starts[-1].time + self._spacing)
        return earliest

    async def cooldown(self, seconds: float) -> None:
        """Pause every sender of this limiter for ``seconds`` (the client has capped them at
        ``RetryPolicy.max_retry_after``; the deprecated ``RateLimit.max_cooldown`` applies
        too when set).

        A longer pause already under way is kept: a cooldown is never shortened.
        """
        if math.isnan(seconds):
            raise ValueError("cooldown seconds must be a number")
        seconds = max(seconds, 0.0)
        if self.rate_limit.max_cooldown is not None:
            seconds = min(seconds, self.rate_limit.max_cooldown)
        now = _now()
        if now + seconds > self._cooldown_until:
            self._cooldown_until = now + seconds
            self._restart(now)

    # -- what the client saw ----------------------------------------------------------------

    def _find(self, started: float) -> _Start | None:
        for start in reversed(self._starts):
            if start.time == started:
                return start
            if start.time < started:
                break
        return None

    async def admitted(self, *, started: float) -> None:
        """The attempt that started at ``started`` got past the server's rate limiter."""
        start = self._find(started)
        if start is None:
            return
        start.status = _ADMITTED
        if self.rate_limit.adaptive and self._current != self.rate_limit:
            self._probe(_now())

    async def rate_limited(
        self, *, started: float, pause: float, retry_after: float | None = None
    ) -> None:
        """The server answered 429 to the attempt that started at ``started``: pause every
        sender for ``pause`` seconds and, when the 429 was not expected, learn from it."""
        start = self._find(started)
        if start is not None:
            start.status = _REFUSED
        paused_until = self._cooldown_until
        await self.cooldown(pause)
        if start is None or not self.rate_limit.adaptive or started <= self._lesson_at:
            return  # unknown, or sent under settings already changed by an earlier lesson
        if not any(s.status == _ADMITTED and s.time > self._lesson_at for s in self._starts):
            # Nothing admitted yet, or since the last lesson: the server's state is unknown (a
            # window still full of an earlier run's requests, or of another user of the key).
            return
        self._learn(start, _now(), paused_until)

    def _learn(self, refused: _Start, now: float, paused_until: float) -> None:
        cfg, cur = self.rate_limit, self._current
        t = refused.time
        earlier = [s for s in self._starts if s.time < t]
        gap = t - earlier[-1].time if earlier else math.inf
        nominal = cur.per / cur.requests  # the spacing of the quota as now believed
        if self._before_probe is not None and now - self._changed_at < cur.per:
            new = self._before_probe
            # what the server held in its window when it refused, if fewer (a window counter)
            held = sum(1 for s in earlier if s.time > t - cur.per and s.status != _REFUSED)
            if new.requests / 2 <= held < new.requests:
                new = replace(new, requests=held)
            self._probe_after = now + self._probe_hold * cur.per
            self._probe_hold *= 2
            why = "the probe back up was refused; back to the last settings that held"
        elif not cur.strict and gap < nominal:
            # No two starts closer than one spacing; a burst > 1 becomes requests held back
            # (the same rate). One spacing is only (burst + slack) / requests above the server's
            # (0.2% at 600 a minute): arrival jitter would soon be the next lesson, so the
            # spacing is also kept at least 3% above the server's.
            requests = cur.requests - cur.burst + 1
            requests = min(requests, math.floor(cur.requests * _MIN_STEP + 1 + cur.slack))
            new = replace(cur, requests=max(requests, 2), burst=1, strict=True)
            why = (
                f"a start {gap * 1000:.0f} ms after the previous one was refused (the quota "
                f"allows one every {nominal * 1000:.0f} ms): the server counts like a leaky "
                "bucket without burst; strict spacing from now on, 3% above the server's"
            )
        else:
            answered = [s for s in earlier if s.time > self._lesson_at and s.status != _PENDING]
            answered.append(refused)
            admitted = sum(s.status == _ADMITTED for s in answered)
            share = admitted / len(answered)
            if len(answered) < _MIN_ANSWERS:
                # Too few answers to measure: an isolated 429 takes the smallest step; one that
                # comes within a few admissions of the last lowering (429s coming thick and
                # fast: the server allows far less) a big one.
                thick = admitted < _THICK and now - self._lowered_at <= cur.per
                share = _REPEAT_STEP if thick else _MIN_STEP
            window = sum(1 for s in earlier if s.time > t - cur.per and s.status != _REFUSED)
            # A window count below a quarter of the quota, or below half of it when the client
            # has not been sending for a whole window yet, is more likely a rate than a window.
            history = t - (self._first_start if self._first_start is not None else t)
            credible = window >= cur.requests / (4 if history >= cur.per else 2)
            if window >= cur.requests - cur.capacity - 1 and share >= _MIN_STEP:
                stretch = max(2.0 * (cur.per - cfg.per), 2.0 * cur.spacing)
                new = replace(cur, per=_ceil_ms(cur.per + stretch))
                why = (
                    f"refused with {window} admitted starts in the last {cur.per:g} s, at the "
                    "window's limit: arrivals wander more than a spacing; window margin widened"
                )
            else:
                factor = min(_MIN_STEP, max(share, _MAX_STEP))
                requests = math.floor(cur.requests * factor)
                if credible and window < requests:
                    requests = window  # what a window counter held when it refused
                # Between two refusals the server went from full to full again: what it
                # admitted in between, over that time, is its rate (a token bucket's included).
                refusals = [s.time for s in earlier if s.status == _REFUSED]
                since = refusals[-1] if refusals else self._first_start or t
                if since < paused_until < t:
                    since = paused_until  # not sending while paused: that time says nothing
                between = sum(1 for s in earlier if s.time > since and s.status == _ADMITTED)
                if between >= _THICK and t - since >= _THICK * cur.spacing:
                    estimate = math.floor((between + 1) / (t - since) * cur.per)
                    requests = min(requests, estimate)
                requests = max(requests, cur.burst + 1, 2)
                new = replace(cur, requests=requests)
                why = (
                    f"refused with {window} admitted starts in "
                    f"the last {cur.per:g} s and {share:.0%} of attempts admitted since the last "
                    "lesson: the server allows less than configured; quota lowered"
                )
        if new.rate < cur.rate:
            self._lowered_at = now
        self._lessons += 1
        self._lesson_at = now
        self._changed_at = now
        self._probe_after = max(self._probe_after, now + _FIRST_PROBE * cur.per)
        self._before_probe = None
        self._use(new)
        logger.info(
            "rate limit lesson %d: %s; now %r (pass rate_limit=%r, or --rate %r, next time)",
            self._lessons,
            why,
            new.spec,
            new,
            new.spec,
        )

    def _probe(self, now: float) -> None:
        """One step back up after a window without a lesson, never above the configured quota."""
        cfg, cur = self.rate_limit, self._current
        if now - self._changed_at < cur.per or now < self._probe_after:
            return
        self._changed_at = now
        if self._before_probe is not None:
            self._before_probe = None  # the last probe held for a whole window
            self._probe_hold = _PROBE_HOLD
        ceiling = cfg.requests - (cfg.burst - cur.burst)  # strict learned from a burst: fewer
        if cur.per > cfg.per:
            new = replace(cur, per=max(cfg.per, _ceil_ms(cur.per - cur.spacing)))
        elif cur.requests < ceiling:
            new = replace(cur, requests=cur.requests + 1)
        else:
            return
        self._before_probe = cur
        self._use(new)
        logger.debug("rate limit probe: %s", new.spec)


def _ceil_ms(seconds: float) -> float:
    """Round a window up to a whole millisecond (the safe direction)."""
    return math.ceil(seconds * 1000.0 - 1e-6) / 1000.0
