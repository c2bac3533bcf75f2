"""The units of a batch's work: a source (:class:`Member`) and a distinct content (:class:`Job`).

Also where a source's outputs go (:class:`Outputs`), relative to the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .discover import OUTPUT_SUFFIX, PREVIEW_SUFFIX, SHEETS_DIR, InputFile
from .manifest import ManifestRecord

__all__ = ["RECEIPTS_DIR", "SHEETS_DIR", "Job", "JobState", "Member", "Outputs"]

RECEIPTS_DIR = ".clipnormals/receipts"


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where a source's outputs go, relative to the output folder.

    The names are derived from the key when asked for: a batch holds a plan entry per source,
    and three stored names would be most of its weight.

    Example:
        >>> Outputs("a/b.png").npz
        'a/b.png.normals.npz'
    """

    key: str

    @property
    def normals(self) -> str:
        """``<key>.normals.jpg``: the response bytes."""
        return self.key + OUTPUT_SUFFIX

    @property
    def npz(self) -> str:
        """``<key>.normals.npz``: float32 normals and bool mask at the source's size."""
        return f"{self.key}.normals.npz"

    @property
    def preview(self) -> str:
        """``<key>.preview.jpg``: photo, normal map, mask and a relit view."""
        return self.key + PREVIEW_SUFFIX


@dataclass(slots=True)
class Member:
    """One source of a content group, with its latest record from an earlier run."""

    file: InputFile
    previous: ManifestRecord | None

    @property
    def key(self) -> str:
        """The source's key (see :class:`InputFile`)."""
        return self.file.key

    @property
    def outputs(self) -> Outputs:
        """Where its outputs go."""
        return Outputs(self.file.key)


class JobState(Enum):
    """Where a job that needs an upload stands in a run."""

    WAITING = "waiting"  # not handed to the client
    HANDED = "handed"  # handed to the client, no record yet
    SETTLED = "settled"  # its records are in the manifest


@dataclass(slots=True)
class Job:
    """The work for one distinct content.

    Attributes:
        digest: the content's SHA-256 (raw bytes; :attr:`sha256` is its hex).
        pending: members that need their normal map written.
        complete: members whose output is intact (with their latest record); a tuple, as
            most jobs have none and an empty tuple is shared where a list is not.
        reuse_record: the record of an intact output with this content to copy from, or
            ``None`` when the content has to be sent.
        state: where an upload stands (the runner moves it).
        handed_at: when it was handed to the client (event-loop clock).
    """

    digest: bytes
    pending: list[Member] = field(default_factory=list)
    complete: tuple[tuple[Member, ManifestRecord], ...] = ()
    reuse_record: ManifestRecord | None = None
    state: JobState = JobState.WAITING
    handed_at: float = 0.0

    @property
    def sha256(self) -> str:
        """The content's SHA-256 as hex, as the manifest records it."""
        return self.digest.hex()

    @property
    def needs_send(self) -> bool:
        """True when some source needs an output and no intact one exists to copy."""
        return bool(self.pending) and self.reuse_record is None

    @property
    def primary(self) -> Member:
        """The pending member that is sent (the others get copies of its output)."""
        return self.pending[0]

    @property
    def members(self) -> list[Member]:
        """Every source with this content."""
        return self.pending + [m for m, _ in self.complete]
