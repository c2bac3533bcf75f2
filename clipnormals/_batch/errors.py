"""Errors that end a batch run before any image is sent: its inputs or its output folder."""

from __future__ import annotations

from .._errors import ClipnormalsError, SendingStoppedError, SharedStateError

__all__ = [
    "BatchInputError",
    "ManifestPathError",
    "OutputFolderError",
    "SendingStoppedError",  # from _errors
    "SharedStateError",  # from _errors
]


class BatchInputError(ClipnormalsError):
    """An input given on the command line (or to :class:`BatchConfig`) cannot be used: it
    does not exist, is a broken link or a link loop, is not a file or a folder (a FIFO, a
    device), or cannot be read. Nothing was sent and nothing was written."""


class ManifestPathError(BatchInputError):
    """The manifest's path names something a run must not append to: a folder, a file that is
    not a manifest, or one of the inputs. Nothing was sent and nothing was written."""


class OutputFolderError(ClipnormalsError):
    """The output folder, the manifest's folder or the manifest cannot be written: it is a
    file, is read-only, or sits on a file system that refuses writes or has no room. Checked
    before the first request, so nothing was sent."""
