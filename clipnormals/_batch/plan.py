"""Deciding what a batch run has to do: nothing, a local copy, or one upload per content.

Sources are grouped by the SHA-256 of their bytes, so identical images cost one upload. A source
is complete when its latest manifest record says so for the same content and its output still
has the recorded size and hash; a group with a complete member, or whose content another source
already paid for, is served by copying that output instead of sending again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from .discover import Discovery, InputFile, discover, file_digest, hash_file
from .manifest import (
    COMPLETE,
    ManifestRecord,
    ManifestState,
    RecordStatus,
    read_manifest,
    utc_now,
)

__all__ = [
    "BatchPlan",
    "Job",
    "Member",
    "Outputs",
    "make_plan",
]

_HASH_CHUNK_FILES = 32
_NOT_HASHED = OSError("not hashed")


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where a source's outputs go, relative to the output folder.

    The names are derived from the key when asked for: a batch holds a plan entry per source,
    and three stored names would be most of its weight.

    Example:
        >>> Outputs.for_key("a/b.png").npz
        'a/b.png.normals.npz'
    """

    key: str

    @classmethod
    def for_key(cls, key: str) -> Outputs:
        """``<key>.normals.jpg`` (the response bytes), ``<key>.normals.npz``,
        ``<key>.preview.jpg``."""
        return cls(key)

    @property
    def normals(self) -> str:
        return f"{self.key}.normals.jpg"

    @property
    def npz(self) -> str:
        return f"{self.key}.normals.npz"

    @property
    def preview(self) -> str:
        return f"{self.key}.preview.jpg"


@dataclass(slots=True)
class Member:
    """One source of a content group."""

    file: InputFile
    previous: ManifestRecord | None

    @property
    def key(self) -> str:
        return self.file.key

    @property
    def outputs(self) -> Outputs:
        return Outputs(self.file.key)


@dataclass(slots=True)
class Job:
    """The work for one distinct content.

    Attributes:
        digest: the content's SHA-256 (raw bytes; :attr:`sha256` is its hex).
        pending: members that need their normal map written.
        complete: members whose output is intact (with their latest record); a tuple, as
            most jobs have none and an empty tuple is shared where a list is not.
        reuse: an intact output with this content (relative path) to copy from, or ``None``
            when the content has to be sent.
        reuse_record: the record of that output.
        settled: set by the runner once the job's records are written.
    """

    digest: bytes
    pending: list[Member] = field(default_factory=list)
    complete: tuple[tuple[Member, ManifestRecord], ...] = ()
    reuse: str | None = None
    reuse_record: ManifestRecord | None = None
    settled: bool = False

    @property
    def sha256(self) -> str:
        """The content's SHA-256 as hex, as the manifest records it."""
        return self.digest.hex()

    @property
    def needs_send(self) -> bool:
        return bool(self.pending) and self.reuse is None

    @property
    def members(self) -> list[Member]:
        return self.pending + [m for m, _ in self.complete]


@dataclass(slots=True)
class BatchPlan:
    """Everything a run (or a dry run) needs to know before it starts.

    Attributes:
        discovery: the files found.
        state: the manifest as read.
        jobs: one per distinct readable content, in key order of their first member.
        unreadable: records for sources that could not be read (missing, permissions).
    """

    discovery: Discovery
    state: ManifestState
    jobs: list[Job]
    unreadable: list[ManifestRecord]

    @property
    def sends(self) -> list[Job]:
        """Jobs that need an upload."""
        return [j for j in self.jobs if j.needs_send]

    @property
    def total(self) -> int:
        """Sources in the run (unreadable ones included)."""
        return sum(len(j.members) for j in self.jobs) + len(self.unreadable)

    @property
    def complete_count(self) -> int:
        """Sources whose output is already in place."""
        return sum(len(j.complete) for j in self.jobs)

    @property
    def copy_count(self) -> int:
        """Sources that get a copy of an output already paid for (this run's or an earlier)."""
        return sum(len(j.pending) - (1 if j.needs_send else 0) for j in self.jobs)


async def make_plan(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: Path,
    manifest: Path,
    cwd: Path | None = None,
    workers: int = 2,
    on_hashed: Callable[[int, int], None] | None = None,
) -> BatchPlan:
    """Find the sources, hash them, and decide what each one needs.

    Args:
        inputs: files, folders and path lists (see :func:`discover`).
        output_dir: the output folder (left out of the search when it lies inside an input).
        manifest: the manifest to resume from (missing: a first run).
        cwd: the directory relative paths are taken from.
        workers: worker threads for hashing.
        on_hashed: called as ``on_hashed(done, total)`` while hashing.
    """
    discovery = await anyio.to_thread.run_sync(
        lambda: discover(inputs, exclude=[output_dir], cwd=cwd)
    )
    state = await anyio.to_thread.run_sync(read_manifest, manifest)
    hashes = await _hash_all(discovery.files, workers=workers, on_hashed=on_hashed)
    return await anyio.to_thread.run_sync(lambda: _resolve(discovery, state, hashes, output_dir))


async def _hash_all(
    files: Sequence[InputFile],
    *,
    workers: int,
    on_hashed: Callable[[int, int], None] | None,
) -> list[bytes | OSError]:
    """The digest (or the read error) of each file, in the order of ``files``."""
    # A list by position rather than a dict by path: one slot per source, no second key.
    results: list[bytes | OSError] = [_NOT_HASHED] * len(files)
    limiter = anyio.CapacityLimiter(max(1, workers))
    total = len(files)
    hashed = 0

    def hash_chunk(start: int) -> None:
        for i in range(start, min(start + _HASH_CHUNK_FILES, total)):
            try:
                results[i] = file_digest(files[i].fspath)
            except OSError as exc:
                results[i] = exc

    async def run(start: int) -> None:
        nonlocal hashed
        await anyio.to_thread.run_sync(hash_chunk, start, limiter=limiter)
        hashed += min(_HASH_CHUNK_FILES, total - start)
        if on_hashed is not None:
            on_hashed(hashed, total)

    async with anyio.create_task_group() as tg:
        for start in range(0, total, _HASH_CHUNK_FILES):
            tg.start_soon(run, start)
    return results


def output_intact(output_dir: Path, record: ManifestRecord) -> bool:
    """True when the record's output still has the size and hash it was written with."""
    if record.output is None or record.output_size is None or record.output_sha256 is None:
        return False
    path = output_dir / record.output
    try:
        if path.stat().st_size != record.output_size:
            return False
        return hash_file(path) == record.output_sha256
    except OSError:
        return False


def _resolve(
    discovery: Discovery,
    state: ManifestState,
    hashes: Sequence[bytes | OSError],
    output_dir: Path,
) -> BatchPlan:
    jobs: dict[bytes, Job] = {}
    unreadable: list[ManifestRecord] = []
    now = utc_now()
    for entry, reason in discovery.missing:
        unreadable.append(
            ManifestRecord(
                source=entry,
                path=entry,
                sha256=None,
                status=RecordStatus.INVALID,
                error_type="FileNotFoundError",
                error=reason,
                time=now,
            )
        )
    for f, digest in zip(discovery.files, hashes, strict=True):
        if isinstance(digest, OSError):
            unreadable.append(
                ManifestRecord(
                    source=f.key,
                    path=f.fspath,
                    sha256=None,
                    status=RecordStatus.INVALID,
                    error_type=type(digest).__name__,
                    error=f"cannot read the file: {digest.strerror or digest}",
                    time=now,
                )
            )
            continue
        job = jobs.get(digest)
        if job is None:
            job = jobs[digest] = Job(digest=digest)
        member = Member(f, state.records.get(f.key))
        previous = member.previous
        if (
            previous is not None
            and previous.status in COMPLETE
            and previous.sha256 == job.sha256
            and previous.output == member.outputs.normals
            and output_intact(output_dir, previous)
        ):
            job.complete += ((member, previous),)
        elif job.pending:
            job.pending.append(member)
        else:
            job.pending = [member]  # sized for the usual one member
    by_sha = _complete_records_by_sha(state.records.values())
    for job in jobs.values():
        if not job.pending:
            continue
        if job.complete:
            _member, record = job.complete[0]
            job.reuse, job.reuse_record = record.output, record
            continue
        for record in by_sha.get(job.sha256, ()):
            if output_intact(output_dir, record):
                job.reuse, job.reuse_record = record.output, record
                break
    ordered = sorted(jobs.values(), key=lambda j: min(m.key for m in j.members))
    return BatchPlan(discovery=discovery, state=state, jobs=ordered, unreadable=unreadable)


def _complete_records_by_sha(
    records: Iterable[ManifestRecord],
) -> dict[str, list[ManifestRecord]]:
    by_sha: dict[str, list[ManifestRecord]] = {}
    for record in records:
        if record.status in COMPLETE and record.sha256 is not None:
            by_sha.setdefault(record.sha256, []).append(record)
    return by_sha
