"""What a run tells its reporter: typed events, and the reporter protocol the CLI implements.

The runner never formats text for a terminal: it hands over events (a phase, a settled image,
a fresh snapshot, the summary) and the reporter decides what to show. Each phase event has a
plain-English ``str()`` and says whether it is a detail (:attr:`Phase.detail`) that only a
verbose reporter shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeAlias

from .outcomes import STOPS, StopReason

if TYPE_CHECKING:
    from .manifest import ManifestRecord
    from .progress import BatchProgress, BatchSummary

__all__ = [
    "Aborting",
    "Adopted",
    "BatchReporter",
    "Hashed",
    "NullReporter",
    "Phase",
    "Scanning",
    "SheetsWritten",
    "Stopping",
]


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


@dataclass(frozen=True, slots=True)
class Scanning:
    """Looking for the images (before hashing)."""

    detail: ClassVar[bool] = False

    def __str__(self) -> str:
        return "looking for images"


@dataclass(frozen=True, slots=True)
class Hashed:
    """``done`` of ``total`` sources hashed so far."""

    done: int
    total: int
    detail: ClassVar[bool] = True

    def __str__(self) -> str:
        return f"hashed {self.done}/{self.total} images"


@dataclass(frozen=True, slots=True)
class Adopted:
    """Outputs found without a record, proved to belong to their source by their receipt,
    and recorded without being bought again."""

    count: int
    detail: ClassVar[bool] = False

    def __str__(self) -> str:
        return (
            f"adopted {_plural(self.count, 'output')} whose record was lost "
            "(their receipts match the sources; nothing is bought again)"
        )


@dataclass(frozen=True, slots=True)
class Stopping:
    """The run stopped sending: no request starts any more, those in flight finish.

    Attributes:
        reason: why. why: the stopping error's detail.
        sent: HTTP requests this run had started when it stopped; none starts after, so the
            summary's request count is this number.
    """

    reason: StopReason
    why: str = ""
    sent: int = 0
    detail: ClassVar[bool] = False

    def __str__(self) -> str:
        sent = f"{_plural(self.sent, 'request')} sent"
        if self.reason is StopReason.INTERRUPTED:
            return (
                f"stopping: no new request starts ({sent}); those in flight finish "
                "(Ctrl-C again to abort at once)"
            )
        why = STOPS[self.reason].summary.format(detail=self.why)
        return f"stopping: {why}; no new request starts ({sent})"


@dataclass(frozen=True, slots=True)
class Aborting:
    """A second Ctrl-C: everything is cancelled at once."""

    detail: ClassVar[bool] = False

    def __str__(self) -> str:
        return "aborting"


@dataclass(frozen=True, slots=True)
class SheetsWritten:
    """Contact sheets drawn (``written``) and found up to date (``unchanged``)."""

    written: int
    unchanged: int
    detail: ClassVar[bool] = False

    def __str__(self) -> str:
        text = f"contact sheets: {self.written} drawn"
        return text + (f", {self.unchanged} unchanged" if self.unchanged else "")


Phase: TypeAlias = Scanning | Hashed | Adopted | Stopping | Aborting | SheetsWritten
"""Every phase event a run can report."""


class BatchReporter(Protocol):
    """Receives a run's events; the CLI renders them as a progress bar or as plain lines."""

    def phase(self, event: Phase) -> None:
        """A step of the run that is not one image: scanning, hashing, stopping, sheets."""

    def start(self, progress: BatchProgress) -> None:
        """The plan is known: totals are set (``progress.skipped`` counts images already done)."""

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        """A source was settled: its record is in the manifest."""

    def tick(self, progress: BatchProgress) -> None:
        """Called about twice a second with fresh counters."""

    def finish(self, summary: BatchSummary) -> None:
        """The run is over."""


class NullReporter:
    """A reporter that ignores every event."""

    def phase(self, event: Phase) -> None:
        """Ignored."""

    def start(self, progress: BatchProgress) -> None:
        """Ignored."""

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        """Ignored."""

    def tick(self, progress: BatchProgress) -> None:
        """Ignored."""

    def finish(self, summary: BatchSummary) -> None:
        """Ignored."""
