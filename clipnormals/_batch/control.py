"""Stopping a run from outside: :class:`BatchControl`.

A graceful stop means: no request starts after it, the requests already sent finish and are
recorded. The runner stops handing images to the client at once; images it handed over earlier
may still be waiting inside the client, for credits, a slot or a token of the rate limiter. The
run sends through a view of the client and stops it (:meth:`AsyncClient.stop_sending`), so
every such waiter (and every retry) is refused with :class:`SendingStoppedError` before its
request starts, and the batch records it ``not_sent``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BatchControl"]


class BatchControl:
    """Stops a running batch from outside: a signal handler, a timer, another task.

    :meth:`stop` is graceful: no image is handed to the client any more and no request starts
    any more; the requests already sent finish and are recorded, and every other image is
    recorded ``not_sent``. :meth:`abort` cancels
    everything at once; the manifest stays valid (records are whole lines, written after
    their outputs), every image still gets a record, but answers in flight are lost.

    Example:
        >>> control = BatchControl()
        >>> control.stop()
        >>> control.stop_requested
        True
    """

    __slots__ = ("_on_abort", "_on_stop", "abort_requested", "stop_requested")

    def __init__(self) -> None:
        self.stop_requested = False
        self.abort_requested = False
        self._on_stop: Callable[[], None] | None = None
        self._on_abort: Callable[[], None] | None = None

    def stop(self) -> None:
        """Stop sending; let the requests already sent finish."""
        self.stop_requested = True
        if self._on_stop is not None:
            self._on_stop()

    def abort(self) -> None:
        """Cancel the run now."""
        self.stop_requested = self.abort_requested = True
        if self._on_abort is not None:
            self._on_abort()

    def _attach(self, on_stop: Callable[[], None], on_abort: Callable[[], None]) -> None:
        self._on_stop, self._on_abort = on_stop, on_abort
        if self.abort_requested:
            on_abort()
        elif self.stop_requested:
            on_stop()
