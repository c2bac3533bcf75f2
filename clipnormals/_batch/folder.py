"""The output folder: checked writable before the first request, and tidied before a run.

A run that cannot write its outputs would pay for answers it then loses, so it proves the
folder writable (by creating and removing a file in it, which is the only test that holds for
root, read-only mounts and file systems such as ``/proc`` alike) before it sends anything. The
dry run makes the same check without leaving anything behind: when the folder does not exist
yet, it checks that its nearest existing parent could hold it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .._atomic import remove_stale_temporaries
from .config import BatchConfig
from .errors import OutputFolderError
from .manifest import ManifestState, ManifestWriter

__all__ = ["check_output_folder", "tidy_output_folder"]

# The shards of a job share the output folder: a sharded run leaves the temporary files of the
# last ten minutes alone, as another shard may be writing them.
_SHARED_TEMP_AGE = 600.0


def _probe(folder: Path, shown: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".clipnormals-probe-"):
            pass
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
        OutputFolderError: one of them is a file, is read-only, or cannot be created.
    """
    folders = [config.output_dir.absolute()]
    manifest_folder = config.manifest_path.absolute().parent
    if manifest_folder != folders[0]:
        folders.append(manifest_folder)
    for folder in folders:
        _check_folder(folder, create=create)


def tidy_output_folder(config: BatchConfig, writer: ManifestWriter, state: ManifestState) -> None:
    """Remove what a killed run left (temporary files) and compact the manifest when it holds
    superseded or torn lines. Blocking."""
    older_than = _SHARED_TEMP_AGE if config.shard is not None else 0.0
    remove_stale_temporaries(config.output_dir, older_than=older_than)
    if state.needs_compaction:
        writer.compact(state)
