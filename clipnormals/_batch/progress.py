"""A run's counters: one shape (:class:`BatchProgress`) for the live snapshot and the summary.

Every source is in exactly one of ``done``, ``skipped``, ``failed``, ``invalid`` and
``not_sent`` once the run is over, whatever stopped it. The runner keeps the counters as an
immutable :class:`BatchProgress` that it replaces on each change, so a snapshot is the value
itself, never a copy made field by field; :class:`BatchSummary` is the last snapshot plus what
only the end knows.

How long the uploads left will take (:func:`estimate_seconds`) is one formula used by the live
ETA, the start line and the dry run: the larger of what the quota allows and what the run's
measured pace (seconds per upload, preparation, the server's time, retries and writing
included) implies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._core.limiter import RateLimit
from .outcomes import STOPS, ExitCode, StopReason, most_urgent

__all__ = [
    "BatchProgress",
    "BatchSummary",
    "PaceMeter",
    "estimate_seconds",
    "quota_seconds",
]


def quota_seconds(uploads: int, rate_limit: RateLimit) -> float:
    """Seconds the quota needs to start ``uploads`` requests: the first ``burst`` at once, the
    rest one per spacing (see :class:`RateLimit`).

    Example:
        >>> round(quota_seconds(60, RateLimit(requests=60, per=60.0)), 2)
        60.1
    """
    return max(0, uploads - rate_limit.burst) * rate_limit.spacing


def estimate_seconds(
    uploads: int, *, rate_limit: RateLimit | None, pace: float | None
) -> float | None:
    """Seconds ``uploads`` more uploads will take: the quota's time or the measured pace's,
    whichever is longer; ``None`` when neither is known.

    Args:
        uploads: uploads still to make.
        rate_limit: the client's quota.
        pace: measured seconds per upload (all of it: preparation, waits, the server's time,
            retries, writing), ``None`` before anything was measured.

    Example:
        >>> estimate_seconds(10, rate_limit=RateLimit(requests=600, per=60.0), pace=2.0)
        20.0
        >>> estimate_seconds(10, rate_limit=None, pace=None) is None
        True
    """
    bounds = []
    if rate_limit is not None:
        bounds.append(quota_seconds(uploads, rate_limit))
    if pace is not None:
        bounds.append(uploads * pace)
    return max(bounds) if bounds else None


class PaceMeter:
    """Seconds per settled upload over the last ``window`` uploads, from when they settled.

    Example:
        >>> meter = PaceMeter(window=4)
        >>> for t in (0.0, 2.0, 4.0, 6.0):
        ...     meter.add(t)
        >>> meter.pace
        2.0
    """

    __slots__ = ("_times",)

    def __init__(self, *, window: int = 32) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def add(self, now: float) -> None:
        """One upload settled at ``now`` (seconds on any steady clock)."""
        self._times.append(now)

    @property
    def pace(self) -> float | None:
        """Seconds per upload, ``None`` until two uploads have settled."""
        times = self._times
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (times[-1] - times[0]) / (len(times) - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchProgress:
    """A snapshot of a run, handed to the reporter.

    Attributes:
        total: sources in the run.
        to_send: distinct contents that need an upload.
        done: outputs written in this run (``uploaded`` of them sent, ``copied`` copies of an
            identical image's output).
        skipped: outputs already in place from an earlier run.
        failed: sent (or tried) and failed. invalid: rejected before upload. not_sent: never
            sent (credits, a stop, a halted client).
        uploads_settled: uploads that have an outcome (sent or not); in_flight: uploads handed
            to the client whose outcome is not recorded yet.
        attempts, retries, rate_limited: HTTP requests, retries and 429s of this run.
        credits_consumed: credits this run spent; credits_remaining: the last balance seen.
        credits_uncertain: credits of this run's attempts that got no answer (a timeout, a
            reset) after the request went out: the server may have charged them.
        rate_limit: the client's quota.
        pace: measured seconds per upload, ``None`` until measured.
        elapsed: seconds since the run started.
        stopping: why sending stopped, ``None`` while it goes on.
    """

    total: int = 0
    to_send: int = 0
    done: int = 0
    uploaded: int = 0
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    not_sent: int = 0
    uploads_settled: int = 0
    in_flight: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    credits_consumed: int = 0
    credits_uncertain: int = 0
    credits_remaining: int | None = None
    rate_limit: RateLimit | None = None
    pace: float | None = None
    elapsed: float = 0.0
    stopping: StopReason | None = None

    @property
    def settled(self) -> int:
        """Sources with a final outcome in this run."""
        return self.done + self.skipped + self.failed + self.invalid + self.not_sent

    @property
    def uploads_left(self) -> int:
        """Uploads still to make (``to_send`` minus those settled); 0 once sending stopped."""
        if self.stopping is not None:
            return 0
        return max(0, self.to_send - self.uploads_settled)

    @property
    def eta(self) -> float | None:
        """Seconds the uploads left will take (:func:`estimate_seconds`), ``None`` unknown."""
        return estimate_seconds(self.uploads_left, rate_limit=self.rate_limit, pace=self.pace)

    @property
    def eta_measured(self) -> bool:
        """True when :attr:`eta` rests on a measured pace, not only on the quota."""
        return self.pace is not None


def progress_fields(progress: BatchProgress) -> dict[str, Any]:
    """The fields of a :class:`BatchProgress` (or of a summary's progress part), by name."""
    return {f.name: getattr(progress, f.name) for f in fields(BatchProgress)}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSummary(BatchProgress):
    """What a batch run did: its last :class:`BatchProgress`, and what only the end knows.

    Attributes:
        failures: failed sources by error type; rejections: invalid ones by error type.
        requests_per_minute: the start rate achieved, when there were at least two requests.
        learned_rate_limit: what the rate limiter learned from 429s it did not expect (see
            ``ClientStats.learned``), to pass as ``--rate`` next time; ``None`` if nothing.
        stopped: why sending stopped early (:class:`StopReason`), or ``None``;
            stop_detail: the stopping error's detail (the host that could not be reached...).
        aborted: the run was cancelled at once (a second Ctrl-C).
        manifest, output_dir: where the run wrote.

    Example:
        >>> BatchSummary(total=3, done=2, failed=1).exit_code
        <ExitCode.FAILED: 1>
    """

    failures: Mapping[str, int] = field(default_factory=dict)
    rejections: Mapping[str, int] = field(default_factory=dict)
    requests_per_minute: float | None = None
    learned_rate_limit: RateLimit | None = None
    stopped: StopReason | None = None
    stop_detail: str = ""
    aborted: bool = False
    manifest: Path | None = None
    output_dir: Path | None = None

    @property
    def exit_code(self) -> ExitCode:
        """The exit code ``clipnormals batch`` ends with (see :class:`ExitCode`)."""
        codes = {ExitCode.OK}
        if self.aborted:
            codes.add(ExitCode.INTERRUPTED)
        if self.stopped is not None:
            codes.add(STOPS[self.stopped].exit_code)
        elif self.not_sent:
            codes.add(ExitCode.CREDITS)
        if self.failed or self.invalid:
            codes.add(ExitCode.FAILED)
        return most_urgent(codes)

    @property
    def accounted(self) -> bool:
        """Every source is in exactly one count (what every run guarantees at its end)."""
        return self.settled == self.total
