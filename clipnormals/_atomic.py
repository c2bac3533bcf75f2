"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The bytes go to a temporary name in the same folder, are flushed to the disk, and the temporary
file is renamed over the target; the folder is flushed too, so the rename itself survives a power
cut. A process killed in the middle leaves at most a hidden temporary file, which
:func:`remove_stale_temporaries` clears on the next run.

A writer of many files may flush the folders itself, once for several files (a group commit):
``atomic_write_bytes(..., sync_folder=False)`` returns the folders whose entries changed (the
file's own, and the parent of every folder it had to create), and the file is durable once
:func:`fsync_dir` has run on each of them. Until then a kill leaves the file whole or absent,
never torn; only a power cut can lose it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from pathlib import Path

__all__ = [
    "NAME_MAX",
    "TEMP_SUFFIX",
    "atomic_write_bytes",
    "ensure_folder",
    "fsync_dir",
    "remove_stale_temporaries",
    "temporary_name",
    "write_all",
]

TEMP_SUFFIX = ".clipnormals-tmp"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a no-op where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - Windows cannot open a folder
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def ensure_folder(folder: Path, known: set[Path] | None = None) -> list[Path]:
    """Create ``folder`` and its missing parents; return the folders whose entries changed.

    Those are the parents of the folders created (none when ``folder`` existed): flush them
    with :func:`fsync_dir` for the new folders to survive a power cut. ``known`` is a cache of
    folders known to exist, read and filled here, so that a writer of many files in few folders
    asks the file system once per folder (any thread may share it: a stale answer only costs a
    redundant ``mkdir``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     changed = ensure_folder(Path(d, "a", "b"))
        ...     [p.relative_to(d).as_posix() for p in changed], ensure_folder(Path(d, "a", "b"))
        (['.', 'a'], [])
    """
    if known is not None and folder in known:
        return []
    missing: list[Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    changed: list[Path] = []
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            if not created.is_dir():
                raise
        else:
            changed.append(created.parent)
    if known is not None:
        known.add(folder)
    return changed


def atomic_write_bytes(
    path: Path, data: bytes, *, sync_folder: bool = True, known: set[Path] | None = None
) -> list[Path]:
    """Write ``data`` to ``path`` so that a crash leaves either no file or the whole file.

    The data is flushed to the disk before the rename. With ``sync_folder`` (the default) the
    folders whose entries changed are flushed too, and the file survives a power cut once this
    returns; without it they are returned instead, for the caller to flush (several files at
    once) before it relies on the file. ``known``: see :func:`ensure_folder`.

    Blocking: call it from a worker thread in async code.

    Returns:
        The folders still to flush: empty with ``sync_folder``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_write_bytes(Path(d, "sub", "out.jpg"), b"data")
        ...     sorted(p.name for p in Path(d, "sub").iterdir())
        []
        ['out.jpg']
    """
    folder = path.parent
    changed = [folder, *ensure_folder(folder, known)]
    tmp, fd = _create_temporary(folder, path.name)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not sync_folder:
        return changed
    for changed_folder in changed:
        fsync_dir(changed_folder)
    return []


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_names = itertools.count()
#: The longest file name, in bytes, that Linux, macOS and the BSDs accept (``NAME_MAX``).
NAME_MAX = 255


def _create_temporary(folder: Path, name: str) -> tuple[str, int]:
    """A new hidden temporary file next to ``name``, opened for writing: (path, descriptor).

    Plain ``os`` calls, no buffered file object: a batch writes thousands of small files, and
    every system call a worker thread makes is a chance for it to take the interpreter lock
    from the event loop. Names are unique per process and call (a random name only after a
    clash, such as a file a killed process with the same id left behind)."""
    tmp = os.path.join(folder, temporary_name(name, f"{os.getpid()}-{next(_names)}"))
    try:
        return tmp, os.open(tmp, _CREATE, 0o666)
    except FileExistsError:
        tmp = os.path.join(folder, temporary_name(name, secrets.token_hex(6)))
        return tmp, os.open(tmp, _CREATE, 0o666)


def temporary_name(name: str, tag: str) -> str:
    """``.NAME.TAG.clipnormals-tmp``, with ``name`` cut short (whole characters) so that the
    result fits :data:`NAME_MAX` bytes: a target whose own name is near the limit can still be
    written.

    Example:
        >>> temporary_name("out.jpg", "7-0")
        '.out.jpg.7-0.clipnormals-tmp'
        >>> len(os.fsencode(temporary_name("é" * 127, "7-0")))
        255
    """
    room = NAME_MAX - len(os.fsencode(f"..{tag}{TEMP_SUFFIX}"))
    name = name[:room]
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}.{tag}{TEMP_SUFFIX}"


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to the descriptor (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_stale_temporaries(root: Path, *, older_than: float = 0.0) -> int:
    """Delete temporary files a killed run left under ``root``; return how many.

    ``older_than``: leave those modified less than this many seconds ago (another run that
    shares the folder may be writing them).
    """
    removed = 0
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                path = Path(dirpath, name)
                with contextlib.suppress(OSError):
                    if older_than > 0 and path.stat().st_mtime > cutoff:
                        continue
                    path.unlink()
                    removed += 1
    return removed
