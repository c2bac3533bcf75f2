"""The value objects of a batch run: its configuration, live progress, summary, and controls."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from ._exceptions import (
    AuthenticationError,
    ClientClosedError,
    ClipnormalsError,
    CreditBudgetError,
    InsufficientCreditsError,
    InvalidImageError,
    PermissionDeniedError,
)
from ._limiter import RateLimit
from ._manifest import ManifestRecord, RecordStatus

__all__ = [
    "BatchConfig",
    "BatchControl",
    "BatchProgress",
    "BatchReporter",
    "BatchSummary",
    "ExitCode",
    "StopReason",
    "classify_error",
]

MANIFEST_NAME = "manifest.jsonl"


class ExitCode(IntEnum):
    """The process exit codes of ``clipnormals batch``, for scripts to act on."""

    OK = 0  # every source done or already done
    FAILED = 1  # some sources failed or were rejected
    USAGE = 2  # bad command line
    CREDITS = 3  # stopped for credits (reserve, budget, 402): some sources were not sent
    AUTH = 4  # halted by the server refusing the key (401, 403)
    INTERRUPTED = 130  # stopped by Ctrl-C


class StopReason:
    """Why a run stopped sending before the end (values of :attr:`BatchSummary.stopped`)."""

    CREDITS = "credits"
    AUTH = "auth"
    INTERRUPTED = "interrupted"


def classify_error(error: ClipnormalsError) -> tuple[RecordStatus, str | None]:
    """The manifest status of an image that failed with ``error``, and the reason to stop
    sending anything else (``None``: go on).

    Example:
        >>> classify_error(CreditBudgetError("budget reached"))
        (<RecordStatus.NOT_SENT: 'not_sent'>, 'credits')
        >>> classify_error(ClipnormalsError("boom"))
        (<RecordStatus.FAILED: 'failed'>, None)
    """
    if isinstance(error, CreditBudgetError):
        return RecordStatus.NOT_SENT, StopReason.CREDITS
    if isinstance(error, ClientClosedError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, InsufficientCreditsError):
            return RecordStatus.NOT_SENT, StopReason.CREDITS
        if cause is not None:
            return RecordStatus.NOT_SENT, StopReason.AUTH
        return RecordStatus.NOT_SENT, StopReason.INTERRUPTED  # the client was closed under the run
    if isinstance(error, InvalidImageError):
        return RecordStatus.INVALID, None
    if isinstance(error, InsufficientCreditsError):
        return RecordStatus.FAILED, StopReason.CREDITS
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return RecordStatus.FAILED, StopReason.AUTH
    return RecordStatus.FAILED, None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """What a batch run reads and writes.

    Args:
        inputs: files, folders (searched recursively; images recognised by their bytes) and
            text files listing paths, one a line.
        output_dir: where ``<key>.normals.jpg`` (the response bytes, untouched) is written, key
            being the source's path relative to its input.
        manifest: the JSONL manifest; default ``output_dir / "manifest.jsonl"``.
        npz: also write ``<key>.normals.npz`` (float32 ``normals``, bool ``mask``).
        previews: also write ``<key>.preview.jpg`` (source, normal map and a relit view).
        contact_sheets: also write ``contact-sheets/sheet-NNN.jpg`` over the finished images.
        strict: refuse images over the API's limits instead of downscaling them.
        flip_x, flip_y: negate X / Y in the ``.npz`` and previews (the JPEG is never changed).
        workers: worker threads for hashing, preparing and writing.
        cwd: the directory relative inputs are taken from (default: the current one).

    Example:
        >>> cfg = BatchConfig(inputs=["portraits"], output_dir=Path("out"))
        >>> cfg.manifest_path
        PosixPath('out/manifest.jsonl')
    """

    inputs: Sequence[str | os.PathLike[str]]
    output_dir: Path
    manifest: Path | None = None
    npz: bool = False
    previews: bool = False
    contact_sheets: bool = False
    strict: bool = False
    flip_x: bool = False
    flip_y: bool = False
    workers: int = 2
    cwd: Path | None = None

    def __post_init__(self) -> None:
        # A single path is a common slip: take it as one input, not as a string of characters.
        inputs = (self.inputs,) if isinstance(self.inputs, str | os.PathLike) else self.inputs
        object.__setattr__(self, "inputs", tuple(os.fspath(i) for i in inputs))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if not self.inputs:
            raise ValueError("BatchConfig.inputs must name at least one file or folder")
        if self.workers < 1:
            raise ValueError("BatchConfig.workers must be at least 1")

    @property
    def manifest_path(self) -> Path:
        """The manifest's path."""
        return self.manifest if self.manifest is not None else self.output_dir / MANIFEST_NAME

    @property
    def any_extras(self) -> bool:
        """True when outputs beyond the response JPEG (``.npz``, previews) are asked for."""
        return self.npz or self.previews


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchProgress:
    """A snapshot of a run in progress, handed to the reporter.

    ``total`` counts sources; ``to_send`` counts distinct contents that need an upload, and
    ``uploads_settled`` those of them that have an outcome (sent or not); ``in_flight`` counts
    those handed to the client and not settled yet.
    """

    total: int = 0
    to_send: int = 0
    done: int = 0
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
    credits_remaining: int | None = None
    rate_limit: RateLimit | None = None
    elapsed: float = 0.0
    stopping: str | None = None

    @property
    def settled(self) -> int:
        """Sources with a final outcome in this run."""
        return self.done + self.skipped + self.failed + self.invalid + self.not_sent

    @property
    def uploads_left(self) -> int:
        """Uploads still to make (``to_send`` minus those settled)."""
        return max(0, self.to_send - self.uploads_settled)

    @property
    def eta(self) -> float | None:
        """Seconds the quota needs for the uploads left (``None`` without a known quota)."""
        if self.rate_limit is None:
            return None
        return max(0, self.uploads_left - 1) * self.rate_limit.spacing


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSummary:
    """What a batch run did.

    Attributes:
        total: sources considered.
        done: outputs written in this run (``uploaded`` of them sent, the rest copies of an
            identical image's output).
        skipped: outputs already in place from an earlier run.
        failed: sent (or tried) and failed; ``failures`` counts them by error type.
        invalid: rejected before upload; ``rejections`` counts them by error type.
        not_sent: never sent (credits, interruption, halt).
        credits_consumed: credits this run spent; ``credits_remaining``: the last balance seen.
        attempts, retries, rate_limited: HTTP requests, retries, and 429s received.
        requests_per_minute: the start rate achieved, when there were at least two requests.
        learned_rate_limit: what the rate limiter learned from 429s it did not expect (see
            ``ClientStats.learned``), to pass as ``--rate`` next time; ``None`` if nothing.
        elapsed: seconds the run took.
        stopped: why sending stopped early (:class:`StopReason`), or ``None``.
        aborted: the run was cancelled at once (a second Ctrl-C).

    Example:
        >>> BatchSummary(total=3, done=2, failed=1).exit_code
        <ExitCode.FAILED: 1>
    """

    total: int = 0
    done: int = 0
    uploaded: int = 0
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    not_sent: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)
    rejections: Mapping[str, int] = field(default_factory=dict)
    credits_consumed: int = 0
    credits_remaining: int | None = None
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    requests_per_minute: float | None = None
    learned_rate_limit: RateLimit | None = None
    elapsed: float = 0.0
    stopped: str | None = None
    aborted: bool = False
    manifest: Path | None = None
    output_dir: Path | None = None

    @property
    def exit_code(self) -> ExitCode:
        """The exit code ``clipnormals batch`` ends with."""
        if self.stopped == StopReason.INTERRUPTED or self.aborted:
            return ExitCode.INTERRUPTED
        if self.stopped == StopReason.AUTH:
            return ExitCode.AUTH
        if self.stopped == StopReason.CREDITS or self.not_sent:
            return ExitCode.CREDITS
        if self.failed or self.invalid:
            return ExitCode.FAILED
        return ExitCode.OK


class BatchReporter(Protocol):
    """Receives a run's events; the CLI renders them as a progress bar or as plain lines."""

    def phase(self, text: str) -> None:
        """A step before the uploads start (scanning, hashing)."""

    def start(self, progress: BatchProgress) -> None:
        """The plan is known: totals are set."""

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        """A source was settled (its record is in the manifest)."""

    def tick(self, progress: BatchProgress) -> None:
        """Called about twice a second with fresh counters."""

    def finish(self, summary: BatchSummary) -> None:
        """The run is over."""


class NullReporter:
    """A reporter that ignores every event."""

    def phase(self, text: str) -> None:
        pass

    def start(self, progress: BatchProgress) -> None:
        pass

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        pass

    def tick(self, progress: BatchProgress) -> None:
        pass

    def finish(self, summary: BatchSummary) -> None:
        pass


class BatchControl:
    """Stops a running batch from outside: a signal handler, a timer, another task.

    :meth:`stop` is graceful: no new image is handed to the client, those already handed over
    finish and are recorded. :meth:`abort` cancels everything at once; the manifest stays valid
    (records are whole lines, written after their outputs) but results in flight are lost.

    Example:
        >>> control = BatchControl()
        >>> control.stop()
        >>> control.stop_requested
        True
    """

    __slots__ = ("_on_abort", "_on_stop", "abort_requested", "stop_requested")

    def __init__(self) -> None:
        self.stop_requested = False
        self.abort_requested = False
        self._on_stop: Callable[[], None] | None = None
        self._on_abort: Callable[[], None] | None = None

    def stop(self) -> None:
        """Stop handing out new images; let those in flight finish."""
        self.stop_requested = True
        if self._on_stop is not None:
            self._on_stop()

    def abort(self) -> None:
        """Cancel the run now."""
        self.stop_requested = self.abort_requested = True
        if self._on_abort is not None:
            self._on_abort()

    def _attach(self, on_stop: Callable[[], None], on_abort: Callable[[], None]) -> None:
        self._on_stop, self._on_abort = on_stop, on_abort
        if self.abort_requested:
            on_abort()
        elif self.stop_requested:
            on_stop()
