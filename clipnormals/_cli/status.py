"""``clipnormals status``: a whole job's figures, from every manifest of its output folder."""

from __future__ import annotations

from pathlib import Path

from .._batch.manifest import RecordStatus
from .._batch.status import JobStatus, ManifestStatus, job_status
from .output import plural

__all__ = ["status_lines"]

_ORDER = (
    RecordStatus.DONE,
    RecordStatus.SKIPPED,
    RecordStatus.NOT_SENT,
    RecordStatus.FAILED,
    RecordStatus.INVALID,
)


def _counts(counts: dict[RecordStatus, int]) -> str:
    return ", ".join(f"{counts.get(s, 0)} {s.value}" for s in _ORDER)


def _manifest_line(m: ManifestStatus) -> str:
    where = f"shard {m.shard[0]}/{m.shard[1]}" if m.shard else "whole job"
    running = ", running now" if m.running else ""
    return (
        f"{where:<12} {plural(m.sources, 'image'):>12}: {_counts(m.counts)}; "
        f"{plural(m.credits, 'credit')}  ({m.path.name}{running})"
    )


def status_lines(folder: Path) -> tuple[list[str], bool]:
    """The lines ``clipnormals status`` prints, and whether the job is complete.

    Raises:
        FileNotFoundError: ``folder`` holds no manifest.
    """
    job: JobStatus = job_status(folder)
    lines = [_manifest_line(m) for m in job.manifests]
    lines.append(
        f"{'total':<12} {plural(job.sources, 'image'):>12}: {_counts(job.counts)}; "
        f"{plural(job.credits, 'credit')}"
    )
    lines.extend(f"shard {k}/{n}: no manifest yet (not started)" for k, n in job.missing_shards)
    counts = job.counts
    left = counts[RecordStatus.NOT_SENT] + counts[RecordStatus.FAILED]
    if job.complete:
        lines.append("complete: every image is done")
    else:
        parts = []
        if left:
            parts.append(f"{plural(left, 'image')} to send again")
        if counts[RecordStatus.INVALID]:
            parts.append(f"{counts[RecordStatus.INVALID]} rejected")
        if job.running:
            parts.append(f"{plural(job.running, 'run')} still writing")
        if job.missing_shards:
            parts.append(f"{plural(len(job.missing_shards), 'shard')} not started")
        lines.append("not complete: " + ", ".join(parts))
    return lines, job.complete
