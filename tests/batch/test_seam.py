"""The seam between client, batch and CLI: one table of outcomes, one record factory, the
client's own preparation, geometry kept in the manifest, durable writes in the right order."""

from __future__ import annotations

import ast
import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import clipnormals
from clipnormals import (
    APIConnectionError,
    APITimeoutError,
    CircuitOpenError,
    ClientClosedError,
    ClientHaltedError,
    ClipnormalsError,
    CreditBudgetError,
    CreditPolicy,
    InsufficientCreditsError,
    InvalidImageError,
    PermissionDeniedError,
    PrepareOptions,
    RateLimit,
)
from clipnormals._batch import runner as runner_module
from clipnormals._batch.manifest import RecordStatus, read_manifest
from clipnormals._batch.outcomes import (
    RULES,
    STOPS,
    RunContext,
    classify,
    exit_code_help,
    exit_code_table,
)
from clipnormals._batch.progress import PaceMeter, estimate_seconds, quota_seconds
from clipnormals._batch.runner import run_batch
from clipnormals._core.credits import CreditLedger
from clipnormals.batch import (
    BatchConfig,
    BatchProgress,
    ExitCode,
    Hashed,
    SendingStoppedError,
    StopReason,
)
from clipnormals.emulator import Emulator
from clipnormals.testing import client_for, emulator_config

from .corpus import make_corpus

ROOT = Path(__file__).resolve().parents[2]
BATCH = ROOT / "clipnormals" / "_batch"
PROC_FD = Path("/proc/self/fd")

pytestmark = pytest.mark.anyio


# -- one table ---------------------------------------------------------------------------------


def _ledger(*, budget: int | None = None, reserve: int = 0, consumed: int = 0) -> CreditLedger:
    ledger = CreditLedger(CreditPolicy(budget=budget, reserve=reserve))
    ledger.consumed = consumed
    return ledger


def _status(code: int, cls: type[Exception]) -> Any:
    return cls(f"{code} error", status_code=code)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("error", "context", "status", "stop"),
    [
        (InvalidImageError("not an image"), RunContext(), RecordStatus.INVALID, None),
        (ClipnormalsError("boom"), RunContext(), RecordStatus.FAILED, None),
        (
            CreditBudgetError("budget reached"),
            RunContext(_ledger(budget=3, consumed=3)),
            RecordStatus.NOT_SENT,
            StopReason.BUDGET,
        ),
        (
            CreditBudgetError("reserve reached"),
            RunContext(_ledger(reserve=10)),
            RecordStatus.NOT_SENT,
            StopReason.RESERVE,
        ),
        # Out of credits with no reserve set: the advice must not talk about a reserve.
        (
            CreditBudgetError("reserve reached: 0 left, 0 kept"),
            RunContext(_ledger()),
            RecordStatus.NOT_SENT,
            StopReason.CREDITS,
        ),
        (
            ClientHaltedError("halted", cause=_status(402, InsufficientCreditsError)),
            RunContext(),
            RecordStatus.NOT_SENT,
            StopReason.CREDITS,
        ),
        (
            ClientHaltedError("halted", cause=_status(403, PermissionDeniedError)),
            RunContext(),
            RecordStatus.NOT_SENT,
            StopReason.AUTH,
        ),
        (_status(402, InsufficientCreditsError), RunContext(), RecordStatus.FAILED, "credits"),
        (_status(403, PermissionDeniedError), RunContext(), RecordStatus.FAILED, "auth"),
        (
            CircuitOpenError("circuit open", host="api.example"),
            RunContext(),
            RecordStatus.NOT_SENT,
            StopReason.UNREACHABLE,
        ),
        # A connection error from a client that never got an answer: the server is not there.
        (
            APIConnectionError("refused"),
            RunContext(responses=0),
            RecordStatus.FAILED,
            StopReason.UNREACHABLE,
        ),
        # ... from one that did: a transient failure of one image.
        (APIConnectionError("reset"), RunContext(responses=5), RecordStatus.FAILED, None),
        (APITimeoutError("slow"), RunContext(responses=0), RecordStatus.FAILED, None),
        (SendingStoppedError("stopped"), RunContext(), RecordStatus.NOT_SENT, "interrupted"),
        (ClientClosedError("closed"), RunContext(), RecordStatus.NOT_SENT, "interrupted"),
    ],
)
def test_the_table_maps_each_error_to_a_status_and_a_stop(
    error: ClipnormalsError, context: RunContext, status: RecordStatus, stop: str | None
) -> None:
    verdict = classify(error, context)
    assert verdict.status is status
    assert verdict.stop == (None if stop is None else StopReason(stop))


def test_every_stop_has_a_row_and_every_code_a_meaning() -> None:
    assert set(STOPS) == set(StopReason)
    for code in ExitCode:
        assert code.meaning
    # Subclasses come before their bases: no rule is shadowed by an earlier, wider one.
    for i, rule in enumerate(RULES):
        for earlier in RULES[:i]:
            assert not (issubclass(rule.error, earlier.error) and earlier.when is None), (
                f"{rule.error.__name__} is shadowed by {earlier.error.__name__}"
            )
    assert RULES[-1].error is ClipnormalsError


def test_circuit_open_names_the_host_in_the_stop() -> None:
    verdict = classify(CircuitOpenError("circuit open", host="api.example:443"))
    assert STOPS[verdict.stop or StopReason.INTERRUPTED].summary.format(detail=verdict.detail) == (
        "cannot reach the server (api.example:443)"
    )
    assert STOPS[StopReason.UNREACHABLE].exit_code == ExitCode.UNAVAILABLE == 69


def _between(text: str) -> str:
    match = re.search(r"<!-- exit-codes[^>]*-->\n(.*?)\n<!-- /exit-codes -->", text, re.S)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("page", ["README.md", "docs/batch.md"])
def test_the_documented_exit_codes_are_the_table(page: str) -> None:
    assert _between((ROOT / page).read_text()) == exit_code_table()


def test_the_command_help_is_made_from_the_table() -> None:
    from clipnormals._cli.app import EXIT_CODES

    assert exit_code_help() == EXIT_CODES
    for code in ExitCode:
        assert f"{code.value} {code.meaning}" in EXIT_CODES


def test_records_are_built_in_one_place() -> None:
    """``ManifestRecord(...)`` is called only by the record factory (and the manifest's own
    parser): every status is decided once."""
    callers = []
    for path in sorted(BATCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ManifestRecord"
            ):
                callers.append(path.name)
    assert set(callers) == {"records.py"}


# -- estimates ---------------------------------------------------------------------------------


def test_one_formula_for_every_estimate() -> None:
    rate = RateLimit(requests=60, per=60.0)
    assert quota_seconds(61, rate) == pytest.approx(60 * 60 / 58.9)
    # The slower of the quota and the measured pace decides.
    assert estimate_seconds(10, rate_limit=rate, pace=30.0) == 300.0
    assert estimate_seconds(10, rate_limit=rate, pace=0.1) == pytest.approx(9 * 60 / 58.9)
    progress = BatchProgress(to_send=11, uploads_settled=1, rate_limit=rate, pace=30.0)
    assert progress.eta == 300.0
    assert progress.eta_measured
    assert BatchProgress(to_send=11, rate_limit=rate).eta_measured is False
    # Once sending stopped, nothing is left to wait for.
    assert BatchProgress(to_send=11, rate_limit=rate, stopping=StopReason.BUDGET).eta == 0


def test_the_pace_is_measured_from_settled_uploads() -> None:
    meter = PaceMeter(window=3)
    assert meter.pace is None
    for t in (0.0, 30.0, 60.0, 61.0):
        meter.add(t)
    assert meter.pace == pytest.approx(15.5)  # (61 - 30) / 2: the last three only


# -- deprecations ------------------------------------------------------------------------------


def test_workers_is_the_old_name_of_threads(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="threads"):
        config = BatchConfig(inputs=["x"], output_dir=tmp_path, workers=3)
    assert config.threads == 3


def test_strict_moved_to_the_client(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"PrepareOptions\(strict=True\)"):
        BatchConfig(inputs=["x"], output_dir=tmp_path, strict=True)


# -- the client prepares -------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.phases: list[object] = []

    def phase(self, event: object) -> None:
        self.phases.append(event)

    def start(self, progress: object) -> None:
        pass

    def item(self, record: object, progress: object) -> None:
        pass

    def tick(self, progress: object) -> None:
        pass

    def finish(self, summary: object) -> None:
        pass


async def _run(emulator: Emulator, config: BatchConfig, **client: Any) -> Any:
    client.setdefault("max_concurrency", 4)
    reporter = _Recorder()
    async with client_for(emulator, **client) as c:
        summary = await run_batch(config, client=c, reporter=reporter)
    assert summary.accounted
    return summary, reporter


async def test_the_clients_preparation_options_apply_in_a_batch(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 3)  # 32x24 images: 768 pixels
    emulator = Emulator(emulator_config(credits=100))
    strict = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "strict")
    summary, _ = await _run(emulator, strict, prepare=PrepareOptions(strict=True, max_pixels=500))
    assert (summary.invalid, summary.done) == (3, 0)
    assert emulator.stats.requests == 0
    records = read_manifest(strict.manifest_path).records.values()
    assert all("strict" in (r.error or "") for r in records)

    lenient = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "lenient", npz=True)
    summary, _ = await _run(emulator, lenient, prepare=PrepareOptions(max_pixels=500))
    assert summary.done == 3
    for record in read_manifest(lenient.manifest_path).records.values():
        assert record.geometry is not None
        assert record.geometry.display_size == (32, 24)
        assert record.geometry.size[0] * record.geometry.size[1] <= 500  # downscaled


async def test_copies_and_extras_use_the_kept_geometry_not_a_new_preparation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path / "in", 2, duplicates=2)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out", npz=True)
    emulator = Emulator(emulator_config(credits=100))
    prepared: list[object] = []
    original = clipnormals.AsyncClient.prepare

    async def counting(self: clipnormals.AsyncClient, image: Any, **kw: Any) -> Any:
        prepared.append(kw.get("name"))
        return await original(self, image, **kw)

    monkeypatch.setattr(clipnormals.AsyncClient, "prepare", counting)
    options = {"prepare": PrepareOptions(max_pixels=500)}  # downscaled: the npz must undo it
    await _run(emulator, config, **options)
    assert len(prepared) == corpus.distinct  # once per upload, never for a copy

    # Lose every .npz and a duplicate's normal map: all are made again from the outputs
    # already paid for, with the geometry the manifest kept; no source is prepared again.
    for npz in config.output_dir.rglob("*.npz"):
        npz.unlink()
    dup = next(k for k in corpus.good if k.startswith("copies/"))
    (config.output_dir / f"{dup}.normals.jpg").unlink()
    prepared.clear()
    requests = emulator.stats.requests
    summary, _ = await _run(emulator, config, **options)
    assert prepared == []
    assert emulator.stats.requests == requests
    assert summary.done == 1  # the duplicate, copied
    for key in corpus.good:
        with np.load(config.output_dir / f"{key}.normals.npz") as npz:
            assert npz["normals"].shape == (24, 32, 3)  # the source's size, not the upload's


async def test_the_reporter_gets_typed_events(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 2)
    emulator = Emulator(emulator_config(credits=100))
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    _, reporter = await _run(emulator, config)
    hashed = [e for e in reporter.phases if isinstance(e, Hashed)]
    assert hashed
    assert hashed[-1] == Hashed(2, 2)
    assert hashed[-1].detail  # a detail: shown only by a verbose reporter
    assert str(hashed[-1]) == "hashed 2/2 images"


# -- durability ------------------------------------------------------------------------------


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.mark.skipif(not PROC_FD.is_dir(), reason="needs /proc to name file descriptors")
async def test_outputs_are_flushed_renamed_and_the_folder_flushed_before_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write -> fsync -> rename -> folder fsync -> record append -> manifest fsync, in that
    order, for every output (kills the mutants that drop either fsync)."""
    corpus = make_corpus(tmp_path / "in", 1)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=100))
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    manifest = str(config.manifest_path)

    def fsync(fd: int) -> None:
        path = _path_of(fd)
        if path == manifest:
            # What is flushed must already hold the record.
            events.append(("fsync-manifest", str(len(Path(manifest).read_bytes()))))
        else:
            events.append(("fsync", path))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("rename", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await _run(emulator, config)
    monkeypatch.undo()

    key = next(iter(corpus.good))
    output = str(config.output_dir / f"{key}.normals.jpg")
    rename = events.index(("rename", output))
    # The temporary file's data was flushed before it was renamed into place.
    flushed = [i for i, (kind, path) in enumerate(events[:rename]) if kind == "fsync"]
    assert flushed, events
    assert events[flushed[-1]][1].endswith(".clipnormals-tmp"), events
    # Then its folder, so that the rename survives a power cut.
    folder = str(Path(output).parent)
    after = events[rename + 1 :]
    dir_sync = after.index(("fsync", folder))
    # Only then is the record appended and flushed, and the flushed manifest holds it.
    record_syncs = [i for i, (kind, _) in enumerate(after) if kind == "fsync-manifest"]
    assert record_syncs, events
    assert record_syncs[0] > dir_sync, events
    assert int(after[record_syncs[0]][1]) > 0


@pytest.mark.skipif(not PROC_FD.is_dir(), reason="needs /proc to name file descriptors")
async def test_group_commits_flush_every_output_and_its_folder_before_the_records_they_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many answers at once, records are committed in groups, and every record on the
    disk at any flush of the manifest names an output that was flushed, renamed into place and
    had its folder flushed before that flush: the state a power cut at any instant leaves."""
    monkeypatch.setattr(runner_module, "_COMMIT_LINGER", 1.0)  # groups form however slow
    corpus = make_corpus(tmp_path / "in", 24)
    # Outputs in nested folders: new folders must be flushed into their parents too.
    for i, path in enumerate(sorted(corpus.root.iterdir())[:8]):
        nested = corpus.root / f"sub{i % 2}" / "deeper"
        nested.mkdir(parents=True, exist_ok=True)
        path.rename(nested / path.name)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=100))
    events: list[tuple[str, str]] = []
    flushed: list[set[str]] = []  # sources in the manifest at each of its flushes
    real_fsync, real_replace = os.fsync, os.replace
    manifest = str(config.manifest_path)

    def fsync(fd: int) -> None:
        path = _path_of(fd)
        real_fsync(fd)
        if path == manifest:
            state = read_manifest(config.manifest_path)
            flushed.append(set(state.records))
            events.append(("fsync-manifest", str(len(flushed) - 1)))
        else:
            events.append(("fsync", path))

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("rename", f"{os.fspath(src)} -> {os.fspath(dst)}"))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    summary, _ = await _run(emulator, config, max_concurrency=8)
    monkeypatch.undo()

    records = read_manifest(config.manifest_path).records
    assert summary.done == len(records) == 24
    # Several records per flush of the manifest: the commits were grouped.
    sizes = [len(b - a) for a, b in zip([set[str](), *flushed], flushed, strict=False)]
    assert max(sizes) >= 2, sizes
    out = config.output_dir
    for key, record in records.items():
        assert record.output is not None
        output = str(out / record.output)
        renames = [
            i
            for i, (kind, what) in enumerate(events)
            if kind == "rename" and what.endswith(f" -> {output}")
        ]
        assert len(renames) == 1, (key, events)
        rename = renames[0]
        temporary = events[rename][1].split(" -> ")[0]
        assert ("fsync", temporary) in events[:rename], key  # data flushed before the rename
        first = next(i for i, sources in enumerate(flushed) if key in sources)
        carried = events.index(("fsync-manifest", str(first)))
        # Every folder from the output up to the output folder's parent that the output's
        # rename (or its new folders) changed was flushed between the rename and that flush.
        folder = Path(output).parent
        assert ("fsync", str(folder)) in events[rename:carried], (key, events)
        while folder != out:
            parent = folder.parent
            created = ("fsync", str(parent)) in events[:carried]
            assert created, (key, parent)
            folder = parent


async def test_an_output_with_the_right_size_but_other_bytes_is_made_again(
    tmp_path: Path,
) -> None:
    """A resume checks the hash, not only the size."""
    corpus = make_corpus(tmp_path / "in", 3)
    config = BatchConfig(inputs=[corpus.root], output_dir=tmp_path / "out")
    emulator = Emulator(emulator_config(credits=100))
    await _run(emulator, config)
    key = sorted(corpus.good)[0]
    path = config.output_dir / f"{key}.normals.jpg"
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert path.stat().st_size == len(good)
    paid = emulator.stats.credits_charged

    summary, _ = await _run(emulator, config)

    assert summary.done == 1
    assert emulator.stats.credits_charged == paid + 1
    fresh = path.read_bytes()
    assert (
        hashlib.sha256(fresh).hexdigest()
        == read_manifest(config.manifest_path).records[key].output_sha256
    )
    with Image.open(io.BytesIO(fresh)) as im:
        im.load()
