"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The bytes go to a temporary name in the same folder, are flushed to the disk, and the temporary
file is renamed over the target; the folder is flushed too, so the rename itself survives a power
cut. A process killed in the middle leaves at most a hidden temporary file, which
:func:`remove_stale_temporaries` clears on the next run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "atomic_write_bytes", "fsync_dir", "remove_stale_temporaries"]

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either no file or the whole file.

    Blocking: call it from a worker thread in async code.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_write_bytes(Path(d, "sub", "out.jpg"), b"data")
        ...     sorted(p.name for p in Path(d, "sub").iterdir())
        ['out.jpg']
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        with tmp.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files a killed run left under ``root``; return how many."""
    removed = 0
    if not root.is_dir():
        return 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    Path(dirpath, name).unlink()
                    removed += 1
    return removed
