"""The one place manifest records are made, for every outcome a source can have.

A record names its source (key, path, content hash) and says what became of it. The factory
methods below are the only callers of :class:`ManifestRecord`'s constructor in the batch
runner, so what each status carries (credits only on the upload that paid, ``duplicate_of`` on
copies, the output's hash and geometry on every output) is decided here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .discover import InputFile
from .jobs import Job, Member
from .manifest import Geometry, ManifestRecord, RecordStatus, utc_now
from .receipts import Receipt

__all__ = ["Content", "Records"]


@dataclass(frozen=True, slots=True)
class Content:
    """One normal map to write for every source of a content: the bytes and what they are.

    Attributes:
        jpeg: the response bytes, untouched.
        sha256: their SHA-256 (hex).
        geometry: how the upload relates to the source (``None`` when unknown).
        origin: the source whose upload produced these bytes (``None``: this run's upload).
    """

    jpeg: bytes
    sha256: str
    geometry: Geometry | None = None
    origin: str | None = None


class Records:
    """Builds the records of one settling step, all stamped with the same time.

    Example:
        >>> r = Records(now="2024-01-01T00:00:00.000Z").unreadable("a.png", "/in/a.png",
        ...                                                        "NotARegularFile", "a FIFO")
        >>> r.status, r.time
        (<RecordStatus.INVALID: 'invalid'>, '2024-01-01T00:00:00.000Z')
    """

    __slots__ = ("now",)

    def __init__(self, now: str | None = None) -> None:
        self.now = now or utc_now()

    def _make(
        self, member: Member, job: Job | None, status: RecordStatus, **fields: object
    ) -> ManifestRecord:
        return ManifestRecord(
            source=member.key,
            path=member.file.fspath,
            sha256=job.sha256 if job is not None else None,
            status=status,
            time=self.now,
            **fields,  # type: ignore[arg-type]
        )

    def done(
        self,
        job: Job,
        content: Content,
        *,
        attempts: int = 0,
        credits: int = 0,
        remaining: int | None = None,
        seconds: float | None = None,
    ) -> list[ManifestRecord]:
        """``done`` for every pending source of ``job``, which now has ``content`` as output.

        With ``content.origin`` unset, the first pending source is the one this run sent: it
        carries the attempts, credits and balance; the others are copies of it. Otherwise every
        source is a copy of ``content.origin``'s output, which an earlier run paid for.
        """
        records = []
        for member in job.pending:
            primary = job.primary
            paid = content.origin is None and member is primary
            records.append(
                self._make(
                    member,
                    job,
                    RecordStatus.DONE,
                    output=member.outputs.normals,
                    output_sha256=content.sha256,
                    output_size=len(content.jpeg),
                    geometry=content.geometry,
                    attempts=attempts if paid else 0,
                    credits=credits if paid else 0,
                    credits_remaining=remaining if paid else None,
                    seconds=seconds if paid else None,
                    duplicate_of=None if paid else (content.origin or primary.key),
                    done_at=self.now,
                )
            )
        return records

    def adopted(self, member: Member, job: Job, receipt: Receipt, *, paid: bool) -> ManifestRecord:
        """``done`` for a source whose output an earlier run wrote but never recorded, proved
        to be its own by the output's receipt (see :mod:`.receipts`). With ``paid``, the
        record carries what the upload cost (no other record of the content shows it)."""
        return self._make(
            member,
            job,
            RecordStatus.DONE,
            output=member.outputs.normals,
            output_sha256=receipt.output_sha256,
            output_size=receipt.output_size,
            geometry=receipt.geometry,
            credits=receipt.credits if paid else 0,
            done_at=receipt.done_at or self.now,
        )

    def failed(
        self,
        job: Job,
        status: RecordStatus,
        error_type: str,
        message: str,
        *,
        attempts: int = 0,
    ) -> list[ManifestRecord]:
        """``status`` (failed, invalid or not_sent) for every pending source of ``job``; the
        first carries the attempts, the others point at it."""
        primary = job.primary
        return [
            self._make(
                member,
                job,
                status,
                attempts=attempts if member is primary else 0,
                error_type=error_type,
                error=message,
                duplicate_of=None if member is primary else primary.key,
            )
            for member in job.pending
        ]

    def unreadable(self, key: str, path: str, error_type: str, message: str) -> ManifestRecord:
        """``invalid`` for a source that could not be read at all (no content hash)."""
        return self._make(
            Member(InputFile(path, key), None),
            None,
            RecordStatus.INVALID,
            error_type=error_type,
            error=message,
        )
