"""Deciding what a batch run has to do: nothing, a local copy, or one upload per content.

Sources are grouped by the SHA-256 of their bytes, so identical images cost one upload. A source
is complete when its latest manifest record says so for the same content and its output still
has the recorded size *and* hash. A source without such a record whose output is on the disk
with a receipt naming its content is adopted (see :mod:`.receipts`): recorded ``done``, not
bought again. A group with a complete member, or whose content another source already paid for,
is served by copying that output instead of sending again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread

from .._atomic import NAME_MAX
from .discover import Discovery, InputFile, discover, file_digest, hash_file
from .jobs import Job, Member, Outputs
from .manifest import (
    COMPLETE,
    ManifestRecord,
    ManifestState,
    read_manifest,
)
from .receipts import find_receipts
from .records import Records
from .shard import Shard

__all__ = ["BatchPlan", "make_plan", "output_intact"]

_HASH_CHUNK_FILES = 32
_NOT_HASHED = OSError("not hashed")


@dataclass(slots=True)
class BatchPlan:
    """Everything a run (or a dry run) needs to know before it starts.

    Attributes:
        discovery: the files found.
        state: the manifest as read.
        jobs: one per distinct readable content, in key order of their first member.
        unreadable: records for sources that cannot be processed at all (missing, not a
            regular file, unreadable).
        adopted: records for outputs adopted through their receipts (``done``, nothing paid).
    """

    discovery: Discovery
    state: ManifestState
    jobs: list[Job]
    unreadable: list[ManifestRecord]
    adopted: list[ManifestRecord] = field(default_factory=list)

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
        """Sources whose output is already in place (adopted ones included)."""
        return sum(len(j.complete) for j in self.jobs)


async def make_plan(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: Path,
    manifest: Path,
    cwd: Path | None = None,
    threads: int = 2,
    on_hashed: Callable[[int, int], None] | None = None,
    shard: Shard | None = None,
) -> BatchPlan:
    """Find the sources, hash them, and decide what each one needs.

    Args:
        inputs: files, folders and path lists (see :func:`discover`).
        output_dir: the output folder (left out of the search when it lies inside an input).
        manifest: the manifest to resume from (missing: a first run).
        cwd: the directory relative paths are taken from.
        threads: worker threads for hashing.
        on_hashed: called as ``on_hashed(done, total)`` while hashing.
        shard: keep only this shard's sources (every source is hashed to find out).

    Raises:
        BatchInputError: an input given directly cannot be used.
    """
    discovery = await anyio.to_thread.run_sync(
        lambda: discover(inputs, exclude=[output_dir], cwd=cwd)
    )
    state = await anyio.to_thread.run_sync(read_manifest, manifest)
    hashes = await _hash_all(discovery.files, threads=threads, on_hashed=on_hashed)
    return await anyio.to_thread.run_sync(
        lambda: _resolve(discovery, state, hashes, output_dir, shard)
    )


async def _hash_all(
    files: Sequence[InputFile],
    *,
    threads: int,
    on_hashed: Callable[[int, int], None] | None,
) -> list[bytes | OSError]:
    """The digest (or the read error) of each file, in the order of ``files``."""
    # A list by position rather than a dict by path: one slot per source, no second key.
    results: list[bytes | OSError] = [_NOT_HASHED] * len(files)
    limiter = anyio.CapacityLimiter(max(1, threads))
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
    """True when the record's output still has the size *and* the hash it was written with
    (a file of the right size with other bytes is not intact)."""
    if record.output is None or record.output_size is None or record.output_sha256 is None:
        return False
    path = output_dir / record.output
    try:
        if path.stat().st_size != record.output_size:
            return False
        return hash_file(path) == record.output_sha256
    except OSError:
        return False


def _long_output_name(key: str) -> str:
    """Why the source's outputs could not be written under their names (too long for a file
    name), or ``""``. Checked before anything is sent: no credit for an output with nowhere to
    go."""
    outputs = Outputs(key)
    longest = max(
        len(os.fsencode(PurePosixPath(name).name))
        for name in (outputs.normals, outputs.npz, outputs.preview)
    )
    if longest <= NAME_MAX:
        return ""
    return (
        f"its outputs' names would be {longest} bytes, above the file-name limit of "
        f"{NAME_MAX} bytes; rename the source"
    )


def _resolve(
    discovery: Discovery,
    state: ManifestState,
    hashes: Sequence[bytes | OSError],
    output_dir: Path,
    shard: Shard | None = None,
) -> BatchPlan:
    jobs: dict[bytes, Job] = {}
    records = Records()
    unreadable = [
        records.unreadable(key, path, "NotAnImageFile", reason)
        for key, path, reason in discovery.invalid
        if shard is None or shard.owns_key(key)
    ]
    for f, digest in zip(discovery.files, hashes, strict=True):
        if shard is not None and not (
            shard.owns_key(f.key) if isinstance(digest, OSError) else shard.owns_digest(digest)
        ):
            continue
        if isinstance(digest, OSError):
            unreadable.append(
                records.unreadable(
                    f.key,
                    f.fspath,
                    type(digest).__name__,
                    f"cannot read the file: {digest.strerror or digest}",
                )
            )
            continue
        too_long = _long_output_name(f.key)
        if too_long:
            unreadable.append(records.unreadable(f.key, f.fspath, "NameTooLong", too_long))
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
    adopted = _adopt(jobs.values(), records, output_dir, paid=by_sha)
    for job in jobs.values():
        if not job.pending:
            continue
        if job.complete:
            job.reuse_record = job.complete[0][1]
            continue
        for record in by_sha.get(job.sha256, ()):
            if output_intact(output_dir, record):
                job.reuse_record = record
                break
    ordered = sorted(jobs.values(), key=lambda j: min(m.key for m in j.members))
    return BatchPlan(
        discovery=discovery, state=state, jobs=ordered, unreadable=unreadable, adopted=adopted
    )


def _adopt(
    jobs: Iterable[Job],
    records: Records,
    output_dir: Path,
    *,
    paid: dict[str, list[ManifestRecord]],
) -> list[ManifestRecord]:
    """Move pending members whose output is on the disk with a matching receipt to complete.

    The upload's credit goes on the first adopted record of a content whose payment no record
    shows yet; every other adopted source is recorded as a copy."""
    jobs = [job for job in jobs if job.pending]
    digests: dict[str, str] = {}  # member key -> the SHA-256 of its output on the disk
    wanted: dict[tuple[str, str], int] = {}  # (output, source) SHA-256 -> the output's size
    for job in jobs:
        for member in job.pending:
            path = output_dir / member.outputs.normals
            if path.is_file():  # rare: an output without a trustworthy record
                with contextlib.suppress(OSError):
                    digest = digests[member.key] = hash_file(path)
                    wanted[(digest, job.sha256)] = path.stat().st_size
    if not wanted:
        return []
    receipts = find_receipts(output_dir, wanted)
    adopted: list[ManifestRecord] = []
    for job in jobs:
        keep: list[Member] = []
        first: str | None = None
        recorded = any(r.credits for r in paid.get(job.sha256, ()))
        for member in job.pending:
            receipt = receipts.get((digests.get(member.key, ""), job.sha256))
            if receipt is None:
                keep.append(member)
                continue
            record = records.adopted(member, job, receipt, paid=not recorded and first is None)
            first = first or member.key
            adopted.append(record)
            job.complete += ((member, record),)
        job.pending = keep
    return adopted


def _complete_records_by_sha(
    records: Iterable[ManifestRecord],
) -> dict[str, list[ManifestRecord]]:
    by_sha: dict[str, list[ManifestRecord]] = {}
    for record in records:
        if record.status in COMPLETE and record.sha256 is not None:
            by_sha.setdefault(record.sha256, []).append(record)
    return by_sha
