"""The manifest survives a kill at any byte, and the latest record of a source wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from clipnormals._atomic import TEMP_SUFFIX, atomic_write_bytes, remove_stale_temporaries
from clipnormals._batch import manifest as manifest_module
from clipnormals._batch.manifest import (
    ManifestLockedError,
    ManifestRecord,
    ManifestWriter,
    RecordStatus,
    read_manifest,
)


def rec(source: str, status: RecordStatus = RecordStatus.DONE, **kw: Any) -> ManifestRecord:
    return ManifestRecord(
        source=source, path=f"/in/{source}", sha256="ab" * 32, status=status, **kw
    )


def test_record_round_trips_and_ignores_unknown_fields() -> None:
    r = rec("a.png", credits=1, credits_remaining=99, output="a.png.normals.jpg")
    assert ManifestRecord.from_json(r.to_json()) == r
    line = r.to_json()[:-1] + ',"added_in_a_later_version":1}'
    assert ManifestRecord.from_json(line) == r


@pytest.mark.parametrize(
    "line",
    [
        '{"source":"a","path":"/a","sha256":null,"status":"weird"}',
        "[1,2]",
        '{"path":"/a"}',
        "x",
        "[" * 200_000,
        '{"source":"a","path":"/a","sha256":null,"status":"done",'
        '"geometry":{"size":[1e999,1],"display_size":[1,1]}}',
        '{"source":"a","path":"/a","sha256":null,"status":"done",'
        '"geometry":{"size":[Infinity,1],"display_size":[1,1]}}',
        '{"source":"a","path":"/a","sha256":null,"status":"done","time":7}',
        '{"source":"ghost\\ud800.png","path":"/a","sha256":null,"status":"done"}',
        '{"source":"a","path":"/a","sha256":null,"status":"done","credits":"1"}',
        '{"source":"a","path":"/a","sha256":null,"status":"done","attempts":true}',
        '{"source":"a","path":"/a","sha256":null,"status":"done","seconds":NaN}',
        '{"source":"a","path":"/a","sha256":5,"status":"done"}',
    ],
)
def test_from_json_rejects_non_records(line: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        ManifestRecord.from_json(line)


def test_latest_record_per_source_wins(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.append([rec("a", RecordStatus.FAILED), rec("b", RecordStatus.DONE)])
        w.append([rec("a", RecordStatus.DONE, attempts=2)])
    state = read_manifest(path)
    assert list(state.records) == ["b", "a"]  # order of last write
    assert state.records["a"].status is RecordStatus.DONE
    assert state.records["a"].attempts == 2
    assert state.lines == 3
    assert state.needs_compaction


def test_missing_manifest_reads_empty(tmp_path: Path) -> None:
    state = read_manifest(tmp_path / "nope.jsonl")
    assert state.records == {}
    assert not state.needs_compaction


def test_every_truncation_point_reads_and_appends_cleanly(tmp_path: Path) -> None:
    """A kill -9 can cut the last append at any byte: the reader keeps every whole record and
    the next writer appends after them without gluing a new record to the torn one."""
    full = tmp_path / "full.jsonl"
    with ManifestWriter(full) as w:
        w.append([rec("a"), rec("b")])
        w.append([rec("c", RecordStatus.FAILED, error="boom é")])
    data = full.read_bytes()
    first_two = data.index(b"\n", data.index(b"\n") + 1) + 1
    for cut in range(first_two, len(data) + 1):
        path = tmp_path / f"cut{cut}.jsonl"
        path.write_bytes(data[:cut])
        state = read_manifest(path)
        complete = cut >= len(data) - 1  # the last record parses with or without its newline
        assert set(state.records) == ({"a", "b", "c"} if complete else {"a", "b"}), cut
        assert state.bad_lines == 0
        assert state.torn == (not complete and cut > first_two)
        with ManifestWriter(path) as w:
            w.append([rec("d")])
        again = read_manifest(path)
        assert set(again.records) == set(state.records) | {"d"}, cut
        assert not again.torn
        assert again.bad_lines == 0


def test_garbage_line_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(rec("a").to_json() + "\n{not json\n" + rec("b").to_json() + "\n")
    state = read_manifest(path)
    assert set(state.records) == {"a", "b"}
    assert state.bad_lines == 1
    assert state.needs_compaction


def test_compaction_keeps_only_latest_records(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.append([rec("a", RecordStatus.FAILED), rec("b"), rec("a")])
    path.write_bytes(path.read_bytes() + b'{"source":"tor')
    state = read_manifest(path)
    with ManifestWriter(path) as w:
        w.compact(state)
        w.append([rec("c")])
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    compacted = read_manifest(path)
    assert list(compacted.records) == ["b", "a", "c"]
    assert not compacted.needs_compaction


def test_last_balance_is_the_most_recent_report(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.append(
            [
                rec("a", credits_remaining=10, done_at="2024-01-01T00:00:02.000Z"),
                rec("b", credits_remaining=11, done_at="2024-01-01T00:00:01.000Z"),
                rec("c", RecordStatus.FAILED),
            ]
        )
    assert read_manifest(path).last_balance() == (10, "2024-01-01T00:00:02.000Z")


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path), pytest.raises(ManifestLockedError, match="another run"):
        ManifestWriter(path).__enter__()
    with ManifestWriter(path) as w:  # released on exit
        w.append([rec("a")])


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from clipnormals._batch.manifest import ManifestWriter; "
            "w = ManifestWriter(pathlib.Path(sys.argv[1])).__enter__(); "
            "print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"locked"
            with pytest.raises(ManifestLockedError):
                ManifestWriter(path).__enter__()
        finally:
            holder.kill()
            holder.wait()
    with ManifestWriter(path) as w:
        w.append([rec("a")])
    assert "a" in read_manifest(path).records


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "x.jpg"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]


def test_atomic_write_failure_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.jpg"
    atomic_write_bytes(target, b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpg"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".a.jpg.1234abcd{TEMP_SUFFIX}"
    stale.write_bytes(b"half")
    keep = tmp_path / "sub" / "a.jpg"
    keep.write_bytes(b"whole")
    hidden = tmp_path / ".hidden"
    hidden.write_bytes(b"user file")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists()
    assert keep.exists()
    assert hidden.exists()


# -- group commits ---------------------------------------------------------------------------


def _commit_in_threads(
    writer: ManifestWriter, calls: list[tuple[list[ManifestRecord], list[Path]]]
) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * len(calls)

    def call(i: int) -> None:
        records, folders = calls[i]
        try:
            writer.commit(records, folders=folders)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    return errors


def test_concurrent_commits_share_flushes_and_flush_folders_before_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers that queue while a commit runs are committed together by the next one: their
    folders flushed first, then their records in one flush of the manifest."""
    events: list[str] = []
    first = threading.Event()
    release = threading.Event()

    def fsync_dir(folder: Path) -> None:
        events.append(f"folder {folder.name}")
        if not first.is_set():  # hold the first commit until the others have queued
            first.set()
            assert release.wait(30)

    monkeypatch.setattr(manifest_module, "fsync_dir", fsync_dir)
    path = tmp_path / "manifest.jsonl"
    path.touch()  # not created by the first append: no flush of its folder in the events
    with ManifestWriter(path) as writer:
        real_append = writer.append

        def append(records: Any) -> None:
            real_append(records)
            events.append("manifest " + ",".join(sorted(read_manifest(path).records)))

        monkeypatch.setattr(writer, "append", append)
        holder = threading.Thread(
            target=writer.commit, args=([rec("a")],), kwargs={"folders": [tmp_path / "fa"]}
        )
        holder.start()
        assert first.wait(30)
        calls = [([rec(k)], [tmp_path / f"f{k}"]) for k in ("b", "c", "d")]
        others = threading.Thread(target=_commit_in_threads, args=(writer, calls))
        others.start()
        while len(writer._queue) < 3:  # the three have queued behind the held commit
            time.sleep(0.001)
        release.set()
        holder.join(30)
        others.join(30)
        assert writer.commits == 2
    assert events == [
        "folder fa",
        "manifest a",
        "folder fb",
        "folder fc",
        "folder fd",
        "manifest a,b,c,d",
    ]


def test_a_failed_group_commit_fails_every_caller_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = threading.Event()
    release = threading.Event()

    def fsync_dir(folder: Path) -> None:
        if not first.is_set():
            first.set()
            assert release.wait(30)

    monkeypatch.setattr(manifest_module, "fsync_dir", fsync_dir)
    with ManifestWriter(tmp_path / "manifest.jsonl") as writer:
        real_append = writer.append

        def append(records: Any) -> None:
            records = list(records)
            if any(r.source != "a" for r in records):  # the second group's
                raise OSError(28, "No space left on device")
            real_append(records)

        monkeypatch.setattr(writer, "append", append)
        holder = threading.Thread(
            target=writer.commit, args=([rec("a")],), kwargs={"folders": [tmp_path]}
        )
        holder.start()
        assert first.wait(30)
        results: list[list[BaseException | None]] = []
        calls = [([rec(k)], []) for k in ("b", "c")]
        others = threading.Thread(
            target=lambda: results.append(_commit_in_threads(writer, calls))  # type: ignore[arg-type]
        )
        others.start()
        while len(writer._queue) < 2:
            time.sleep(0.001)
        release.set()
        holder.join(30)
        others.join(30)
    errors = results[0]
    assert all(isinstance(e, OSError) for e in errors), errors
    assert "No space left" in str(errors[0]) + str(errors[1])
    assert set(read_manifest(tmp_path / "manifest.jsonl").records) == {"a"}


@pytest.mark.parametrize(
    "geometry",
    [
        {"size": [0, 3], "display_size": [4, 3]},
        {"size": [4, 3], "display_size": [4, 0]},
        {"size": [4, 3], "display_size": [4, 3], "orientation": 9},
        {"size": [4], "display_size": [4, 3]},
    ],
)
def test_a_record_with_an_impossible_geometry_is_not_a_record(geometry: dict[str, Any]) -> None:
    # A zero size would divide by zero when a later run maps the normal map back.
    line = rec("a.png").to_json()[:-1] + f',"geometry":{json.dumps(geometry)}' + "}"
    with pytest.raises(ValueError, match="geometry"):
        ManifestRecord.from_json(line.replace('"geometry":null,', ""))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name descriptors")
def test_a_new_manifest_is_flushed_with_its_folder_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "out" / "manifest.jsonl"
    with ManifestWriter(path) as w:
        w.append([rec("a")])
        w.append([rec("b")])
    # the file's first records, and the folder entry that makes the new file survive a power
    # cut; the folder once (the file existed for the second append)
    assert synced.count(str(path)) == 2
    assert synced.count(str(path.parent)) == 1
    assert synced.index(str(path.parent)) < synced.index(str(path))


class _ShortWrites:
    """A file whose writes take at most seven bytes at a time, as a write to a pipe, a
    network file system or a nearly full disk may."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def write(self, data: Any) -> int:
        written: int = self.f.write(bytes(data[:7]))
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def test_an_append_cut_into_short_writes_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as writer:
        real_open = writer._open
        monkeypatch.setattr(writer, "_open", lambda: _ShortWrites(real_open()))
        writer.append([rec("a.png"), rec("b.png")])
        writer.append([rec("c.png")])
    assert sorted(read_manifest(path).records) == ["a.png", "b.png", "c.png"]
    assert path.read_bytes().count(b"\n") == 3


def test_shards_share_the_output_folder_and_keep_any_other_run_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    one = ManifestWriter(out / "manifest.shard-1-of-2.jsonl", output_dir=out, share_folder=True)
    two = ManifestWriter(out / "manifest.shard-2-of-2.jsonl", output_dir=out, share_folder=True)
    with one, two:
        with pytest.raises(ManifestLockedError, match="writing into"):
            ManifestWriter(tmp_path / "elsewhere.jsonl", output_dir=out).__enter__()
        with pytest.raises(ManifestLockedError):  # the same shard twice
            ManifestWriter(one.path, output_dir=out, share_folder=True).__enter__()
    alone = ManifestWriter(tmp_path / "elsewhere.jsonl", output_dir=out)
    with alone, pytest.raises(ManifestLockedError, match="writing into"):
        ManifestWriter(
            out / "manifest.shard-1-of-2.jsonl", output_dir=out, share_folder=True
        ).__enter__()
