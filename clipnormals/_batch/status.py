"""The state of a whole job, read from every manifest of its output folder: :func:`job_status`.

A job run in shards (``--shard K/N``) has one manifest per shard in one output folder; a job
run whole has ``manifest.jsonl``. Each source is counted by its latest record in its manifest.
Reading takes no lock: the runs may still be writing (a torn last line is skipped, as on
resume), and the figures are as of the moment each file was read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .config import MANIFEST_NAME
from .manifest import RecordStatus, lock_held, read_manifest
from .shard import SHARD_MANIFEST_PATTERN, manifest_paths

__all__ = ["JobStatus", "ManifestStatus", "job_status"]


@dataclass(frozen=True, slots=True)
class ManifestStatus:
    """One manifest's figures.

    Attributes:
        path: the manifest.
        counts: sources by the status of their latest record.
        credits: credits the recorded outputs cost (the sum of the records' ``credits``).
        shard: ``(K, N)`` for a shard's manifest, ``None`` for a whole job's.
        running: a run holds the manifest's lock: it is writing to it now, and its figures are
            not final.
    """

    path: Path
    counts: dict[RecordStatus, int]
    credits: int
    shard: tuple[int, int] | None
    running: bool = False

    @property
    def sources(self) -> int:
        """Sources recorded in this manifest."""
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class JobStatus:
    """The figures of every manifest in an output folder, and their sum.

    Attributes:
        manifests: one entry per manifest, the whole job's first, then the shards by N and K.
        missing_shards: ``(K, N)`` of the shards that have no manifest yet, for each N seen.
    """

    manifests: tuple[ManifestStatus, ...]
    missing_shards: tuple[tuple[int, int], ...]

    @property
    def counts(self) -> dict[RecordStatus, int]:
        """Sources by status, over every manifest."""
        total: Counter[RecordStatus] = Counter()
        for m in self.manifests:
            total.update(m.counts)
        return {status: total[status] for status in RecordStatus}

    @property
    def credits(self) -> int:
        """Credits charged for the recorded outputs, over every manifest."""
        return sum(m.credits for m in self.manifests)

    @property
    def sources(self) -> int:
        """Sources recorded, over every manifest."""
        return sum(m.sources for m in self.manifests)

    @property
    def running(self) -> int:
        """Manifests a run is writing to now."""
        return sum(m.running for m in self.manifests)

    @property
    def complete(self) -> bool:
        """True when every shard has reported, no run is writing, and every recorded source is
        done or skipped."""
        counts = self.counts
        finished = counts[RecordStatus.DONE] + counts[RecordStatus.SKIPPED]
        return (
            bool(self.manifests)
            and not self.missing_shards
            and not self.running
            and finished == self.sources
        )


def job_status(folder: Path) -> JobStatus:
    """Read every manifest in ``folder`` (``manifest.jsonl`` and
    ``manifest.shard-K-of-N.jsonl``). Blocking.

    Raises:
        FileNotFoundError: ``folder`` holds no manifest.
    """
    paths = manifest_paths(folder, default=MANIFEST_NAME)
    if not paths:
        raise FileNotFoundError(f"no manifest in {folder}")
    manifests = []
    seen: dict[int, set[int]] = {}
    for path in paths:
        state = read_manifest(path)
        records = state.records.values()
        match = SHARD_MANIFEST_PATTERN.fullmatch(path.name)
        shard = (int(match.group(1)), int(match.group(2))) if match else None
        if shard is not None:
            seen.setdefault(shard[1], set()).add(shard[0])
        manifests.append(
            ManifestStatus(
                path=path,
                counts=dict(Counter(r.status for r in records)),
                credits=sum(r.credits for r in records),
                shard=shard,
                running=lock_held(path),
            )
        )
    missing = tuple((k, n) for n in sorted(seen) for k in range(1, n + 1) if k not in seen[n])
    return JobStatus(manifests=tuple(manifests), missing_shards=missing)
