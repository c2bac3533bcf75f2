"""The batch runner: a folder of portraits in, a folder of normal maps out, one credit per image.

Order of work: prove the output folder writable and take the manifest's lock; find and hash the
sources, read the manifest, adopt outputs whose records were lost; copy outputs whose content
was already paid for; then stream the rest through :meth:`AsyncClient.map`, each image prepared
by :meth:`AsyncClient.prepare` a few images ahead. Each result is written atomically for every
source with that content and only then recorded.

Group commits: an answer's outputs are written (data flushed, then renamed into place) as soon
as it arrives, in a worker thread, and in the same thread its records join the next commit
(:meth:`ManifestWriter.commit`), which flushes every folder the group's outputs changed once,
appends the group's records in one write and flushes the manifest once. One commit runs at a
time; records that arrive meanwhile wait for the next one. So a record is on the disk only
after its output is, whatever the instant of a kill or a power cut: the files are whole
(renamed into place), the manifest's lines are whole but for a torn last one (which the reader
skips), and every record names a durable output. The records are counted (and their uploads'
slots given back) on the event loop once their commit is done.

The kill -9 bound: at most ``client.max_concurrency`` uploads are handed to the client and not
yet recorded. An upload's slot is taken when it is handed over and given back only once its
record is in the manifest (once the commit that carried it is done), so an answer already
received is written before its slot takes a new request; a process killed at any instant has
at most that many answers the server may have charged for and the manifest does not show.

Stopping: :class:`BatchControl` ``stop()`` (first Ctrl-C), running out of credits, a refused
key, a server that cannot be reached and an output that cannot be written all stop the same
way: nothing more is handed to the client, the run's view of the client stops sending
(:meth:`AsyncClient.stop_sending`: images waiting for credits, a slot or a token are refused
and recorded ``not_sent``), and requests in flight finish and are recorded. ``abort()``
(second Ctrl-C) cancels at once. In every case every source ends in exactly one count: each
gets a record at the end of the run (``not_sent`` for those never sent, ``failed`` for those
an abort cut off in flight), or was already done.
"""

from __future__ import annotations

import operator
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.client import AsyncClient
from .._core.results import MapItem
from .._core.sync import Client
from .._errors import ClipnormalsError, InvalidImageError
from .._images.prepare import PreparedImage
from .config import BatchConfig
from .control import BatchControl
from .discover import RegularFile
from .events import (
    Aborting,
    Adopted,
    BatchReporter,
    Hashed,
    NullReporter,
    Scanning,
    SheetsWritten,
    Stopping,
)
from .folder import check_output_folder, tidy_output_folder
from .jobs import Job, JobState
from .manifest import Geometry, ManifestRecord, ManifestWriteError, ManifestWriter, RecordStatus
from .outcomes import STOPS, RunContext, StopReason, classify
from .plan import BatchPlan, make_plan
from .progress import BatchProgress, BatchSummary, PaceMeter, progress_fields
from .receipts import ReceiptLog
from .records import Records
from .sheets import SheetEntry, write_contact_sheets
from .writing import read_output, write_content, write_fresh

__all__ = ["run_batch"]

_TICK = 0.5
# How long a commit waits for the answers still in flight to join it: one flush of the folders
# and one of the manifest then serve several uploads. Bounds the extra time an upload's slot
# is held after its outputs are written.
_COMMIT_LINGER = 0.02
_PREPARED_AHEAD = 2
# What a record says about its source; a new record equal in these changes nothing.
_MEANINGFUL = (
    "path",
    "sha256",
    "status",
    "output",
    "output_sha256",
    "error_type",
    "error",
    "duplicate_of",
)


async def run_batch(
    config: BatchConfig,
    *,
    client: AsyncClient,
    reporter: BatchReporter | None = None,
    control: BatchControl | None = None,
) -> BatchSummary:
    """Process every source of ``config`` through ``client``; resume where a run left off.

    The client decides the quota, retries, credit limits, how images are prepared and how many
    requests are in flight (``max_concurrency``, also the most uploads a ``kill -9`` can lose).
    The run sends through a view of the client (:meth:`AsyncClient.with_options`), which it
    stops on a stop: no request starts after one, and the client itself stays usable.

    Raises:
        BatchInputError: an input given directly cannot be used; nothing was sent.
        OutputFolderError: the output folder cannot be written; nothing was sent.
        ManifestLockedError: another run is writing the same manifest; nothing was sent.
        TypeError: ``client`` is not an :class:`AsyncClient` (the blocking ``Client`` included).
        ManifestWriteError: the manifest could not be written before the first request (a
            full disk); nothing was sent.

    Example:
        >>> async def main() -> None:
        ...     config = BatchConfig(inputs=["portraits"], output_dir=Path("normals"))
        ...     async with AsyncClient(max_concurrency=4) as client:
        ...         summary = await run_batch(config, client=client)
        ...     print(summary.done, summary.skipped, summary.failed)
    """
    require_async_client("run_batch", client)
    runner = _Runner(config, client, reporter or NullReporter(), control or BatchControl())
    try:
        return await runner.run()
    except BaseExceptionGroup as group:
        # Task groups wrap what a worker raised (a bug, say); hand over the error itself.
        raise _first_error(group) from None


def require_async_client(caller: str, client: object) -> None:
    """Refuse anything but an :class:`AsyncClient` at once, with what to use instead."""
    if isinstance(client, AsyncClient):
        return
    if isinstance(client, Client):
        raise TypeError(
            f"{caller} needs a clipnormals.AsyncClient, not the blocking Client: open an "
            "AsyncClient in the async code that awaits it (async with clipnormals.AsyncClient"
            "(...) as client), or run the batch from a shell with `clipnormals batch`"
        )
    raise TypeError(f"{caller} needs a clipnormals.AsyncClient, not {type(client).__name__}")


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@dataclass(frozen=True, slots=True)
class _Entry:
    """Committed records, with what counting them changes."""

    records: Sequence[ManifestRecord]  # to count and report
    job: Job | None = None
    copies: int = 0


class _Runner:
    def __init__(
        self,
        config: BatchConfig,
        client: AsyncClient,
        reporter: BatchReporter,
        control: BatchControl,
    ) -> None:
        self.config = config
        self.client = client.with_options()  # this run's own view: a stop stops only it
        self.reporter = reporter
        self.control = control
        self.threads = anyio.CapacityLimiter(config.threads)
        # Plain outputs wait on the disk, not the CPU: one thread per answer in hand. Extras
        # (.npz, previews) are CPU work and share the run's threads.
        self.write_threads = (
            self.threads
            if config.any_extras
            else anyio.CapacityLimiter(max(config.threads, client.max_concurrency))
        )
        self.known_folders: set[Path] = set()  # folders known to exist (ensure_folder's cache)
        self.receipts = ReceiptLog(config.output_dir)
        self.writing = 0  # worker threads writing an upload's outputs, not yet committing
        self.writing_lock = threading.Lock()
        self.writer = ManifestWriter(
            config.manifest_path,
            output_dir=config.output_dir,
            share_folder=config.shard is not None,
        )
        self.progress = BatchProgress(rate_limit=client.rate_limit)
        self.failures: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.pace = PaceMeter()
        self.sheet_entries: list[SheetEntry] = []
        self.plan: BatchPlan | None = None
        self.handed = 0  # uploads handed to the client
        self.handed_settled = 0  # ... of which the records are written
        self.slots = anyio.Semaphore(client.max_concurrency)
        self.slots_total = client.max_concurrency
        self.slot_waiters: set[anyio.CancelScope] = set()
        self.stopped: StopReason | None = None
        self.stop_detail = ""
        self.aborted = False
        self.stats_before = client.stats
        self.consumed_before = client.credits.consumed
        self.uncertain_before = client.credits.uncertain
        self.started = 0.0
        self.prepare_scope = anyio.CancelScope()
        self.run_scope = anyio.CancelScope()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> BatchSummary:
        self.started = anyio.current_time()
        config = self.config
        self.reporter.phase(Scanning())
        await anyio.to_thread.run_sync(partial(check_output_folder, config, create=True))
        await anyio.to_thread.run_sync(self.writer.__enter__)
        self.control._attach(lambda: self.request_stop(StopReason.INTERRUPTED), self.abort)
        try:
            with self.run_scope:
                if config.shard is not None:
                    # A shard with nothing to do still shows the job's status that it ran.
                    await anyio.to_thread.run_sync(
                        partial(config.manifest_path.touch, exist_ok=True)
                    )
                plan = self.plan = await make_plan(
                    config.inputs,
                    output_dir=config.output_dir,
                    manifest=config.manifest_path,
                    cwd=config.cwd,
                    shard=config.shard,
                    threads=config.threads,
                    on_hashed=lambda n, total: self.reporter.phase(Hashed(n, total)),
                )
                await anyio.to_thread.run_sync(tidy_output_folder, config, self.writer, plan.state)
                self.progress = replace(
                    self.progress,
                    total=plan.total,
                    to_send=len(plan.sends),
                    skipped=plan.complete_count,
                )
                self._remember_complete(plan)
                self.reporter.start(self.snapshot())
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._ticker)
                    await self._execute(plan)
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._finish()
                finally:
                    self.receipts.close()
                    await anyio.to_thread.run_sync(self.writer.close)
        summary = self.summary()
        self.reporter.finish(summary)
        return summary

    async def _execute(self, plan: BatchPlan) -> None:
        await self._record(plan.unreadable)
        if plan.adopted:
            # Counted as skipped from the start; their folders are flushed first, as the run
            # that wrote them may have been killed before it flushed them.
            out = self.config.output_dir
            folders = {(out / r.output).parent for r in plan.adopted if r.output}
            await anyio.to_thread.run_sync(
                partial(self.writer.commit, plan.adopted, folders=folders)
            )
            self.reporter.phase(Adopted(len(plan.adopted)))
        async with anyio.create_task_group() as tg:
            for job in plan.jobs:
                if not job.needs_send and (job.pending or self._extras_missing(job)):
                    tg.start_soon(self._copy_job, job)
        await self._send_all(plan.sends)

    async def _finish(self) -> None:
        """Record every upload that has no outcome yet; draw the contact sheets."""
        plan = self.plan
        if plan is None:
            return
        unsettled = [j for j in plan.sends if j.state is not JobState.SETTLED]
        if unsettled:
            await self._record_unsent(unsettled)
        if (
            self.config.contact_sheets
            and self.sheet_entries
            and self.stopped is not StopReason.INTERRUPTED
        ):
            drawn, unchanged = await anyio.to_thread.run_sync(
                partial(
                    write_contact_sheets,
                    self.config,
                    self.sheet_entries,
                    stop=lambda: self.control.stop_requested,  # Ctrl-C while drawing
                ),
                limiter=self.threads,
            )
            self.reporter.phase(SheetsWritten(drawn, unchanged))

    def request_stop(self, reason: StopReason, detail: str = "") -> None:
        """Stop sending: nothing more is handed over, no request starts, in-flight ones end."""
        first = self.stopped is None
        if first:
            self.stopped = reason
            self.stop_detail = detail
        self.prepare_scope.cancel()
        for scope in list(self.slot_waiters):
            scope.cancel()
        self.client.stop_sending()
        if first:
            sent = self.client.stats.attempts - self.stats_before.attempts
            self.reporter.phase(Stopping(reason, detail, sent))

    def abort(self) -> None:
        self.aborted = True
        self.reporter.phase(Aborting())
        self.request_stop(StopReason.INTERRUPTED, "aborted")
        self.run_scope.cancel()

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(_TICK)
            self.reporter.tick(self.snapshot())

    # -- records ---------------------------------------------------------------------------

    async def _record(
        self,
        records: Sequence[ManifestRecord],
        job: Job | None = None,
        *,
        copies: int = 0,
        folders: Iterable[Path] = (),
    ) -> None:
        """Commit ``records`` (after flushing ``folders``), then count them: the counts never
        run ahead of the manifest. Shielded: a record being committed is also counted.

        A record that says what the source's latest record already says (an image still
        invalid for the same reason, still not sent for the same reason) is counted but not
        appended: reruns append only what changed."""
        if not records:
            return
        with anyio.CancelScope(shield=True):
            changed = [r for r in records if self._changes(r)]
            folders = tuple(folders)
            if changed or folders:
                try:
                    await anyio.to_thread.run_sync(
                        partial(self.writer.commit, changed, folders=folders),
                        limiter=self.write_threads,
                    )
                except OSError as exc:
                    # A full disk, say: stop sending. The outputs stay, and the next run
                    # adopts them; the manifest keeps whole records only.
                    detail = exc.message if isinstance(exc, ManifestWriteError) else str(exc)
                    self.request_stop(StopReason.CANNOT_WRITE, detail)
            self._count(_Entry(records, job, copies))

    def _count(self, entry: _Entry) -> None:
        """Count committed records, settle their job and give back its slot, then report."""
        records, job = entry.records, entry.job
        # Nothing awaits here: the counts, the job's state and its slot change together, so
        # every snapshot adds up.
        if job is not None:
            if job.state is JobState.HANDED:
                self.handed_settled += 1
                self.slots.release()
            if job.state is not JobState.SETTLED and job.needs_send:
                self.progress = replace(
                    self.progress, uploads_settled=self.progress.uploads_settled + 1
                )
            job.state = JobState.SETTLED
        counts = Counter(r.status for r in records)
        uploaded = sum(1 for r in records if r.status is RecordStatus.DONE and r.credits)
        p = self.progress
        self.progress = replace(
            p,
            done=p.done + counts[RecordStatus.DONE],
            uploaded=p.uploaded + uploaded,
            copied=p.copied + entry.copies,
            failed=p.failed + counts[RecordStatus.FAILED],
            invalid=p.invalid + counts[RecordStatus.INVALID],
            not_sent=p.not_sent + counts[RecordStatus.NOT_SENT],
        )
        for record in records:
            if record.status is RecordStatus.FAILED:
                self.failures[record.error_type or "error"] += 1
            elif record.status is RecordStatus.INVALID:
                self.rejections[record.error_type or "error"] += 1
            elif record.status is RecordStatus.DONE:
                self._remember_output(record)
        snapshot = self.snapshot()
        for record in records:
            self.reporter.item(record, snapshot)

    def _changes(self, record: ManifestRecord) -> bool:
        previous = self.plan.state.records.get(record.source) if self.plan else None
        return previous is None or any(
            getattr(previous, name) != getattr(record, name) for name in _MEANINGFUL
        )

    def _remember_complete(self, plan: BatchPlan) -> None:
        for job in plan.jobs:
            for _member, record in job.complete:
                self._remember_output(record)

    def _remember_output(self, record: ManifestRecord) -> None:
        if self.config.contact_sheets and record.output and record.output_sha256:
            self.sheet_entries.append(
                SheetEntry(record.output, record.path, record.output_sha256, record.sha256 or "")
            )

    def _unsent_words(self) -> tuple[str, str]:
        """``(error_type, error)`` of the images the current stop leaves unsent (the table's)."""
        stop = STOPS[self.stopped or StopReason.INTERRUPTED]
        message = stop.not_sent.format(detail=self.stop_detail)
        if (
            self.stop_detail
            and "{detail}" not in stop.not_sent
            and self.stopped is not StopReason.INTERRUPTED
        ):
            message = f"{message} ({self.stop_detail})"
        return stop.error_type, message

    async def _record_unsent(self, jobs: list[Job]) -> None:
        error_type, message = self._unsent_words()
        records = Records()
        for job in jobs:
            if job.state is JobState.HANDED:
                # Cut off by an abort while in flight: the server may have charged for it.
                rows = records.failed(
                    job,
                    RecordStatus.FAILED,
                    "Aborted",
                    "aborted while in flight: the server may have answered, unread",
                )
            else:
                rows = records.failed(job, RecordStatus.NOT_SENT, error_type, message)
            await self._record(rows, job)

    # -- local work ------------------------------------------------------------------------

    def _extras_missing(self, job: Job) -> bool:
        config = self.config
        if not config.any_extras or not job.complete:
            return False
        out = config.output_dir
        for member, _record in job.complete:
            if config.npz and not (out / member.outputs.npz).exists():
                return True
            if config.previews and not (out / member.outputs.preview).exists():
                return True
        return False

    async def _copy_job(self, job: Job) -> None:
        """Outputs for a content already paid for: copy, and fill in missing extras."""
        source = job.reuse_record or job.complete[0][1]
        with anyio.CancelScope(shield=True):
            try:
                content = await anyio.to_thread.run_sync(
                    read_output, self.config, source, limiter=self.threads
                )
                if self.config.npz and content.geometry is None:
                    content = replace(content, geometry=await self._geometry(job))
                folders = await anyio.to_thread.run_sync(
                    partial(
                        write_content,
                        self.config,
                        content,
                        job.pending,
                        extras_for=[m for m, _ in job.complete],
                        known=self.known_folders,
                    ),
                    limiter=self.write_threads,
                )
            except OSError as exc:
                if job.pending:
                    await self._record(
                        Records().failed(job, RecordStatus.FAILED, "OSError", str(exc))
                    )
                return
            await self._record(
                Records().done(job, content), copies=len(job.pending), folders=folders
            )

    async def _geometry(self, job: Job) -> Geometry | None:
        """The geometry of an upload an old manifest did not record: prepare the source once
        more, with the client's own options."""
        member = (job.pending or [m for m, _ in job.complete])[0]
        try:
            source = RegularFile(member.file.fspath).as_source()
            prepared = await self.client.prepare(source, name=member.key)
        except ClipnormalsError:
            return None
        return Geometry.of(prepared)

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
                async with self.client.map(
                    self._hand_over(receive), image=operator.itemgetter(1), prefetch=0
                ) as items:
                    async for item in items:
                        job, prepared = item.source
                        tg.start_soon(self._settle, job, prepared, item)
        finally:
            receive.close()  # when the client never pulled a single image

    async def _prepare_all(
        self, jobs: Iterator[Job], send: MemoryObjectSendStream[tuple[Job, PreparedImage]]
    ) -> None:
        with self.prepare_scope:
            async with send, anyio.create_task_group() as tg:
                for _ in range(self.config.threads):
                    tg.start_soon(self._prepare_some, jobs, send.clone())

    async def _prepare_some(
        self, jobs: Iterator[Job], send: MemoryObjectSendStream[tuple[Job, PreparedImage]]
    ) -> None:
        async with send:
            for job in jobs:
                if self.stopped is not None:
                    return
                prepared = await self._prepare(job)
                if prepared is None:
                    continue
                try:
                    await send.send((job, prepared))
                except anyio.BrokenResourceError:
                    return  # sending stopped; the job is recorded as not sent

    async def _prepare(self, job: Job) -> PreparedImage | None:
        """The job's upload, prepared by the client; ``None`` when it was settled instead."""
        primary = job.primary
        # Read in the thread that prepares it: one hop to a thread per image, not two.
        source = RegularFile(primary.file.fspath)
        try:
            prepared = await self.client.prepare(source.as_source(), name=primary.key)
        except InvalidImageError as exc:
            error = source.error
            if error is not None:  # the file could not be read: say so, as the plan does
                error_type, message = type(error).__name__, f"cannot read the file: {error}"
            else:
                error_type, message = type(exc).__name__, exc.message
            await self._settle_failed(job, RecordStatus.INVALID, error_type, message)
            return None
        except ClipnormalsError as exc:  # the client was closed or halted meanwhile
            await self._settle_error(job, exc, attempts=0)
            return None
        if prepared.source_sha256 != job.sha256:
            await self._settle_failed(
                job,
                RecordStatus.FAILED,
                "InvalidImageError",
                f"'{primary.key}' changed while the batch ran; run it again to process it",
            )
            return None
        if self.config.strict and "downscaled" in prepared.changes:
            await self._settle_failed(
                job,
                RecordStatus.INVALID,
                "InvalidImageError",
                f"'{primary.key}' is over the API's pixel limit (BatchConfig.strict refuses to "
                "downscale)",
            )
            return None
        return prepared

    async def _hand_over(
        self, receive: MemoryObjectReceiveStream[tuple[Job, PreparedImage]]
    ) -> AsyncIterator[tuple[Job, PreparedImage]]:
        async with receive:
            async for job, prepared in receive:
                if self.stopped is not None or not await self._take_slot():
                    return
                job.state = JobState.HANDED
                job.handed_at = anyio.current_time()
                self.handed += 1
                yield job, prepared

    async def _take_slot(self) -> bool:
        """Wait until an upload handed over earlier is recorded; False when the run stops."""
        with anyio.CancelScope() as scope:
            self.slot_waiters.add(scope)
            try:
                await self.slots.acquire()
            finally:
                self.slot_waiters.discard(scope)
        if scope.cancelled_caught:
            return False
        if self.stopped is not None:
            self.slots.release()
            return False
        return True

    async def _settle(
        self, job: Job, prepared: PreparedImage, item: MapItem[tuple[Job, PreparedImage]]
    ) -> None:
        # Shielded: the server has answered (and maybe charged); the result must reach the disk
        # and the manifest even when the run is being aborted.
        with anyio.CancelScope(shield=True):
            result = item.result
            if result is None:
                assert item.error is not None  # noqa: S101 - an item holds one of the two
                await self._settle_error(job, item.error, attempts=item.attempts)
                return
            now = anyio.current_time()
            credits = result.credits_consumed if result.credits_consumed is not None else 1
            try:
                entry = await anyio.to_thread.run_sync(
                    partial(
                        self._write_upload,
                        job,
                        result.jpeg,
                        Geometry.of(prepared),
                        Records(),
                        attempts=item.attempts,
                        credits=credits,
                        remaining=result.credits_remaining,
                        seconds=round(now - job.handed_at, 3),
                    ),
                    limiter=self.write_threads,
                )
            except OSError as exc:
                self.request_stop(StopReason.CANNOT_WRITE, str(exc))
                await self._settle_failed(
                    job, RecordStatus.FAILED, "OSError", f"cannot write the output: {exc}",
                    attempts=item.attempts,
                )  # fmt: skip
                return
            self.pace.add(anyio.current_time())
            self._count(entry)

    def _write_upload(
        self,
        job: Job,
        jpeg: bytes,
        geometry: Geometry,
        records: Records,
        *,
        attempts: int,
        credits: int,
        remaining: int | None,
        seconds: float,
    ) -> _Entry:
        """Blocking, in one worker thread: write an answer's outputs and commit their records.

        One hop to a thread per upload: every hop, and every system call a thread makes, is a
        chance for the thread to take the interpreter lock from the event loop."""
        with self.writing_lock:
            self.writing += 1
        try:
            content, folders = write_fresh(
                self.config,
                jpeg,
                geometry,
                job.pending,
                source_sha256=job.sha256,
                credits=credits,
                done_at=records.now,
                receipts=self.receipts,
                known=self.known_folders,
            )
        finally:
            with self.writing_lock:
                self.writing -= 1
        done = records.done(
            job,
            content,
            attempts=attempts,
            credits=credits,
            remaining=remaining,
            seconds=seconds,
        )
        self.writer.commit(
            [r for r in done if self._changes(r)],
            folders=folders,
            linger=_COMMIT_LINGER,
            more=self._more_coming,
        )
        return _Entry(done, job, len(job.pending) - 1)

    def _more_coming(self, queued: int) -> bool:
        """Called from the committing thread: True while some answer in flight may still join
        the commit: uploads in flight outnumber the records queued, the group is smaller than
        the client's concurrency, and another writer is at work or a write thread is free for
        one (with every thread taken by committers, none could join)."""
        in_flight = self.handed - self.handed_settled
        if queued >= min(in_flight, self.slots_total):
            return False
        return self.writing > 0 or self.write_threads.available_tokens > 0

    async def _settle_error(self, job: Job, error: ClipnormalsError, *, attempts: int) -> None:
        stats = self.client.stats
        verdict = classify(
            error, RunContext(self.client.credits, responses=sum(stats.statuses.values()))
        )
        if verdict.stop is not None:
            self.request_stop(verdict.stop, verdict.detail)
        error_type, message = type(error).__name__, error.message
        if verdict.status is RecordStatus.NOT_SENT:
            error_type, message = self._unsent_words()  # as every image the stop left
        await self._settle_failed(job, verdict.status, error_type, message, attempts=attempts)

    async def _settle_failed(
        self,
        job: Job,
        status: RecordStatus,
        error_type: str,
        message: str,
        *,
        attempts: int = 0,
    ) -> None:
        await self._record(
            Records().failed(job, status, error_type, message, attempts=attempts), job
        )

    # -- reporting -------------------------------------------------------------------------

    def snapshot(self) -> BatchProgress:
        stats = self.client.stats
        before = self.stats_before
        ledger = self.client.credits
        return replace(
            self.progress,
            in_flight=self.handed - self.handed_settled,
            attempts=stats.attempts - before.attempts,
            retries=stats.retries - before.retries,
            rate_limited=stats.rate_limited - before.rate_limited,
            credits_consumed=ledger.consumed - self.consumed_before,
            credits_uncertain=ledger.uncertain - self.uncertain_before,
            credits_remaining=ledger.remaining,
            pace=self.pace.pace,
            elapsed=anyio.current_time() - self.started,
            stopping=self.stopped,
        )

    def summary(self) -> BatchSummary:
        snapshot = self.snapshot()
        stats = self.client.stats
        rpm = stats.requests_per_minute if self.stats_before.attempts == 0 else None
        return BatchSummary(
            **progress_fields(snapshot),
            failures=dict(self.failures),
            rejections=dict(self.rejections),
            requests_per_minute=rpm,
            learned_rate_limit=stats.learned,
            stopped=self.stopped,
            stop_detail=self.stop_detail,
            aborted=self.aborted,
            manifest=self.config.manifest_path,
            output_dir=self.config.output_dir,
        )
