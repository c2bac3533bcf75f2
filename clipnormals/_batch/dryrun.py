"""The dry run: what a batch would send, what it would cost and how it would end, sending nothing.

It checks the output folder like a run (without leaving anything in it), finds and hashes the
sources, reads the manifest exactly like a run, and prepares every image that would be uploaded
with the client's own :meth:`~AsyncClient.prepare`, so every rejection is reported with its
reason and the preparation is timed. It then says what the client's credit limits would do: how
many uploads the budget (``--max-credits``) and the reserve let through at the last balance a
run saw, and the exit code the run would end with.

The time it gives is :func:`estimate_seconds`, the formula the live ETA uses: the quota's time,
or the measured pace if that is slower. The pace is the slower of the preparation measured here
and the pace earlier runs recorded (each upload's ``seconds`` in the manifest, over the client's
concurrency). With ``--npz``, ``--preview`` or ``--contact-sheets`` it also times those on one
image it would upload (with a flat normal map of the upload's size in place of the answer): the
``.npz`` and the preview share the run's threads with the preparation, and the contact sheets
are drawn after the last upload, one row per image. The credit balance cannot be asked of the
API without spending a credit; the dry run reports the last balance a previous run saw, with its
date.
"""

from __future__ import annotations

import io
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import anyio
import anyio.to_thread
from PIL import Image

from .._core.client import AsyncClient
from .._core.config import DEFAULT_BASE_URL
from .._core.limiter import RateLimit
from .._errors import InvalidImageError
from .._images.prepare import PreparedImage
from .._normals.normalmap import NormalMap
from .config import BatchConfig
from .discover import RegularFile
from .folder import check_output_folder
from .jobs import Job, Member
from .manifest import ManifestState
from .outcomes import ExitCode, StopReason, most_urgent
from .plan import make_plan
from .progress import estimate_seconds
from .runner import require_async_client
from .sheets import sheet_row_bytes
from .writing import npz_bytes, preview_bytes

__all__ = ["DryRunReport", "dry_run"]

# A dry run never sends, so the client it makes for itself needs no real key.
_NO_KEY = "dry-run-sends-nothing"


@dataclass(frozen=True, slots=True, kw_only=True)
class DryRunReport:
    """What a run of the same configuration, with the same client, would do.

    Attributes:
        total: sources found.
        complete: sources whose output is already in place (would be skipped).
        copies: sources that would get a copy of an output already paid for.
        to_send: uploads that would be made (one per distinct valid content).
        invalid: ``(source, reason)`` for every source that would be rejected.
        changes: how many uploads would be changed on the way, by kind (``"downscaled"``...).
        ignored: files in folders that are not images; hidden: hidden files and folders;
        outputs: earlier outputs (normal maps, previews, contact sheets) left out of folders.
        credits_needed: credits the uploads would cost (one each).
        balance: the last balance a run saw and when (``None``: never seen).
        budget, reserve: the client's credit limits.
        sendable: uploads the limits let through (``to_send`` when nothing limits them).
        stop: why the run would stop sending early, or ``None``.
        seconds: the time the uploads would take (:func:`estimate_seconds`), ``None`` unknown.
        seconds_measured: ``seconds`` rests on a measured pace, not only on the quota.
        plan: ``(source, action)`` for every source, action being ``"upload"``, ``"copy"``,
            ``"skip"`` or ``"invalid"`` (for a verbose listing).

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
    hidden: int = 0
    outputs: int = 0
    credits_needed: int = 0
    balance: tuple[int, str] | None = None
    budget: int | None = None
    reserve: int = 0
    sendable: int | None = None
    stop: StopReason | None = None
    seconds: float | None = None
    seconds_measured: bool = False
    plan: tuple[tuple[str, str], ...] = ()

    @property
    def short(self) -> int | None:
        """Credits missing for the whole job at the last known balance (0: enough)."""
        if self.balance is None:
            return None
        return max(0, self.credits_needed + self.reserve - self.balance[0])

    @property
    def not_sent(self) -> int:
        """Uploads the credit limits would leave unsent."""
        return self.to_send - (self.to_send if self.sendable is None else self.sendable)

    @property
    def exit_code(self) -> ExitCode:
        """The exit code the run would end with (as far as a dry run can know)."""
        codes = {ExitCode.OK}
        if self.invalid:
            codes.add(ExitCode.FAILED)
        if self.stop is not None:
            codes.add(ExitCode.CREDITS)
        return most_urgent(codes)


async def dry_run(
    config: BatchConfig,
    *,
    client: AsyncClient | None = None,
    rate_limit: RateLimit | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> DryRunReport:
    """Validate every source and say what a run would send, cost and do; send nothing, write
    nothing.

    Args:
        config: the batch.
        client: the client the run would use: its preparation options, quota, concurrency and
            credit limits decide the report. Nothing is sent through it. Default: a client
            with the default options (and ``rate_limit``).
        rate_limit: the quota, when no ``client`` is given.
        on_progress: called with a line of text now and then (hashing, checking).

    Raises:
        BatchInputError, OutputFolderError: as a run would, before anything else.
        TypeError: ``client`` is not an :class:`AsyncClient` (the blocking ``Client`` included).

    Example:
        >>> async def main() -> None:
        ...     report = await dry_run(BatchConfig(inputs=["portraits"], output_dir=Path("out")))
        ...     print(report.to_send, "uploads,", len(report.invalid), "rejected")
    """
    if client is not None:
        require_async_client("dry_run", client)
    if client is None:
        async with AsyncClient(
            api_key=_NO_KEY, base_url=DEFAULT_BASE_URL, rate_limit=rate_limit
        ) as own:
            return await _dry_run(config, own, on_progress)
    return await _dry_run(config, client, on_progress)


async def _dry_run(
    config: BatchConfig, client: AsyncClient, on_progress: Callable[[str], None] | None
) -> DryRunReport:
    say = on_progress or (lambda _text: None)
    await anyio.to_thread.run_sync(partial(check_output_folder, config, create=False))
    plan = await make_plan(
        config.inputs,
        output_dir=config.output_dir,
        manifest=config.manifest_path,
        cwd=config.cwd,
        shard=config.shard,
        threads=config.threads,
        on_hashed=lambda n, total: say(f"hashed {n}/{total} images"),
    )
    invalid: list[tuple[str, str]] = [(r.source, r.error or "") for r in plan.unreadable]
    actions: list[tuple[str, str]] = [(r.source, "invalid") for r in plan.unreadable]
    changes: Counter[str] = Counter()
    valid = 0
    checked = 0
    sample: tuple[Member, PreparedImage] | None = None  # an upload to time the extras on
    sends = plan.sends
    copies = sum(len(j.pending) for j in plan.jobs if not j.needs_send)
    for job in plan.jobs:
        actions.extend((m.key, "skip") for m, _ in job.complete)
        if not job.needs_send:
            actions.extend((m.key, "copy") for m in job.pending)

    async def check(job: Job) -> None:
        nonlocal valid, checked, copies, sample
        primary = job.primary
        source = RegularFile(primary.file.fspath)  # read in the thread that prepares it
        try:
            prepared = await client.prepare(source.as_source(), name=primary.key)
            if config.strict and "downscaled" in prepared.changes:
                raise InvalidImageError(
                    f"'{primary.key}' is over the API's pixel limit (BatchConfig.strict "
                    "refuses to downscale)"
                )
        except InvalidImageError as exc:
            error = source.error
            reason = exc.message if error is None else f"cannot read: {error}"
            invalid.extend((m.key, reason) for m in job.pending)
            actions.extend((m.key, "invalid") for m in job.pending)
        else:
            valid += 1
            if sample is None:
                sample = (primary, prepared)
            copies += len(job.pending) - 1
            changes.update(prepared.changes)
            actions.append((primary.key, "upload"))
            actions.extend((m.key, "copy") for m in job.pending[1:])
        checked += 1
        if checked % 50 == 0:
            say(f"checked {checked}/{len(sends)} images")

    async def worker(jobs: Iterator[Job]) -> None:
        for job in jobs:
            await check(job)

    started = anyio.current_time()
    # A few workers pulling from one iterator, as a run prepares: memory stays that of a few
    # images, never one task (and one read file) per image.
    jobs = iter(sends)
    async with anyio.create_task_group() as tg:
        for _ in range(config.threads):
            tg.start_soon(worker, jobs)
    prepare_pace = (anyio.current_time() - started) / valid if valid else None
    ledger = client.credits
    policy = ledger.policy
    balance = plan.state.last_balance()
    sendable, stop = _credit_limits(valid, balance, budget=policy.budget, reserve=policy.reserve)
    per_image = sheet_row = 0.0
    if sample is not None and (config.any_extras or config.contact_sheets):
        per_image, sheet_row = await anyio.to_thread.run_sync(_time_extras, config, *sample)
    if prepare_pace is not None:
        prepare_pace += per_image / config.threads
    pace = _slowest(prepare_pace, _history_pace(plan.state, client.max_concurrency))
    seconds = estimate_seconds(sendable, rate_limit=client.rate_limit, pace=pace)
    if seconds is not None:
        seconds += sheet_row * (sendable + copies)
    return DryRunReport(
        total=plan.total,
        complete=plan.complete_count,
        copies=copies,
        to_send=valid,
        invalid=tuple(sorted(invalid)),
        changes=dict(changes),
        ignored=plan.discovery.ignored,
        hidden=plan.discovery.hidden,
        outputs=plan.discovery.outputs,
        credits_needed=valid,
        balance=balance,
        budget=policy.budget,
        reserve=policy.reserve,
        sendable=sendable,
        stop=stop,
        seconds=seconds,
        seconds_measured=pace is not None,
        plan=tuple(sorted(actions)),
    )


def _time_extras(
    config: BatchConfig, member: Member, prepared: PreparedImage
) -> tuple[float, float]:
    """Seconds one image's ``.npz`` and preview take, and one contact-sheet row, on one thread:
    timed on ``member`` with a flat normal map of its upload's size. Blocking."""
    buf = io.BytesIO()
    Image.new("RGB", prepared.size, (128, 128, 255)).save(buf, format="JPEG")
    nm = NormalMap(buf.getvalue(), prepared=prepared)
    started = time.perf_counter()
    if config.npz:
        npz_bytes(nm)
    if config.previews:
        preview_bytes(nm, member)
    per_image = time.perf_counter() - started
    started = time.perf_counter()
    if config.contact_sheets:
        sheet_row_bytes(nm, member)
    return per_image, time.perf_counter() - started


def _credit_limits(
    uploads: int, balance: tuple[int, str] | None, *, budget: int | None, reserve: int
) -> tuple[int, StopReason | None]:
    """How many of ``uploads`` the limits let through, and what would stop the rest."""
    sendable, stop = uploads, None
    if budget is not None and budget < sendable:
        sendable, stop = budget, StopReason.BUDGET
    if balance is not None:
        spendable = max(0, balance[0] - reserve)
        if spendable < sendable:
            sendable = spendable
            stop = StopReason.RESERVE if reserve else StopReason.CREDITS
    return sendable, stop


def _history_pace(state: ManifestState, concurrency: int) -> float | None:
    """Seconds per upload earlier runs achieved: their uploads' median time over the number
    the client keeps in flight."""
    seconds = [r.seconds for r in state.records.values() if r.seconds is not None and r.credits]
    if not seconds:
        return None
    return statistics.median(seconds) / max(1, concurrency)


def _slowest(*paces: float | None) -> float | None:
    known = [p for p in paces if p is not None]
    return max(known) if known else None
