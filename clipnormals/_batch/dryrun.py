"""The dry run: what a batch would send and what it would cost, without sending anything.

It finds and hashes the sources, reads the manifest exactly like a run, and prepares every
image that would be uploaded (in worker threads), so every rejection is reported with its
reason. The credit balance cannot be asked of the API without spending a credit; the dry run
reports the last balance a previous run saw, with its date.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import anyio
import anyio.to_thread

from .._core.limiter import RateLimit
from .._errors import InvalidImageError
from .._images.prepare import PrepareOptions, prepare_image
from .plan import Job, make_plan
from .types import BatchConfig

__all__ = ["DryRunReport", "dry_run"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DryRunReport:
    """What a run of the same configuration would do.

    Attributes:
        total: sources found.
        complete: sources whose output is already in place (would be skipped).
        copies: sources that would get a copy of an output already paid for.
        to_send: uploads that would be made (one per distinct valid content).
        invalid: ``(source, reason)`` for every source that would be rejected.
        changes: how many uploads would be changed on the way, by kind (``"downscaled"``...).
        ignored: files in folders that are not images.
        credits_needed: credits the uploads would cost (one each).
        balance: the last balance a run saw and when (``None``: never seen).
        seconds: the time the quota needs for the uploads, when a quota was given.

    Example:
        >>> DryRunReport(total=3, to_send=3, credits_needed=3, balance=(2, "2024-05-01")).short
        1
    """

    total: int = 0
    complete: int = 0
    copies: int = 0
    to_send: int = 0
    invalid: tuple[tuple[str, str], ...] = ()
    changes: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    credits_needed: int = 0
    balance: tuple[int, str] | None = None
    seconds: float | None = None

    @property
    def short(self) -> int | None:
        """Credits missing for the whole job at the last known balance (0: enough)."""
        if self.balance is None:
            return None
        return max(0, self.credits_needed - self.balance[0])


async def dry_run(
    config: BatchConfig,
    *,
    rate_limit: RateLimit | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> DryRunReport:
    """Validate every source and count what a run would send; send nothing, write nothing.

    Example:
        >>> async def main() -> None:
        ...     report = await dry_run(BatchConfig(inputs=["portraits"], output_dir=Path("out")))
        ...     print(report.to_send, "uploads,", len(report.invalid), "rejected")
    """
    say = on_progress or (lambda _text: None)
    plan = await make_plan(
        config.inputs,
        output_dir=config.output_dir,
        manifest=config.manifest_path,
        cwd=config.cwd,
        workers=config.workers,
        on_hashed=lambda n, total: say(f"hashed {n}/{total} images"),
    )
    invalid: list[tuple[str, str]] = [(r.source, r.error or "") for r in plan.unreadable]
    changes: Counter[str] = Counter()
    limiter = anyio.CapacityLimiter(config.workers)
    options = PrepareOptions(strict=config.strict)
    valid = 0
    checked = 0
    sends = plan.sends
    copies = sum(len(j.pending) for j in plan.jobs if not j.needs_send)

    async def check(job: Job) -> None:
        nonlocal valid, checked, copies
        primary = job.pending[0]
        try:
            prepared = await anyio.to_thread.run_sync(
                partial(prepare_image, primary.file.path, options=options, name=primary.key),
                limiter=limiter,
            )
        except InvalidImageError as exc:
            invalid.extend((m.key, exc.message) for m in job.pending)
        else:
            valid += 1
            copies += len(job.pending) - 1
            changes.update(prepared.changes)
        checked += 1
        if checked % 50 == 0:
            say(f"checked {checked}/{len(sends)} images")

    async with anyio.create_task_group() as tg:
        for job in sends:
            tg.start_soon(check, job)
    seconds = None
    if rate_limit is not None:
        seconds = max(0, valid - rate_limit.burst) * rate_limit.spacing
    return DryRunReport(
        total=plan.total,
        complete=plan.complete_count,
        copies=copies,
        to_send=valid,
        invalid=tuple(sorted(invalid)),
        changes=dict(changes),
        ignored=plan.discovery.ignored,
        credits_needed=valid,
        balance=plan.state.last_balance(),
        seconds=seconds,
    )
