"""Crash-safe writes (``clipnormals._atomic``): the order of the steps that make them safe.

A power cut cannot be staged in a test, so these tests watch the system calls instead: the data
is written whole (after short writes too) and fsynced before the rename, the folder is fsynced
after it (or handed back to the caller, for a group commit), a failed write leaves the old file
and no temporary, and what a killed write leaves is recognised and cleared by the next run (and
nothing else is).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from clipnormals._atomic import (
    NAME_MAX,
    TEMP_SUFFIX,
    atomic_write_bytes,
    fsync_dir,
    remove_stale_temporaries,
    temporary_name,
)

PROC_FD = Path("/proc/self/fd")
needs_proc = pytest.mark.skipif(not PROC_FD.is_dir(), reason="needs /proc to name descriptors")


def _name(fd: int) -> str:
    return os.readlink(PROC_FD / str(fd))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """(call, path, size on disk at that moment) for every fsync and rename."""
    seen: list[tuple[str, str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(("fsync", _name(fd), os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        seen.append(("rename", os.fspath(src), os.stat(src).st_size))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


@needs_proc
def test_data_is_on_disk_before_the_rename_and_the_rename_is_flushed(
    tmp_path: Path, calls: list[tuple[str, str, int]]
) -> None:
    target = tmp_path / "sub" / "out.jpg"
    data = b"x" * 4096  # less than a buffer: without a flush it would still be in Python
    atomic_write_bytes(target, data)
    assert target.read_bytes() == data
    assert [c[0] for c in calls] == ["fsync", "rename", "fsync", "fsync"]
    (_, synced, size_at_fsync), (_, renamed, _), *folders = calls
    # The temporary file was fsynced with all of its bytes already written (an fsync before the
    # write would sync an empty file), then renamed.
    assert synced == renamed
    assert size_at_fsync == len(data)
    # The rename itself was made durable by flushing the folder that holds it, and the new
    # folder by flushing its parent.
    assert sorted(f[1] for f in folders) == sorted([str(target.parent), str(tmp_path)])


@needs_proc
def test_fsync_dir_flushes_the_folder_itself(
    tmp_path: Path, calls: list[tuple[str, str, int]]
) -> None:
    fsync_dir(tmp_path)
    assert [(c[0], c[1]) for c in calls] == [("fsync", str(tmp_path))]


@needs_proc
def test_a_group_commit_write_hands_back_every_folder_to_flush(
    tmp_path: Path, calls: list[tuple[str, str, int]]
) -> None:
    target = tmp_path / "a" / "b" / "out.jpg"
    changed = atomic_write_bytes(target, b"data", sync_folder=False)
    # the file is flushed and renamed; the folders are left to the caller, every one whose
    # entries changed: the file's own and the parents of the two folders created
    assert [c[0] for c in calls] == ["fsync", "rename"]
    assert sorted(changed) == sorted([target.parent, tmp_path / "a", tmp_path])
    # a second file in an existing folder changes only that folder
    assert atomic_write_bytes(target.parent / "two.jpg", b"x", sync_folder=False) == [target.parent]
    assert target.read_bytes() == b"data"


def test_a_short_write_is_continued_until_every_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.write may write fewer bytes than asked (an interrupted call, some file systems)
    real_write = os.write
    sizes: list[int] = []

    def short_write(fd: int, data: Any) -> int:
        sizes.append(len(data))
        return real_write(fd, bytes(data[:1000]))

    data = bytes(range(256)) * 20
    monkeypatch.setattr(os, "write", short_write)
    try:
        atomic_write_bytes(tmp_path / "out.jpg", data)
    finally:
        monkeypatch.undo()
    assert len(sizes) == 6  # 5120 bytes, 1000 at a time
    assert (tmp_path / "out.jpg").read_bytes() == data


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.jpg"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]


def test_what_a_killed_write_leaves_is_cleared_by_the_next_run_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temporaries: list[str] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        temporaries.append(os.path.basename(os.fspath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "a" / "out.jpg", b"data")
    monkeypatch.undo()
    (temporary,) = temporaries
    # A kill -9 between the write and the rename leaves the temporary file as it was named:
    left = tmp_path / "a" / temporary
    left.write_bytes(b"half")
    # ...beside files of the user's that merely look alike
    mine = [tmp_path / "a" / ".hidden", tmp_path / f"notes{TEMP_SUFFIX}", tmp_path / ".keep"]
    for path in mine:
        path.write_bytes(b"mine")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not left.exists()
    assert all(path.exists() for path in mine)
    assert (tmp_path / "a" / "out.jpg").read_bytes() == b"data"
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_only_temporaries_actually_removed_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = tmp_path / f".out.jpg.0000{TEMP_SUFFIX}"
    gone = tmp_path / f".other.jpg.1111{TEMP_SUFFIX}"
    stuck.write_bytes(b"x")
    gone.write_bytes(b"x")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == stuck.name:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert remove_stale_temporaries(tmp_path) == 1
    assert stuck.exists()
    assert not gone.exists()


@pytest.mark.parametrize("stem", ["a" * 243, "é" * 121, "写" * 81])
def test_a_target_whose_name_is_near_the_limit_is_written(tmp_path: Path, stem: str) -> None:
    name = stem + ".normals.jpg"  # 255, 254 and 255 bytes: the longest names a folder takes
    assert 250 <= len(os.fsencode(name)) <= NAME_MAX
    atomic_write_bytes(tmp_path / name, b"data")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes() == b"data"


def test_a_long_name_keeps_its_temporary_recognisable_for_the_cleanup(tmp_path: Path) -> None:
    temporary = temporary_name("b" * 250, "123-4")
    assert len(os.fsencode(temporary)) == NAME_MAX
    (tmp_path / temporary).write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 1
