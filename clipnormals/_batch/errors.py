"""Errors that end a batch run before any image is sent: its inputs or its output folder."""

from __future__ import annotations

from .._errors import ClientClosedError, ClipnormalsError

__all__ = ["BatchInputError", "OutputFolderError", "SendingStoppedError"]


class BatchInputError(ClipnormalsError):
    """An input given on the command line (or to :class:`BatchConfig`) cannot be used: it
    does not exist, is a broken link or a link loop, is not a file or a folder (a FIFO, a
    device), or cannot be read. Nothing was sent and nothing was written."""


class OutputFolderError(ClipnormalsError):
    """The output folder (or the manifest's folder) cannot be written: it is a file, is
    read-only, or sits on a file system that refuses writes. Checked before the first request,
    so nothing was sent."""


class SendingStoppedError(ClientClosedError):
    """The batch stopped sending (a graceful stop) before this image's request could start.

    Raised by :meth:`BatchControl.gate` limiters to the requests still waiting for a token:
    nothing was sent for the attempt it refused.
    """
