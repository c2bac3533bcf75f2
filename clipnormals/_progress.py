"""Showing a batch run: a live progress bar on a terminal, one plain line per image elsewhere.

Part of the ``cli`` extra (rich). The bar shows sources settled out of the total, the request
rate over the last minute against the quota, the time the quota needs for the uploads left,
credits left, retries, 429s and errors; failures are printed above it as they happen. The plain
mode (logs, CI) prints one line per image and a status line every half minute.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from ._batch_types import BatchProgress, BatchSummary, StopReason
from ._limiter import RateLimit
from ._manifest import ManifestRecord, RecordStatus

__all__ = [
    "PlainReporter",
    "RateMeter",
    "RichReporter",
    "format_duration",
    "format_rate",
    "summary_lines",
]

_STATUS_EVERY = 30.0


def format_duration(seconds: float | None) -> str:
    """``"2h05m"``, ``"3m07s"``, ``"12s"``; ``"-"`` for unknown.

    Example:
        >>> format_duration(187), format_duration(7500), format_duration(None)
        ('3m07s', '2h05m', '-')
    """
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def format_rate(rate: RateLimit) -> str:
    """The quota as people say it: ``"60/min"``, ``"20/s"``, ``"600/6s"``.

    Example:
        >>> format_rate(RateLimit(requests=60, per=60.0))
        '60/min'
        >>> format_rate(RateLimit(requests=600, per=6))
        '600/6s'
    """
    units = {1.0: "s", 60.0: "min", 3600.0: "h"}
    per = units.get(float(rate.per), f"{rate.per:g}s")
    return f"{rate.requests}/{per}"


def _rate_against_quota(per_minute: float | None, rate: RateLimit | None) -> str:
    achieved = "-" if per_minute is None else f"{per_minute:.1f}/min"
    if rate is None:
        return achieved
    return f"{achieved} of {rate.requests / rate.per * 60:g}/min"


class RateMeter:
    """Request starts per minute over the last ``window`` seconds, from cumulative counts.

    Example:
        >>> meter = RateMeter(window=60.0)
        >>> meter.add(0.0, 0); meter.add(30.0, 30)
        >>> meter.per_minute
        60.0
    """

    def __init__(self, *, window: float = 60.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> None:
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    @property
    def per_minute(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return None if t1 <= t0 else (c1 - c0) / (t1 - t0) * 60.0


def _record_line(record: ManifestRecord, progress: BatchProgress) -> str:
    width = len(str(progress.total))
    head = (
        f"[{progress.settled:>{width}}/{progress.total}] {record.status.value:<8} {record.source}"
    )
    if record.status in (RecordStatus.DONE, RecordStatus.SKIPPED):
        note = f" (copy of {record.duplicate_of})" if record.duplicate_of else ""
        return f"{head} -> {record.output}{note}"
    return f"{head}: {record.error_type}: {record.error}"


def _status_line(progress: BatchProgress, rate: float | None) -> str:
    achieved = _rate_against_quota(rate, progress.rate_limit)
    credits = "?" if progress.credits_remaining is None else str(progress.credits_remaining)
    return (
        f"{progress.settled}/{progress.total} settled, {achieved}, "
        f"ETA {format_duration(progress.eta)}, credits left {credits}, "
        f"retries {progress.retries}, 429s {progress.rate_limited}, "
        f"errors {progress.failed + progress.invalid}"
    )


def summary_lines(summary: BatchSummary) -> list[str]:
    """The end-of-run summary as plain text lines.

    Example:
        >>> summary_lines(BatchSummary(total=2, done=2, uploaded=2, credits_consumed=2))[0]
        'done         2  (2 uploaded, 0 copies of identical images)'
    """
    s = summary
    lines = [f"done     {s.done:>5}  ({s.uploaded} uploaded, {s.done - s.uploaded} copies of "
             "identical images)"]  # fmt: skip
    lines.append(f"skipped  {s.skipped:>5}  (already done by an earlier run)")
    by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items()))
    lines.append(f"failed   {s.failed:>5}" + (f"  ({by_reason})" if s.failures else ""))
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted(s.rejections.items()))
    lines.append(
        f"invalid  {s.invalid:>5}  (rejected before upload, nothing spent"
        + (f"; {rejected})" if rejected else ")")
    )
    why = {
        StopReason.CREDITS: "credits ran out or the budget was reached",
        StopReason.AUTH: "the server refused the API key",
        StopReason.INTERRUPTED: "interrupted",
    }.get(s.stopped or "", "")
    lines.append(f"not sent {s.not_sent:>5}" + (f"  ({why})" if s.not_sent and why else ""))
    left = "" if s.credits_remaining is None else f", {s.credits_remaining} left"
    lines.append(f"credits  {s.credits_consumed:>5}  consumed{left}")
    rpm = "-" if s.requests_per_minute is None else f"{s.requests_per_minute:.1f}/min"
    lines.append(
        f"requests {s.attempts:>5}  ({s.retries} retries), {rpm} achieved, "
        f"{s.rate_limited} x 429 received"
    )
    if s.learned_rate_limit is not None:
        spec = s.learned_rate_limit.spec
        lines.append(f"learned  {spec!r} from 429s: pass --rate {spec!r} next time")
    lines.append(f"time     {format_duration(s.elapsed):>5}")
    if s.manifest is not None:
        lines.append(f"manifest {s.manifest}")
    if s.aborted:
        lines.append("aborted: results in flight were lost; run the same command to resume")
    elif s.not_sent or s.failed:
        lines.append("run the same command again to retry what is not done (never pays twice)")
    return lines


class PlainReporter:
    """One line per image to a text stream; skipped images are counted, not listed."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        self.meter = RateMeter()
        self._skipped_pending = 0
        self._last_status = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def phase(self, text: str) -> None:
        if self.verbose or not text.startswith("hashed"):
            self._print(text)

    def start(self, progress: BatchProgress) -> None:
        quota = format_rate(progress.rate_limit) if progress.rate_limit else "-"
        self._print(
            f"{progress.total} images, {progress.to_send} to upload at {quota} "
            f"(about {format_duration(progress.eta)})"
        )

    def _flush_skipped(self) -> None:
        if self._skipped_pending:
            self._print(f"skipped {self._skipped_pending} images already done")
            self._skipped_pending = 0

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        if record.status is RecordStatus.SKIPPED and not self.verbose:
            self._skipped_pending += 1
            return
        self._flush_skipped()
        self._print(_record_line(record, progress))

    def tick(self, progress: BatchProgress) -> None:
        self.meter.add(progress.elapsed, progress.attempts)
        if progress.elapsed - self._last_status >= _STATUS_EVERY:
            self._last_status = progress.elapsed
            self._print(_status_line(progress, self.meter.per_minute))

    def finish(self, summary: BatchSummary) -> None:
        self._flush_skipped()
        for line in summary_lines(summary):
            self._print(line)


class RichReporter:
    """A live progress bar; failures are printed above it as they happen."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        summary_console: Console | None = None,
        verbose: bool = False,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.summary_console = summary_console or Console(soft_wrap=True)
        self.verbose = verbose
        self.meter = RateMeter()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("credits {task.fields[credits]}"),
            TextColumn(
                "retries {task.fields[retries]} · 429s {task.fields[r429]} · "
                "errors {task.fields[errors]}"
            ),
            console=self.console,
            transient=False,
        )
        self.task: TaskID | None = None

    def phase(self, text: str) -> None:
        if self.verbose or not text.startswith("hashed"):
            self.console.print(text, style="dim", markup=False, highlight=False)

    def start(self, progress: BatchProgress) -> None:
        quota = format_rate(progress.rate_limit) if progress.rate_limit else "-"
        self.console.print(
            f"{progress.total} images, {progress.to_send} to upload at {quota} "
            f"(about {format_duration(progress.eta)})",
            highlight=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "normals", total=progress.total, **self._fields(progress)
        )

    def _fields(self, progress: BatchProgress) -> dict[str, Any]:
        rate = self.meter.per_minute
        credits = "?" if progress.credits_remaining is None else str(progress.credits_remaining)
        return {
            "rate": _rate_against_quota(rate, progress.rate_limit),
            "eta": format_duration(progress.eta),
            "credits": credits,
            "retries": str(progress.retries),
            "r429": str(progress.rate_limited),
            "errors": str(progress.failed + progress.invalid),
        }

    def _update(self, progress: BatchProgress) -> None:
        if self.task is not None:
            description = "stopping" if progress.stopping else "normals"
            self.progress.update(
                self.task,
                completed=progress.settled,
                description=description,
                **self._fields(progress),
            )

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        if record.status in (RecordStatus.FAILED, RecordStatus.INVALID, RecordStatus.NOT_SENT):
            if record.status is not RecordStatus.NOT_SENT or self.verbose:
                self.console.print(_record_line(record, progress), markup=False, highlight=False)
        elif self.verbose and record.status is RecordStatus.DONE:
            self.console.print(_record_line(record, progress), markup=False, highlight=False)
        self._update(progress)

    def tick(self, progress: BatchProgress) -> None:
        self.meter.add(progress.elapsed, progress.attempts)
        self._update(progress)

    def finish(self, summary: BatchSummary) -> None:
        if self.task is not None:
            self.progress.stop()
        for line in summary_lines(summary):
            self.summary_console.print(line, markup=False, highlight=False)
