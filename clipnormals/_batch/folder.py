"""The output folder: checked writable before the first request, and tidied before a run.

A run that cannot write its outputs would pay for answers it then loses, so it proves the
folder writable (by creating and removing a file in it, which is the only test that holds for
root, read-only mounts and file systems such as ``/proc`` alike, and, as the file gets
:data:`_PROBE_BYTES` written into it, for a full disk) before it sends anything. The
dry run makes the same check without leaving anything behind: when the folder does not exist
yet, it checks that its nearest existing parent could hold it.

An existing manifest is opened for appending (which changes nothing in it) and its first line
must be a manifest record: a run never appends to, compacts or overwrites a folder, a file of
other content, or one of its own inputs named as the manifest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .._atomic import NAME_MAX, remove_stale_temporaries
from .config import BatchConfig
from .errors import ManifestPathError, OutputFolderError
from .manifest import ManifestRecord, ManifestState, ManifestWriter

__all__ = ["check_output_file", "check_output_folder", "tidy_output_folder"]


#: What the probe writes: room for a small output. A disk with less free has no room for the
#: first answer, which would be paid for and lost.
_PROBE_BYTES = 64 * 1024

# The shards of a job share the output folder: a sharded run leaves the temporary files of the
# last ten minutes alone, as another shard may be writing them.
_SHARED_TEMP_AGE = 600.0


def _probe(folder: Path, shown: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".clipnormals-probe-") as f:
            f.write(bytes(_PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputFolderError(f"cannot write in {shown}: {exc.strerror or exc}") from None


def _check_folder(folder: Path, *, create: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFolderError(
                f"cannot create the folder {folder}: {exc.strerror or exc}"
            ) from None
        _probe(folder, folder)
        return
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputFolderError(f"cannot create {folder}: {existing} is a file, not a folder")
    _probe(existing, folder)


def check_output_folder(config: BatchConfig, *, create: bool) -> None:
    """Prove the output folder and the manifest's folder writable. Blocking.

    Args:
        create: create the folders (a run); without it nothing is left behind (a dry run).

    Raises:
        ManifestPathError: the manifest's path is a folder, a file that is not a manifest, or
            one of the inputs.
        OutputFolderError: one of them is a file, is read-only, or cannot be created; or the
            manifest exists and cannot be written.
    """
    _check_manifest(config)
    folders = [config.output_dir.absolute()]
    manifest_folder = config.manifest_path.absolute().parent
    if manifest_folder != folders[0]:
        folders.append(manifest_folder)
    for folder in folders:
        _check_folder(folder, create=create)


_FIRST_LINE_BYTES = 1 << 16


def _check_manifest(config: BatchConfig) -> None:
    path = config.manifest_path
    cwd = config.cwd if config.cwd is not None else Path.cwd()
    for given in config.inputs:
        try:
            same = os.path.samefile(cwd / given, path)
        except OSError:
            continue
        if same:
            raise ManifestPathError(f"the manifest {path} is one of the inputs")
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise ManifestPathError(f"the manifest {path} is a folder, not a file")
    if not path.is_file():
        raise ManifestPathError(f"the manifest {path} is not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(_FIRST_LINE_BYTES)
        with path.open("ab"):
            pass  # opened for appending, nothing written: proves it writable
    except OSError as exc:
        raise OutputFolderError(
            f"cannot write the manifest {path}: {exc.strerror or exc}"
        ) from None
    if head and not _is_manifest(head):
        raise ManifestPathError(
            f"{path} is not a manifest (its first line is not a record); not writing to it"
        )


def _is_manifest(head: bytes) -> bool:
    """Whether ``head``, a file's first bytes, starts with a manifest record (or is the torn
    first line a killed run left)."""
    line, newline, _rest = head.partition(b"\n")
    if not newline:
        return line.startswith(b'{"')
    try:
        ManifestRecord.from_json(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return False
    return True


def require_short_name(path: Path) -> None:
    """Refuse a file name longer than the file system takes (:data:`NAME_MAX` bytes).

    Raises:
        OutputFolderError: the name is too long.
    """
    size = len(os.fsencode(path.name))
    if size > NAME_MAX:
        raise OutputFolderError(
            f"{path}: its name is {size} bytes, above the file-name limit of {NAME_MAX} bytes; "
            "name a shorter file"
        )


def check_output_file(path: Path) -> None:
    """Prove that a file can be written at ``path`` without creating anything. Blocking.

    Raises:
        OutputFolderError: ``path``'s name is too long for a file name, ``path`` is a folder,
            or its folder (or the nearest existing parent of it) is a file, is read-only, or
            has no room.
    """
    require_short_name(path)
    if path.is_dir():
        raise OutputFolderError(f"{path} is a folder: name a file to write")
    _check_folder(path.absolute().parent, create=False)


def tidy_output_folder(config: BatchConfig, writer: ManifestWriter, state: ManifestState) -> None:
    """Remove what a killed run left (temporary files) and compact the manifest when it holds
    superseded or torn lines. Blocking."""
    older_than = _SHARED_TEMP_AGE if config.shard is not None else 0.0
    remove_stale_temporaries(config.output_dir, older_than=older_than)
    if state.needs_compaction:
        writer.compact(state)
