"""The batch runner: a folder of portraits in, a folder of normal maps out, one credit per image.

Order of work: find and hash the sources, read the manifest, write ``skipped`` records for the
outputs already in place, copy outputs whose content was already paid for, then stream the rest
through :meth:`AsyncClient.map` (preparation in worker threads, a few images ahead). Each result
is written atomically for every source with that content and only then recorded.

Stopping: :class:`BatchControl` ``stop()`` (first Ctrl-C) stops handing images to the client and
lets those already handed over finish; running out of credits or a refused key stops the same
way. ``abort()`` (second Ctrl-C) cancels at once. In every case the manifest holds whole records,
each written after its output, and sources never handed over are recorded as ``not_sent``
(except after an abort, when a rerun finds them without a record, which means the same).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._atomic import remove_stale_temporaries
from ._batch_types import (
    BatchConfig,
    BatchControl,
    BatchProgress,
    BatchReporter,
    BatchSummary,
    NullReporter,
    StopReason,
    classify_error,
)
from ._client import AsyncClient
from ._exceptions import ClipnormalsError, InvalidImageError
from ._manifest import ManifestRecord, ManifestWriter, RecordStatus, utc_now
from ._outputs import (
    copy_outputs,
    failed_records,
    unsent_records,
    write_contact_sheets,
    write_outputs,
)
from ._plan import BatchPlan, Job, make_plan
from ._prepare import PreparedImage, PrepareOptions, prepare_image
from ._results import MapItem

__all__ = ["run_batch"]

_TICK = 0.5
_PREPARED_AHEAD = 2


async def run_batch(
    config: BatchConfig,
    *,
    client: AsyncClient,
    reporter: BatchReporter | None = None,
    control: BatchControl | None = None,
) -> BatchSummary:
    """Process every source of ``config`` through ``client``; resume where a run left off.

    The client decides the quota, retries and credit limits; give it ``max_concurrency`` of a
    few times the rate per second times the latency, not more: a graceful stop lets the images
    already handed to it finish.

    Raises:
        FileNotFoundError: an input does not exist.
        ManifestLockedError: another run is writing the same manifest.

    Example:
        >>> async def main() -> None:
        ...     config = BatchConfig(inputs=["portraits"], output_dir=Path("normals"))
        ...     async with AsyncClient(max_concurrency=4) as client:
        ...         summary = await run_batch(config, client=client)
        ...     print(summary.done, summary.skipped, summary.failed)
    """
    runner = _Runner(config, client, reporter or NullReporter(), control or BatchControl())
    try:
        return await runner.run()
    except BaseExceptionGroup as group:
        # Task groups wrap what a worker raised (a full disk, say); hand over the error itself.
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class _Runner:
    def __init__(
        self,
        config: BatchConfig,
        client: AsyncClient,
        reporter: BatchReporter,
        control: BatchControl,
    ) -> None:
        self.config = config
        self.client = client
        self.reporter = reporter
        self.control = control
        self.threads = anyio.CapacityLimiter(config.workers)
        self.write_lock = anyio.Lock()
        self.writer = ManifestWriter(config.manifest_path)
        self.counts: Counter[RecordStatus] = Counter()
        self.failures: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.copied = 0
        self.uploaded = 0
        self.total = 0
        self.to_send = 0
        self.handed: list[Job] = []
        self.settled = 0  # jobs whose records are written (each marks itself settled)
        self.finished: list[tuple[Path, Path]] = []  # (source, normal map) done or skipped
        self.stopped: str | None = None
        self.stop_detail = ""
        self.stats_before = client.stats
        self.consumed_before = client.credits.consumed
        self.started = 0.0
        self.prepare_scope = anyio.CancelScope()
        self.run_scope = anyio.CancelScope()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> BatchSummary:
        self.started = anyio.current_time()
        self.control._attach(lambda: self.request_stop(StopReason.INTERRUPTED), self.abort)
        config = self.config
        await anyio.to_thread.run_sync(self.writer.__enter__)
        try:
            with self.run_scope:
                self.reporter.phase("looking for images")
                plan = await make_plan(
                    config.inputs,
                    output_dir=config.output_dir,
                    manifest=config.manifest_path,
                    cwd=config.cwd,
                    workers=config.workers,
                    on_hashed=lambda n, total: self.reporter.phase(f"hashed {n}/{total} images"),
                )
                await anyio.to_thread.run_sync(self._prepare_folder, plan)
                self.total = plan.total
                self.to_send = len(plan.sends)
                self.reporter.start(self.progress())
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._ticker)
                    await self._execute(plan)
                    tg.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(self.writer.close)
        summary = self.summary()
        self.reporter.finish(summary)
        return summary

    def _prepare_folder(self, plan: BatchPlan) -> None:
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.config.output_dir)
        if plan.state.needs_compaction:
            self.writer.compact(plan.state)

    async def _execute(self, plan: BatchPlan) -> None:
        await self._record(plan.unreadable)
        local: list[Job] = []
        for job in plan.jobs:
            if job.needs_send:
                continue
            if job.pending or self.config.any_extras:
                local.append(job)  # a copy to make, or extras that may be missing
            else:
                await self._record_skipped(job)
        async with anyio.create_task_group() as tg:
            for job in local:
                tg.start_soon(self._copy_job, job)
        await self._send_all(plan.sends)
        if self.control.abort_requested:
            return
        await self._record_unsent(plan.sends)
        # After a Ctrl-C the user wants out: sheets can wait for the next run.
        if self.config.contact_sheets and self.finished and self.stopped != StopReason.INTERRUPTED:
            self.reporter.phase("writing contact sheets")
            await anyio.to_thread.run_sync(
                partial(write_contact_sheets, self.config, self.finished), limiter=self.threads
            )

    def request_stop(self, reason: str, detail: str = "") -> None:
        if self.stopped is None:
            self.stopped = reason
            self.stop_detail = detail
        self.prepare_scope.cancel()

    def abort(self) -> None:
        self.request_stop(StopReason.INTERRUPTED, "aborted")
        self.run_scope.cancel()

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(_TICK)
            self.reporter.tick(self.progress())

    # -- records ---------------------------------------------------------------------------

    async def _record(self, records: Sequence[ManifestRecord]) -> None:
        if not records:
            return
        async with self.write_lock:
            await anyio.to_thread.run_sync(self.writer.append, records)
        for record in records:
            self.counts[record.status] += 1
            if (
                self.config.contact_sheets  # kept only for them: O(N) paths otherwise
                and record.status in (RecordStatus.DONE, RecordStatus.SKIPPED)
                and record.output is not None
            ):
                self.finished.append((Path(record.path), self.config.output_dir / record.output))
            if record.status is RecordStatus.FAILED:
                self.failures[record.error_type or "error"] += 1
            elif record.status is RecordStatus.INVALID:
                self.rejections[record.error_type or "error"] += 1
            self.reporter.item(record, self.progress())

    async def _record_skipped(self, job: Job) -> None:
        now = utc_now()
        await self._record(
            [
                replace(record, status=RecordStatus.SKIPPED, time=now)
                for _member, record in job.complete
            ]
        )

    async def _copy_job(self, job: Job) -> None:
        """Outputs for a content already paid for: copy, and fill in missing extras."""
        with anyio.CancelScope(shield=True):
            records = await anyio.to_thread.run_sync(
                partial(copy_outputs, self.config, job), limiter=self.threads
            )
        self.copied += sum(1 for r in records if r.status is RecordStatus.DONE)
        await self._record(records)

    # -- uploads ---------------------------------------------------------------------------

    async def _send_all(self, jobs: list[Job]) -> None:
        if not jobs or self.stopped is not None:
            return
        send, receive = anyio.create_memory_object_stream[tuple[Job, PreparedImage]](
            _PREPARED_AHEAD
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._prepare_all, iter(jobs), send)
                async with self.client.map(self._handed_over(receive), prefetch=0) as items:
                    async for item in items:
                        tg.start_soon(self._settle, self.handed[item.index], item)
        finally:
            receive.close()  # when the client never pulled a single image

    async def _prepare_all(
        self, jobs: Iterator[Job], send: MemoryObjectSendStream[tuple[Job, PreparedImage]]
    ) -> None:
        with self.prepare_scope:
            async with send, anyio.create_task_group() as tg:
                for _ in range(self.config.workers):
                    tg.start_soon(self._prepare_some, jobs, send.clone())

    async def _prepare_some(
        self, jobs: Iterator[Job], send: MemoryObjectSendStream[tuple[Job, PreparedImage]]
    ) -> None:
        options = PrepareOptions(strict=self.config.strict)
        async with send:
            for job in jobs:
                primary = job.pending[0]
                if self.stopped is not None:
                    return
                try:
                    prepared = await anyio.to_thread.run_sync(
                        partial(
                            prepare_image, primary.file.path, options=options, name=primary.key
                        ),
                        limiter=self.threads,
                    )
                except InvalidImageError as exc:
                    await self._settle_failed(job, exc, RecordStatus.INVALID, attempts=0)
                    continue
                except Exception as exc:  # a bug on one image must not sink the batch
                    error = ClipnormalsError(f"cannot prepare: {type(exc).__name__}: {exc}")
                    await self._settle_failed(job, error, RecordStatus.FAILED, attempts=0)
                    continue
                if prepared.source_sha256 != job.sha256:
                    changed = InvalidImageError(
                        f"'{primary.key}' changed while the batch ran; run it again to process it"
                    )
                    await self._settle_failed(job, changed, RecordStatus.FAILED, attempts=0)
                    continue
                try:
                    await send.send((job, prepared))
                except anyio.BrokenResourceError:
                    return  # sending stopped; the job is recorded as not sent

    async def _handed_over(
        self, receive: MemoryObjectReceiveStream[tuple[Job, PreparedImage]]
    ) -> AsyncIterator[PreparedImage]:
        async with receive:
            async for job, prepared in receive:
                if self.stopped is not None:
                    return
                self.handed.append(job)
                yield prepared

    async def _settle(self, job: Job, item: MapItem[PreparedImage]) -> None:
        # Shielded: the server has answered (and maybe charged); the result must reach the disk
        # and the manifest even when the run is being aborted.
        with anyio.CancelScope(shield=True):
            if item.result is not None:
                self.uploaded += 1
                records = await anyio.to_thread.run_sync(
                    partial(
                        write_outputs, self.config, job, item.result, item.source, item.attempts
                    ),
                    limiter=self.threads,
                )
                self.copied += len(records) - 1
                self._mark_settled(job)
                await self._record(records)
                return
            error = item.error
            assert error is not None  # noqa: S101 - an item holds a result or an error
            status, stop = classify_error(error)
            if stop is not None:
                self.request_stop(stop, error.message)
            await self._settle_failed(job, error, status, attempts=item.attempts)

    async def _settle_failed(
        self, job: Job, error: ClipnormalsError, status: RecordStatus, *, attempts: int
    ) -> None:
        self._mark_settled(job)
        await self._record(failed_records(job, error, status, attempts=attempts))

    def _mark_settled(self, job: Job) -> None:
        if not job.settled:
            job.settled = True
            self.settled += 1

    async def _record_unsent(self, jobs: list[Job]) -> None:
        unsent = [j for j in jobs if not j.settled]
        error_type, message = {
            StopReason.CREDITS: ("CreditBudgetError", "not sent: credits ran out"),
            StopReason.AUTH: ("ClientClosedError", "not sent: the server refused the API key"),
        }.get(self.stopped or "", ("Interrupted", "not sent: the run was interrupted"))
        if self.stop_detail and self.stopped != StopReason.INTERRUPTED:
            message = f"{message} ({self.stop_detail})"
        await self._record(unsent_records(unsent, error_type, message))

    # -- reporting -------------------------------------------------------------------------

    def progress(self) -> BatchProgress:
        stats = self.client.stats
        before = self.stats_before
        ledger = self.client.credits
        return BatchProgress(
            total=self.total,
            to_send=self.to_send,
            done=self.counts[RecordStatus.DONE],
            copied=self.copied,
            skipped=self.counts[RecordStatus.SKIPPED],
            failed=self.counts[RecordStatus.FAILED],
            invalid=self.counts[RecordStatus.INVALID],
            not_sent=self.counts[RecordStatus.NOT_SENT],
            uploads_settled=self.settled,
            in_flight=len(self.handed) - sum(1 for j in self.handed if j.settled),
            attempts=stats.attempts - before.attempts,
            retries=stats.retries - before.retries,
            rate_limited=stats.rate_limited - before.rate_limited,
            credits_consumed=ledger.consumed - self.consumed_before,
            credits_remaining=ledger.remaining,
            rate_limit=self.client.rate_limit,
            elapsed=anyio.current_time() - self.started,
            stopping=self.stopped,
        )

    def summary(self) -> BatchSummary:
        p = self.progress()
        stats = self.client.stats
        rpm = stats.requests_per_minute if self.stats_before.attempts == 0 else None
        return BatchSummary(
            total=self.total,
            done=p.done,
            uploaded=self.uploaded,
            skipped=p.skipped,
            failed=p.failed,
            invalid=p.invalid,
            not_sent=p.not_sent,
            failures=dict(self.failures),
            rejections=dict(self.rejections),
            credits_consumed=p.credits_consumed,
            credits_remaining=p.credits_remaining,
            attempts=p.attempts,
            retries=p.retries,
            rate_limited=p.rate_limited,
            requests_per_minute=rpm,
            learned_rate_limit=stats.learned,
            elapsed=p.elapsed,
            stopped=self.stopped,
            aborted=self.control.abort_requested,
            manifest=self.config.manifest_path,
            output_dir=self.config.output_dir,
        )
