"""The batch plan on its own: what a resume trusts, what it copies, what it adopts.

``make_plan`` reads the inputs, the manifest and the output folder and decides, per distinct
content, whether to send, copy or skip. These tests build that state by hand (records, outputs,
receipts) and read the decision, so that each rule is checked where it is taken.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clipnormals._batch.manifest import ManifestRecord, ManifestWriter, RecordStatus
from clipnormals._batch.plan import BatchPlan, make_plan
from clipnormals._batch.receipts import (
    Receipt,
    ReceiptLog,
    find_receipts,
    receipt_path,
    write_receipt,
)

from .corpus import make_corpus, noise_image

pytestmark = pytest.mark.anyio

MAP = b"\xff\xd8 a normal map \xff\xd9"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def done(source: str, root: Path, content: bytes, output: str, written: bytes) -> ManifestRecord:
    return ManifestRecord(
        source=source,
        path=str(root / source),
        sha256=sha(content),
        status=RecordStatus.DONE,
        output=output,
        output_sha256=sha(written),
        output_size=len(written),
        credits=1,
    )


async def plan(root: Path, out: Path, records: list[ManifestRecord]) -> BatchPlan:
    manifest = out / "manifest.jsonl"
    if records:
        with ManifestWriter(manifest) as writer:
            writer.append(records)
    return await make_plan([root], output_dir=out, manifest=manifest)


def decision(result: BatchPlan, key: str) -> str:
    for job in result.jobs:
        if any(m.key == key for m, _ in job.complete):
            return "complete"
        if any(m.key == key for m in job.pending):
            return "send" if job.needs_send else "copy"
    raise AssertionError(f"{key} is in no job")


async def test_an_intact_output_recorded_for_the_same_content_and_path_is_complete(
    tmp_path: Path,
) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    content = noise_image(1)
    (root / "a.png").write_bytes(content)
    (out).mkdir()
    (out / "a.png.normals.jpg").write_bytes(MAP)
    result = await plan(root, out, [done("a.png", root, content, "a.png.normals.jpg", MAP)])
    assert decision(result, "a.png") == "complete"
    assert result.sends == []


async def test_a_record_naming_another_output_file_does_not_make_the_source_complete(
    tmp_path: Path,
) -> None:
    # The record's output is intact, but it is not where this source's output goes (a manifest
    # written with another layout): the source still needs its own file, copied, not bought.
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    content = noise_image(2)
    (root / "a.png").write_bytes(content)
    (out / "old").mkdir(parents=True)
    (out / "old" / "a.png.jpg").write_bytes(MAP)
    result = await plan(root, out, [done("a.png", root, content, "old/a.png.jpg", MAP)])
    assert decision(result, "a.png") == "copy"
    (job,) = result.jobs
    assert job.reuse_record is not None
    assert job.reuse_record.output == "old/a.png.jpg"


async def test_a_record_for_other_content_does_not_make_the_source_complete(
    tmp_path: Path,
) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    old, new = noise_image(3), noise_image(4)
    (root / "a.png").write_bytes(new)  # the source changed since its record
    out.mkdir()
    (out / "a.png.normals.jpg").write_bytes(MAP)
    result = await plan(root, out, [done("a.png", root, old, "a.png.normals.jpg", MAP)])
    assert decision(result, "a.png") == "send"


async def test_an_output_with_its_size_but_other_bytes_is_not_intact(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    content = noise_image(5)
    (root / "a.png").write_bytes(content)
    out.mkdir()
    damaged = bytes(b ^ 0x01 for b in MAP)
    (out / "a.png.normals.jpg").write_bytes(damaged)
    result = await plan(root, out, [done("a.png", root, content, "a.png.normals.jpg", MAP)])
    assert decision(result, "a.png") == "send"


async def test_a_copy_is_made_only_from_an_intact_output(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    content = noise_image(6)
    (root / "a.png").write_bytes(content)
    (root / "b.png").write_bytes(content)  # same content, no record of its own
    out.mkdir()
    records = [done("a.png", root, content, "a.png.normals.jpg", MAP)]
    (out / "a.png.normals.jpg").write_bytes(MAP)
    result = await plan(root, out, records)
    assert decision(result, "b.png") == "copy"
    (out / "a.png.normals.jpg").write_bytes(MAP[:-1] + b"!")  # damaged since
    result = await plan(root, out, [])
    assert decision(result, "a.png") == decision(result, "b.png") == "send"


async def test_every_file_is_hashed_however_many_there_are(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 70)  # more than two chunks of files per thread
    result = await make_plan(
        [corpus.root], output_dir=tmp_path / "out", manifest=tmp_path / "out" / "m.jsonl"
    )
    assert result.unreadable == []
    assert {m.key for j in result.jobs for m in j.members} == set(corpus.good)
    assert {j.sha256 for j in result.jobs} == {corpus.sha(k) for k in corpus.good}


async def test_adopted_copies_carry_the_upload_cost_once(tmp_path: Path) -> None:
    # Three sources with one content, outputs written by a run whose records were lost: they
    # are adopted, and the one upload's credit shows on one record only.
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    content = noise_image(7)
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(content)
        (out / f"{name}.normals.jpg").parent.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.normals.jpg").write_bytes(MAP)
    write_receipt(out, Receipt(sha(MAP), len(MAP), sha(content), credits=1))
    result = await plan(root, out, [])
    assert sorted(r.source for r in result.adopted) == ["a.png", "b.png", "c.png"]
    assert sorted(r.credits for r in result.adopted) == [0, 0, 1]
    assert result.sends == []


async def test_an_output_is_adopted_only_through_a_receipt_for_its_own_content(
    tmp_path: Path,
) -> None:
    root, out = _found_outputs(tmp_path, {"a.png": noise_image(8), "b.png": noise_image(9)})
    # a receipt for this output, but for a third content: it vouches for neither source
    write_receipt(out, Receipt(sha(MAP), len(MAP), sha(noise_image(10)), credits=1))
    result = await plan(root, out, [])
    assert result.adopted == []
    assert decision(result, "a.png") == decision(result, "b.png") == "send"


def _found_outputs(tmp_path: Path, sources: dict[str, bytes]) -> tuple[Path, Path]:
    """Sources in ``in/``, each with ``MAP`` for an output in ``out/`` and no record of it."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    for name, content in sources.items():
        (root / name).write_bytes(content)
        (out / f"{name}.normals.jpg").write_bytes(MAP)
    return root, out


async def test_receipts_of_the_earlier_layout_are_still_read(tmp_path: Path) -> None:
    # One file per receipt, as runs before the receipt logs wrote them.
    content = noise_image(11)
    root, out = _found_outputs(tmp_path, {"a.png": content})
    legacy = receipt_path(out, sha(MAP), sha(content))
    legacy.parent.mkdir(parents=True)
    legacy.write_text(
        json.dumps(
            {
                "version": 1,
                "output_sha256": sha(MAP),
                "output_size": len(MAP),
                "source_sha256": sha(content),
                "geometry": None,
                "credits": 1,
                "done_at": "2026-11-01T00:00:00Z",
            }
        )
    )
    result = await plan(root, out, [])
    assert [(r.source, r.credits) for r in result.adopted] == [("a.png", 1)]


async def test_a_receipt_cut_short_in_a_log_is_passed_over_and_the_rest_are_read(
    tmp_path: Path,
) -> None:
    first, second = noise_image(12), noise_image(13)
    root, out = _found_outputs(tmp_path, {"a.png": first, "b.png": second})
    with ReceiptLog(out) as log:
        log.write(Receipt(sha(MAP), len(MAP), sha(first), credits=1))
        log.write(Receipt(sha(MAP), len(MAP), sha(second), credits=1))
    (written,) = (out / ".clipnormals" / "receipts").glob("*.jsonl")
    lines = written.read_bytes().splitlines(keepends=True)
    written.write_bytes(lines[0] + lines[1][:-20])  # a kill in the middle of the second
    result = await plan(root, out, [])
    assert [r.source for r in result.adopted] == ["a.png"]
    assert decision(result, "b.png") == "send"


def test_a_receipt_log_keeps_every_line_whole_when_threads_write_at_once(
    tmp_path: Path,
) -> None:
    receipts = [Receipt(f"{i:064x}", i, f"{i + 1:064x}", credits=1) for i in range(400)]
    with ReceiptLog(tmp_path) as log, ThreadPoolExecutor(8) as pool:
        list(pool.map(log.write, receipts))
    assert find_receipts(
        tmp_path, {(r.output_sha256, r.source_sha256): r.output_size for r in receipts}
    ) == {(r.output_sha256, r.source_sha256): r for r in receipts}
    assert len(list((tmp_path / ".clipnormals" / "receipts").iterdir())) == 1  # one log


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"version":1,"output_sha256":"a","output_size":Infinity,"source_sha256":"b"}',
        b'{"version":1,"output_sha256":"a","output_size":1,"source_sha256":"b","credits":1e999}',
        b'{"version":1,"output_sha256":"a","output_size":1,"source_sha256":"b",'
        b'"geometry":{"size":[1e999,1],"display_size":[1,1]}}',
        b"[" * 200_000,
        b"\xff\xfe not json",
        b'{"version":1,"output_sha256":["a"],"output_size":{},"source_sha256":null}',
    ],
    ids=["infinite size", "huge credits", "huge geometry", "deep nesting", "bytes", "types"],
)
async def test_a_garbage_line_in_a_receipt_log_is_passed_over(
    tmp_path: Path, garbage: bytes
) -> None:
    content = noise_image(14)
    root, out = _found_outputs(tmp_path, {"a.png": content})
    with ReceiptLog(out) as log:
        log.write(Receipt(sha(MAP), len(MAP), sha(content), credits=1))
    (written,) = (out / ".clipnormals" / "receipts").glob("*.jsonl")
    written.write_bytes(garbage + b"\n" + written.read_bytes() + garbage + b"\n")
    result = await plan(root, out, [])
    assert [(r.source, r.credits) for r in result.adopted] == [("a.png", 1)]


def _log_lines(out: Path, *lines: bytes) -> None:
    folder = out / ".clipnormals" / "receipts"
    folder.mkdir(parents=True, exist_ok=True)
    for n, line in enumerate(lines):
        (folder / f"2026{n:04d}-1-ab.jsonl").write_bytes(line + b"\n")


def _receipt_line(output: bytes, source: bytes, **fields: object) -> bytes:
    data = {
        "version": 1,
        "output_sha256": sha(output),
        "output_size": len(output),
        "source_sha256": sha(source),
        "geometry": None,
        "credits": 1,
        "done_at": "2026-11-01T00:00:00Z",
    }
    data.update(fields)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "bad",
    [
        {"done_at": "\ud800"},  # a lone surrogate: cannot be written back to a manifest
        {"done_at": {"x": 1}},
        {"done_at": 5},
        {"output_size": 1},  # another size: not this output's receipt
        {"output_size": True},
        {"credits": -1},
        {"credits": 1.5},
        {"output_sha256": "ab"},
    ],
    ids=repr,
)
async def test_a_malformed_receipt_for_the_pair_does_not_hide_a_good_one(
    tmp_path: Path, bad: dict[str, object]
) -> None:
    content = noise_image(15)
    root, out = _found_outputs(tmp_path, {"a.png": content})
    # the malformed line comes first, in a log read first
    _log_lines(out, _receipt_line(MAP, content, **bad), _receipt_line(MAP, content))
    result = await plan(root, out, [])
    assert [(r.source, r.credits, r.done_at) for r in result.adopted] == [
        ("a.png", 1, "2026-11-01T00:00:00Z")
    ]


def test_a_fifo_among_the_receipt_logs_is_passed_over_not_waited_on(tmp_path: Path) -> None:
    import os
    import threading

    content = noise_image(16)
    _log_lines(tmp_path, _receipt_line(MAP, content))
    os.mkfifo(tmp_path / ".clipnormals" / "receipts" / "0000-fifo.jsonl")
    found: list[object] = []
    worker = threading.Thread(
        target=lambda: found.append(find_receipts(tmp_path, {(sha(MAP), sha(content)): len(MAP)})),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading the receipt logs waits on a FIFO"
    assert list(found[0]) == [(sha(MAP), sha(content))]  # type: ignore[call-overload]
