"""Showing a batch run: a live progress bar on a terminal, one plain line per image elsewhere.

Part of the ``cli`` extra (rich). The bar is one line that fits the terminal: the count and a bar
always, then, as room allows and in this order, the ETA, errors, credits left, the request rate
against the quota, retries and 429s; fields that do not fit are left out whole, never cut. The
ETA is the run's estimate (:attr:`BatchProgress.eta`): the quota's time or the measured pace's,
whichever is longer, marked ``≥`` while nothing has been measured. Failures are printed above the
bar as they happen. The plain mode (logs, CI) prints a line per image that was done, failed or
rejected, counts the images already done and those not sent instead of listing them (``-v``
lists them), and a status line every half minute.

Every line goes through :func:`~.output.printable`: file names cannot drive the terminal.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._batch.events import Phase
from .._batch.manifest import ManifestRecord, RecordStatus
from .._batch.outcomes import STOPS
from .._batch.progress import BatchProgress, BatchSummary
from .._core.limiter import RateLimit
from .output import plural, say

__all__ = [
    "PlainReporter",
    "RateMeter",
    "RichReporter",
    "format_duration",
    "format_eta",
    "format_rate",
    "summary_lines",
]

_STATUS_EVERY = 30.0
_MIN_BAR = 10
_MAX_BAR = 40


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


def format_eta(progress: BatchProgress) -> str:
    """The ETA as shown: ``"3m07s"`` when measured, ``"≥9s"`` while only the quota is known.

    Example:
        >>> format_eta(BatchProgress(to_send=11, rate_limit=RateLimit(requests=600, per=60.0)))
        '≥1s'
    """
    eta = progress.eta
    if eta is None:
        return "-"
    return format_duration(eta) if progress.eta_measured else "≥" + format_duration(eta)


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
        """The cumulative ``count`` of requests at ``now`` (seconds)."""
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    @property
    def per_minute(self) -> float | None:
        """Requests per minute over the window, ``None`` before two samples."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return None if t1 <= t0 else (c1 - c0) / (t1 - t0) * 60.0


def _start_line(progress: BatchProgress) -> str:
    quota = format_rate(progress.rate_limit) if progress.rate_limit else "no quota"
    done = f", {progress.skipped} already done" if progress.skipped else ""
    eta = progress.eta
    if eta is None:
        when = ""
    elif progress.eta_measured:
        when = f" (about {format_duration(eta)})"
    else:
        when = f" (at least {format_duration(eta)}: the quota's time, before the server's)"
    return f"{plural(progress.total, 'image')}{done}, {progress.to_send} to upload at {quota}{when}"


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
        f"ETA {format_eta(progress)}, credits left {credits}, "
        f"retries {progress.retries}, 429s {progress.rate_limited}, "
        f"errors {progress.failed + progress.invalid}"
    )


def summary_lines(summary: BatchSummary) -> list[str]:
    """The end-of-run summary as plain text lines; the last one says what to do next.

    Every source is in exactly one of the first five counts.

    Example:
        >>> summary_lines(BatchSummary(total=2, done=2, uploaded=2, credits_consumed=2))[0]
        'done         2  (2 uploaded, 0 copies of identical images)'
    """
    s = summary
    copies = s.done - s.uploaded
    lines = [
        f"done     {s.done:>5}  ({s.uploaded} uploaded, "
        f"{plural(copies, 'copy', 'copies')} of identical images)"
    ]
    lines.append(f"skipped  {s.skipped:>5}  (already done by an earlier run)")
    by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items()))
    lines.append(f"failed   {s.failed:>5}" + (f"  ({by_reason})" if s.failures else ""))
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted(s.rejections.items()))
    lines.append(
        f"invalid  {s.invalid:>5}  (rejected before upload, nothing spent"
        + (f"; {rejected})" if rejected else ")")
    )
    stop = STOPS[s.stopped] if s.stopped is not None else None
    why = stop.summary.format(detail=s.stop_detail) if stop is not None else ""
    lines.append(f"not sent {s.not_sent:>5}" + (f"  ({why})" if s.not_sent and why else ""))
    left = "" if s.credits_remaining is None else f", {s.credits_remaining} left"
    unanswered = (
        f", up to {s.credits_uncertain} more may have been charged (requests that got no answer)"
        if s.credits_uncertain
        else ""
    )
    lines.append(f"credits  {s.credits_consumed:>5}  consumed{unanswered}{left}")
    rpm = "-" if s.requests_per_minute is None else f"{s.requests_per_minute:.1f}/min"
    lines.append(
        f"requests {s.attempts:>5}  ({plural(s.retries, 'retry', 'retries')}), {rpm} achieved, "
        f"{s.rate_limited} x 429 received"
    )
    if s.learned_rate_limit is not None:
        spec = s.learned_rate_limit.spec
        lines.append(f"learned  {spec!r} from 429s: pass --rate {spec!r} next time")
    lines.append(f"time     {format_duration(s.elapsed):>5}")
    if s.manifest is not None:
        lines.append(f"manifest {s.manifest}")
    if s.aborted:
        lines.append("aborted: answers in flight were lost; run the same command to resume")
    elif stop is not None and s.not_sent + s.failed:
        lines.append(stop.advice)
    elif s.not_sent or s.failed:
        lines.append("run the same command again to retry what is not done (never pays twice)")
    return lines


def _phase_shown(event: Phase, verbose: bool) -> bool:
    return verbose or not event.detail


class PlainReporter:
    """One line per image done, failed or rejected, to a text stream; images already done and
    images not sent are counted, not listed, unless ``verbose``."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        self.meter = RateMeter()
        self._not_sent = 0
        self._last_status = 0.0

    def _print(self, text: str) -> None:
        say(self.stream, text)

    def phase(self, event: Phase) -> None:
        """Print the step, unless it is a detail and the reporter is not verbose."""
        if _phase_shown(event, self.verbose):
            self._print(str(event))

    def start(self, progress: BatchProgress) -> None:
        """Print what the run is about to do."""
        self._print(_start_line(progress))

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        """Print a line for the image (not-sent images are counted unless verbose)."""
        if record.status is RecordStatus.NOT_SENT and not self.verbose:
            self._not_sent += 1
            return
        self._print(_record_line(record, progress))

    def tick(self, progress: BatchProgress) -> None:
        """Print a status line every half minute."""
        self.meter.add(progress.elapsed, progress.attempts)
        if progress.elapsed - self._last_status >= _STATUS_EVERY:
            self._last_status = progress.elapsed
            self._print(_status_line(progress, self.meter.per_minute))

    def finish(self, summary: BatchSummary) -> None:
        """Print the summary."""
        if self._not_sent:
            self._print(f"not sent: {plural(self._not_sent, 'image')} (listed with -v)")
        for line in summary_lines(summary):
            self._print(line)


class _Bar:
    """The progress line: fields that fit, by priority, never cut; a bar of 10 to 40 cells."""

    def __init__(self) -> None:
        self.progress = BatchProgress()
        self.per_minute: float | None = None

    def fields(self) -> list[str]:
        """Optional fields, most important first."""
        p = self.progress
        credits = "?" if p.credits_remaining is None else str(p.credits_remaining)
        return [
            f"ETA {format_eta(p)}",
            f"errors {p.failed + p.invalid}",
            f"credits {credits}",
            _rate_against_quota(self.per_minute, p.rate_limit),
            f"retries {p.retries}",
            f"429s {p.rate_limited}",
        ]

    def layout(self, width: int) -> tuple[str, int, str]:
        """``(label, bar width, fields text)`` for a line of ``width`` cells."""
        p = self.progress
        label = "stopping" if p.stopping else "normals"
        count = f"{p.settled}/{p.total}"
        shown = [count]
        for text in self.fields():
            candidate = "  ".join([*shown, text])
            if len(label) + 1 + _MIN_BAR + 1 + len(candidate) > width:
                break
            shown.append(text)
        rest = "  ".join(shown)
        bar = max(0, min(_MAX_BAR, width - len(label) - len(rest) - 2))
        return label, bar, rest

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        label, bar, rest = self.layout(options.max_width)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        if bar:
            grid.add_column(width=bar, no_wrap=True)
        grid.add_column(no_wrap=True)
        total = max(1, self.progress.total)
        cells: list[Text | ProgressBar] = [Text(label)]
        if bar:
            cells.append(ProgressBar(total=total, completed=self.progress.settled, width=bar))
        cells.append(Text(rest))
        grid.add_row(*cells)
        yield grid


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
        self.bar = _Bar()
        self.live = Live(self.bar, console=self.console, auto_refresh=False, transient=False)
        self._started = False

    def _print(self, text: str, style: str | None = None) -> None:
        say(self.console, text, style=style)

    def phase(self, event: Phase) -> None:
        """Print the step above the bar (details only when verbose)."""
        if _phase_shown(event, self.verbose):
            self._print(str(event), style="dim")

    def start(self, progress: BatchProgress) -> None:
        """Print what the run is about to do and show the bar."""
        self._print(_start_line(progress))
        self.bar.progress = progress
        self.live.start()
        self._started = True

    def _update(self, progress: BatchProgress) -> None:
        self.bar.progress = progress
        self.bar.per_minute = self.meter.per_minute
        if self._started:
            self.live.refresh()

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        """Print failures and rejections above the bar (every image when verbose)."""
        status = record.status
        if status in (RecordStatus.FAILED, RecordStatus.INVALID) or self.verbose:
            self._print(_record_line(record, progress))
        self._update(progress)

    def tick(self, progress: BatchProgress) -> None:
        """Refresh the bar."""
        self.meter.add(progress.elapsed, progress.attempts)
        self._update(progress)

    def finish(self, summary: BatchSummary) -> None:
        """Stop the bar and print the summary."""
        if self._started:
            self._update(summary)
            self.live.stop()
        for line in summary_lines(summary):
            say(self.summary_console, line)
