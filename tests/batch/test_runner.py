"""The batch runner in process, against the emulator through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from PIL import Image

from clipnormals import CreditPolicy, RetryPolicy
from clipnormals._batch.dryrun import dry_run
from clipnormals._batch.manifest import (
    ManifestLockedError,
    ManifestRecord,
    ManifestWriter,
    RecordStatus,
    read_manifest,
)
from clipnormals._batch.runner import run_batch
from clipnormals.batch import (
    BatchConfig,
    BatchControl,
    BatchProgress,
    BatchSummary,
    ExitCode,
    Phase,
    StopReason,
)
from clipnormals.emulator import Emulator, Faults
from clipnormals.testing import TEST_KEY, client_for, emulator_config

from .corpus import Corpus, make_corpus

pytestmark = pytest.mark.anyio


class Recorder:
    """A reporter that keeps everything it is told."""

    def __init__(self, on_item: Callable[[ManifestRecord, BatchProgress], None] | None = None):
        self.phases: list[Phase] = []
        self.started: BatchProgress | None = None
        self.items: list[ManifestRecord] = []
        self.ticks = 0
        self.summary: BatchSummary | None = None
        self.on_item = on_item

    def phase(self, event: Phase) -> None:
        self.phases.append(event)

    def start(self, progress: BatchProgress) -> None:
        self.started = progress

    def item(self, record: ManifestRecord, progress: BatchProgress) -> None:
        self.items.append(record)
        if self.on_item is not None:
            self.on_item(record, progress)

    def tick(self, progress: BatchProgress) -> None:
        self.ticks += 1

    def finish(self, summary: BatchSummary) -> None:
        self.summary = summary


async def run(
    emulator: Emulator,
    config: BatchConfig,
    *,
    reporter: Recorder | None = None,
    control: BatchControl | None = None,
    **client: Any,
) -> BatchSummary:
    """Run the batch with a client on ``emulator``."""
    client.setdefault("max_concurrency", 4)
    async with client_for(emulator, **client) as c:
        summary = await run_batch(config, client=c, reporter=reporter, control=control)
    assert summary.accounted, summary  # every source in exactly one count, always
    return summary


def outputs(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix().removesuffix(".normals.jpg"): p.read_bytes()
        for p in out.rglob("*.normals.jpg")
    }


def latest(config: BatchConfig) -> dict[str, ManifestRecord]:
    return read_manifest(config.manifest_path).records


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return make_corpus(tmp_path / "in", 24, duplicates=3, corrupt=True)


@pytest.fixture
def config(tmp_path: Path, corpus: Corpus) -> BatchConfig:
    return BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")


def charged(emulator: Emulator) -> int:
    return emulator.stats.credits_charged


async def test_first_run_writes_every_output_and_pays_once_per_content(
    corpus: Corpus, config: BatchConfig
) -> None:
    emulator = Emulator(emulator_config(credits=1000))
    reporter = Recorder()
    summary = await run(emulator, config, reporter=reporter)

    written = outputs(config.output_dir)
    assert set(written) == set(corpus.good)
    for key, data in written.items():
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG"
            with Image.open(io.BytesIO(corpus.good[key])) as src:
                assert im.size == src.size
    # Duplicates get the same bytes as the image they copy; one upload per content.
    by_content: dict[str, set[bytes]] = {}
    for key, data in written.items():
        by_content.setdefault(corpus.sha(key), set()).add(data)
    assert all(len(v) == 1 for v in by_content.values())
    assert charged(emulator) == corpus.distinct == summary.uploaded
    assert emulator.stats.rate_limited == 0
    assert 429 not in emulator.stats.statuses

    records = latest(config)
    assert set(records) == set(corpus.good) | set(corpus.corrupt)
    done = [r for r in records.values() if r.status is RecordStatus.DONE]
    assert len(done) == len(corpus.good)
    assert sum(r.credits for r in done) == corpus.distinct
    copies = [r for r in done if r.duplicate_of is not None]
    assert len(copies) == len(corpus.good) - corpus.distinct
    assert all(r.credits == 0 and r.attempts == 0 for r in copies)
    for r in done:
        assert r.sha256 == corpus.sha(r.source)
        assert r.output == f"{r.source}.normals.jpg"
        assert r.output_sha256 == hashlib.sha256(written[r.source]).hexdigest()
    invalid = {k: r for k, r in records.items() if r.status is RecordStatus.INVALID}
    assert set(invalid) == set(corpus.corrupt)
    assert all(r.error_type == "InvalidImageError" and r.error for r in invalid.values())
    assert "empty" in (invalid["broken/empty.jpg"].error or "")

    assert summary.done == len(corpus.good)
    assert summary.invalid == len(corpus.corrupt)
    assert summary.rejections == {"InvalidImageError": len(corpus.corrupt)}
    assert summary.failed == summary.not_sent == summary.skipped == 0
    assert summary.credits_consumed == corpus.distinct
    assert summary.exit_code is ExitCode.FAILED  # corrupt files count as failures
    assert reporter.started is not None
    assert reporter.started.total == len(corpus.good) + len(corpus.corrupt)
    assert len(reporter.items) == reporter.started.total
    assert reporter.summary == summary


async def test_rerun_skips_everything_and_sends_nothing(
    corpus: Corpus, config: BatchConfig
) -> None:
    emulator = Emulator(emulator_config(credits=1000))
    await run(emulator, config)
    requests = emulator.stats.requests
    before = outputs(config.output_dir)
    manifest_after_first = config.manifest_path.read_bytes()

    summary = await run(emulator, config)

    assert emulator.stats.requests == requests
    assert summary.skipped == len(corpus.good)
    assert summary.done == 0
    assert summary.credits_consumed == 0
    assert outputs(config.output_dir) == before
    # Nothing changed: not a line is appended (no `skipped` record per image per rerun), and
    # the records keep what each output cost. The invalid files are checked again and counted.
    assert config.manifest_path.read_bytes() == manifest_after_first
    assert summary.invalid == len(corpus.corrupt)
    records = latest(config)
    done = [r for r in records.values() if r.status is RecordStatus.DONE]
    assert len(done) == len(corpus.good)
    assert sum(r.credits for r in done) == corpus.distinct
    assert len(manifest_after_first.splitlines()) == len(corpus.good) + len(corpus.corrupt)


async def test_missing_or_damaged_outputs_are_redone_without_paying_twice(
    corpus: Corpus, config: BatchConfig
) -> None:
    emulator = Emulator(emulator_config(credits=1000))
    await run(emulator, config)
    records = latest(config)
    dup = next(r for r in records.values() if r.duplicate_of is not None)
    unique = next(
        r
        for r in records.values()
        if r.status is RecordStatus.DONE
        and sum(1 for o in records.values() if o.sha256 == r.sha256) == 1
    )
    damaged = next(
        r for r in records.values()
        if r.status is RecordStatus.DONE and r.sha256 not in (dup.sha256, unique.sha256)
    )  # fmt: skip
    out = config.output_dir
    (out / (dup.output or "")).unlink()  # its content is still paid for elsewhere: a copy
    (out / (unique.output or "")).unlink()  # the only output of its content: sent again
    damaged_path = out / (damaged.output or "")
    damaged_path.write_bytes(damaged_path.read_bytes()[:-10])  # truncated by someone
    paid = charged(emulator)

    summary = await run(emulator, config)

    # The damaged one has an intact twin only if it has a duplicate; here it is unique or not,
    # either way at most the unique and the damaged contents are paid again.
    twins = sum(1 for o in records.values() if o.sha256 == damaged.sha256 and o is not damaged)
    assert charged(emulator) - paid == 1 + (0 if twins else 1)
    assert summary.done == 3
    assert summary.skipped == len(corpus.good) - 3
    assert set(outputs(out)) == set(corpus.good)
    again = latest(config)
    assert again[dup.source].status is RecordStatus.DONE
    assert again[dup.source].credits == 0
    assert again[dup.source].duplicate_of is not None
    assert again[unique.source].credits == 1


async def test_changed_source_is_processed_again(corpus: Corpus, config: BatchConfig) -> None:
    emulator = Emulator(emulator_config(credits=1000))
    await run(emulator, config)
    key = next(k for k in corpus.good if k.endswith(".png") and not k.startswith("copies"))
    from .corpus import noise_image

    (corpus.root / key).write_bytes(noise_image(99_999))
    paid = charged(emulator)
    summary = await run(emulator, config)
    assert charged(emulator) - paid == 1
    assert summary.done == 1
    assert latest(config)[key].sha256 == hashlib.sha256(noise_image(99_999)).hexdigest()


async def test_credit_limited_run_stops_cleanly_and_finishes_with_more_credits(
    tmp_path: Path,
) -> None:
    corpus = make_corpus(tmp_path / "in", 12)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=5))

    summary = await run(emulator, config)

    assert summary.stopped == StopReason.CREDITS
    assert summary.exit_code is ExitCode.CREDITS
    assert summary.done == 5
    assert summary.not_sent == 7
    assert emulator.stats.statuses.get(402, 0) == 0
    assert charged(emulator) == 5
    not_sent = [r for r in latest(config).values() if r.status is RecordStatus.NOT_SENT]
    assert len(not_sent) == 7
    assert all(r.error_type == "CreditBudgetError" and r.attempts == 0 for r in not_sent)

    emulator.set_credits(TEST_KEY, 100)
    summary = await run(emulator, config)
    assert summary.exit_code is ExitCode.OK
    assert summary.done == 7
    assert summary.skipped == 5
    assert charged(emulator) == 12
    assert set(outputs(config.output_dir)) == set(corpus.good)


async def test_budget_and_reserve_limit_what_is_sent(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 10)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=20))
    summary = await run(emulator, config, credits=CreditPolicy(budget=3))
    assert (summary.done, summary.not_sent, charged(emulator)) == (3, 7, 3)
    assert summary.exit_code is ExitCode.CREDITS
    summary = await run(emulator, config, credits=CreditPolicy(reserve=15))
    # 17 left, keep 15: two more.
    assert (summary.done, summary.not_sent, charged(emulator)) == (2, 5, 5)
    assert emulator.credits(TEST_KEY) == 15


async def test_refused_key_halts_the_batch(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 8)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=100))
    emulator.revoke(TEST_KEY)
    summary = await run(emulator, config)
    assert summary.stopped == StopReason.AUTH
    assert summary.exit_code is ExitCode.AUTH
    # Only the probe went out: nothing else is sent once the server refused the key.
    assert emulator.stats.requests == 1
    assert summary.failed == 1
    assert summary.not_sent == 7
    assert charged(emulator) == 0


async def test_failures_are_recorded_and_retried_on_the_next_run(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 6)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    # The first two requests that pass every check get a 500: with one attempt per image,
    # two images fail.
    emulator = Emulator(emulator_config(credits=100, faults=Faults.scripted("500", "500")))
    summary = await run(emulator, config, retry=RetryPolicy.disabled(), max_concurrency=1)
    assert summary.failed == 2
    assert summary.failures == {"ServerError": 2}
    assert summary.exit_code is ExitCode.FAILED
    failed = [r for r in latest(config).values() if r.status is RecordStatus.FAILED]
    assert len(failed) == 2
    assert all(r.attempts == 1 and r.error_type == "ServerError" for r in failed)

    summary = await run(emulator, config)
    assert (summary.done, summary.skipped, summary.failed) == (2, 4, 0)
    assert charged(emulator) == 6


async def test_graceful_stop_lets_in_flight_finish_and_records_the_rest(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 30)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    # A quota slow enough that images queue for tokens inside the client when the stop comes.
    emulator = Emulator(emulator_config(credits=100, rate=(20, 1.0)))
    control = BatchControl()
    at_stop: list[BatchProgress] = []

    def stop_after_five(record: ManifestRecord, progress: BatchProgress) -> None:
        if progress.done == 5 and not at_stop:
            at_stop.append(progress)
            control.stop()

    summary = await run(emulator, config, reporter=Recorder(stop_after_five), control=control)

    assert summary.stopped == StopReason.INTERRUPTED
    assert summary.exit_code is ExitCode.INTERRUPTED
    assert not summary.aborted
    # No request started after the stop: the server saw exactly the attempts made before it
    # (images waiting for a token were refused by the stopped client, not sent).
    assert emulator.stats.requests == at_stop[0].attempts
    # What was sent finished and was recorded; nothing else was paid for.
    assert charged(emulator) == summary.done == emulator.stats.requests
    assert summary.done >= 5
    assert summary.not_sent > 0
    assert summary.done + summary.not_sent == 30
    records = latest(config)
    not_sent = [r for r in records.values() if r.status is RecordStatus.NOT_SENT]
    assert len(not_sent) == summary.not_sent
    assert {r.error_type for r in not_sent} == {"Interrupted"}
    assert all(r.attempts == 0 for r in not_sent)
    summary = await run(emulator, config)
    assert summary.exit_code is ExitCode.OK
    assert charged(emulator) == 30


async def test_in_flight_counts_every_upload_handed_over_and_not_recorded(
    tmp_path: Path,
) -> None:
    """At any snapshot, done + in flight + waiting = uploads: a job never counts as neither
    done nor in flight (its slot, state and counts change in one step after its record)."""
    corpus = make_corpus(tmp_path / "in", 20)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=100))
    seen: list[BatchProgress] = []
    summary = await run(
        emulator,
        config,
        reporter=Recorder(lambda _record, progress: seen.append(progress)),
        max_concurrency=3,
    )
    assert summary.done == 20
    for progress in seen:
        assert progress.uploads_settled == progress.done  # one source per content here
        assert 0 <= progress.in_flight <= 3  # the kill -9 bound: never more than the slots


async def test_abort_leaves_a_readable_manifest_and_resume_finishes(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 20)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=100))
    control = BatchControl()

    def abort_after_three(record: ManifestRecord, progress: BatchProgress) -> None:
        if progress.done == 3:
            control.abort()

    summary = await run(emulator, config, reporter=Recorder(abort_after_three), control=control)
    assert summary.aborted
    assert summary.exit_code is ExitCode.INTERRUPTED
    state = read_manifest(config.manifest_path)
    assert not state.torn
    assert state.bad_lines == 0
    recorded = {r.sha256 for r in state.records.values() if r.status is RecordStatus.DONE}
    # Results already received are written even when aborting (their settling is shielded);
    # an abort cancels the requests in flight, and the server may have charged those (at most
    # max_concurrency=4 of them) without its answer ever being read, as with kill -9.
    assert len(recorded) >= 3
    assert 0 <= charged(emulator) - len(recorded) <= 4

    lost = charged(emulator) - len(recorded)
    summary = await run(emulator, config)
    assert summary.exit_code is ExitCode.OK
    assert set(outputs(config.output_dir)) == set(corpus.good)
    assert charged(emulator) == 20 + lost


async def test_npz_previews_and_contact_sheets(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 5, duplicates=1)
    config = BatchConfig(
        inputs=[corpus.root], output_dir=tmp_path / "out", npz=True, previews=True,
        contact_sheets=True,
    )  # fmt: skip
    emulator = Emulator(emulator_config(credits=100))
    await run(emulator, config)
    out = config.output_dir
    for key, data in corpus.good.items():
        with np.load(out / f"{key}.normals.npz") as npz:
            normals, mask = npz["normals"], npz["mask"]
        with Image.open(io.BytesIO(data)) as src:
            w, h = src.size
        assert normals.shape == (h, w, 3)
        assert normals.dtype == np.float32
        assert mask.shape == (h, w)
        assert mask.dtype == np.bool_
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
        with Image.open(out / f"{key}.preview.jpg") as preview:
            assert preview.format == "JPEG"
    sheets = sorted((out / "contact-sheets").glob("sheet-*.jpg"))
    assert [p.name for p in sheets] == ["sheet-001.jpg"]

    # Extras deleted later are made again from the normal map already paid for.
    (out / f"{next(iter(corpus.good))}.normals.npz").unlink()
    requests = emulator.stats.requests
    summary = await run(emulator, config)
    assert emulator.stats.requests == requests
    assert summary.skipped == len(corpus.good)
    assert (out / f"{next(iter(corpus.good))}.normals.npz").exists()


async def test_flip_y_negates_y_in_the_npz(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 1)
    emulator = Emulator(emulator_config(credits=100))
    plain = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "a", npz=True)
    flipped = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "b", npz=True, flip_y=True)
    await run(emulator, plain)
    await run(emulator, flipped)
    key = next(iter(corpus.good))
    with (
        np.load(plain.output_dir / f"{key}.normals.npz") as a,
        np.load(flipped.output_dir / f"{key}.normals.npz") as b,
    ):
        np.testing.assert_allclose(a["normals"][..., 1], -b["normals"][..., 1])
        np.testing.assert_allclose(a["normals"][..., 0], b["normals"][..., 0])


async def test_dry_run_counts_and_validates_without_sending(
    corpus: Corpus, config: BatchConfig
) -> None:
    from clipnormals import RateLimit

    report = await dry_run(config, rate_limit=RateLimit(requests=60, per=60.0))
    assert not config.output_dir.exists()
    assert report.total == len(corpus.good) + len(corpus.corrupt)
    assert report.to_send == report.credits_needed == corpus.distinct
    assert report.copies == len(corpus.good) - corpus.distinct
    assert {k for k, _ in report.invalid} == set(corpus.corrupt)
    assert all(reason for _, reason in report.invalid)
    assert report.ignored == len(corpus.others)
    assert report.balance is None
    assert report.seconds == pytest.approx((corpus.distinct - 1) * 60 / 58.9)

    emulator = Emulator(emulator_config(credits=1000))
    await run(emulator, config)
    requests = emulator.stats.requests
    report = await dry_run(config)
    assert emulator.stats.requests == requests
    assert report.complete == len(corpus.good)
    assert report.to_send == 0
    assert report.balance is not None
    assert report.balance[0] == 1000 - corpus.distinct


async def test_missing_list_entries_are_reported(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 2)
    listing = tmp_path / "todo"
    keys = sorted(corpus.good)
    listing.write_text(f"{corpus.root / keys[0]}\n{tmp_path / 'gone.png'}\n")
    config = BatchConfig(inputs=[listing], output_dir=tmp_path / "out", cwd=tmp_path)
    emulator = Emulator(emulator_config(credits=100))
    summary = await run(emulator, config)
    assert summary.done == 1
    assert summary.invalid == 1
    records = latest(config)
    gone = records[str(tmp_path / "gone.png")]
    assert gone.status is RecordStatus.INVALID
    assert "not found" in (gone.error or "")


async def test_a_second_run_on_the_same_manifest_is_refused(
    corpus: Corpus, config: BatchConfig
) -> None:
    emulator = Emulator(emulator_config(credits=100))
    with ManifestWriter(config.manifest_path), pytest.raises(ManifestLockedError):
        await run(emulator, config)
    assert emulator.stats.requests == 0


async def test_the_key_never_reaches_the_manifest(corpus: Corpus, config: BatchConfig) -> None:
    emulator = Emulator(emulator_config(credits=1000))
    await run(emulator, config)
    text = config.manifest_path.read_text()
    assert TEST_KEY not in text
    for line in text.splitlines():
        json.loads(line)


async def test_an_unreachable_server_stops_the_run_with_one_reason(tmp_path: Path) -> None:
    """A base URL where nothing listens on loopback: the run stops with one reason, records
    the images it never sent, and ends with exit 69, in bounded time (each image does not
    burn its own retries)."""
    import socket

    from clipnormals import AsyncClient, RateLimit

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    corpus = make_corpus(tmp_path / "in", 12)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    control = BatchControl()
    rate = RateLimit(requests=600, per=60.0)
    async with AsyncClient(
        api_key="unreachable-test-key",
        base_url=f"http://127.0.0.1:{port}",
        rate_limit=rate,
        max_concurrency=4,
        retry=RetryPolicy(total=1.0, initial=0.05, max_backoff=0.2),
    ) as client:
        summary = await run_batch(config, client=client, control=control)
    assert summary.stopped is StopReason.UNREACHABLE
    assert summary.exit_code is ExitCode.UNAVAILABLE
    assert summary.accounted
    assert summary.done == 0
    # At most the images in flight when the first one gave up were tried; the rest never were.
    assert summary.failed <= 4
    assert summary.not_sent >= 12 - 4
    records = latest(config)
    assert all(r.status in (RecordStatus.FAILED, RecordStatus.NOT_SENT) for r in records.values())
    assert {r.error_type for r in records.values() if r.status is RecordStatus.NOT_SENT} == {
        "CircuitOpenError"
    }


async def test_a_circuit_open_error_stops_the_run_naming_the_host(tmp_path: Path) -> None:
    import httpx

    from clipnormals import AsyncClient, CircuitOpenError, RateLimit

    def handler(request: httpx.Request) -> httpx.Response:
        raise CircuitOpenError("the client stopped trying to connect", host="api.example:443")

    corpus = make_corpus(tmp_path / "in", 6)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    async with AsyncClient(
        api_key="circuit-test-key",
        transport=httpx.MockTransport(handler),
        rate_limit=RateLimit(requests=600, per=60.0),
        retry=RetryPolicy.disabled(),
        max_concurrency=2,
    ) as client:
        summary = await run_batch(config, client=client)
    assert summary.stopped is StopReason.UNREACHABLE
    assert summary.stop_detail == "api.example:443"
    assert summary.exit_code == 69
    assert summary.accounted
    assert summary.not_sent == 6  # a circuit-open error means nothing was sent
    messages = {r.error for r in latest(config).values()}
    assert messages == {"not sent: cannot reach the server (api.example:443)"}


async def test_the_eta_follows_the_measured_pace_not_only_the_quota(tmp_path: Path) -> None:
    """With a server that takes 0.2 s an image and one request at a time, the ETA counts at
    least 0.2 s per image left, although the quota alone would allow 600 a minute."""
    from clipnormals.emulator import Latency

    corpus = make_corpus(tmp_path / "in", 12)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(
        emulator_config(credits=100, rate=(600, 60.0), latency=Latency.constant(0.2))
    )
    seen: list[BatchProgress] = []
    await run(
        emulator,
        config,
        reporter=Recorder(lambda _record, progress: seen.append(progress)),
        max_concurrency=1,
    )
    measured = [p for p in seen if p.eta_measured and p.uploads_left]
    assert measured
    for progress in measured:
        assert progress.eta is not None
        assert progress.eta >= progress.uploads_left * 0.2
        quota_only = replace(progress, pace=None).eta
        assert quota_only is not None
        assert progress.eta > quota_only


async def test_the_dry_run_prepares_a_few_images_at_a_time_not_every_one_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays that of a few images: at most ``threads`` preparations are under way (a
    source's bytes are held only while it is prepared), however many images there are."""
    from clipnormals import AsyncClient

    corpus = make_corpus(tmp_path / "in", 40)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out", threads=2)
    real_prepare = AsyncClient.prepare
    active = 0
    most = 0

    async def prepare(self: AsyncClient, image: Any, **kwargs: Any) -> Any:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await anyio.sleep(0.001)  # let every other task that could start, start
            return await real_prepare(self, image, **kwargs)
        finally:
            active -= 1

    monkeypatch.setattr(AsyncClient, "prepare", prepare)
    report = await dry_run(config)
    assert report.to_send == corpus.distinct > 2
    assert 1 <= most <= 2, most


@pytest.mark.parametrize("entry", ["run_batch", "dry_run"])
def test_the_blocking_client_is_refused_with_what_to_use(tmp_path: Path, entry: str) -> None:
    import clipnormals.batch

    config = clipnormals.batch.BatchConfig(inputs=[tmp_path], output_dir=tmp_path / "out")
    with clipnormals.Client(api_key="k" * 20, base_url="http://127.0.0.1:9") as blocking:
        call = getattr(clipnormals.batch, entry)(config, client=blocking)
        with pytest.raises(TypeError, match="AsyncClient, not the blocking Client"):
            asyncio.run(call)
    with pytest.raises(TypeError, match="AsyncClient, not str"):
        asyncio.run(getattr(clipnormals.batch, entry)(config, client="client"))
    assert not (tmp_path / "out").exists()  # refused before anything was written
