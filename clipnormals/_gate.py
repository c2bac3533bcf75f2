"""Taking the limiter's slot at the last moment: when the request's headers go on the wire.

The server counts arrivals. Whatever passes between the moment the limiter lets an attempt
start and the moment its bytes leave (a connection or TLS set-up, a pool wait, other tasks
running on a busy event loop) moves the arrival away from the start the limiter planned: two
starts a spacing apart can arrive together, which a leaky bucket without burst refuses. So when
the transport is httpx's own (``httpx.AsyncHTTPTransport``, the default), the attempt takes its
slot through httpcore's ``trace`` request extension, on the ``send_request_headers.started``
event: after the connection is ready, right before the headers are written. Other transports
(``MockTransport``, ``ASGITransport``, wrappers) never call the hook, so the slot is taken before
the request is handed to them.

An attempt that fails before its headers were sent (a refused connection) took no slot: no
request reached the server. Should a transport send a request without calling the hook after
all, the slot is taken when the response comes back, a warning is logged once, and the client
takes its slots before sending from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

from ._limiter import Limiter

__all__ = ["StartGate", "calls_trace_hooks"]

logger = logging.getLogger("clipnormals")

_HEADERS_SENT = "send_request_headers.started"


def calls_trace_hooks(transport: httpx.AsyncBaseTransport | None) -> bool:
    """Whether requests through ``transport`` reach httpcore, which calls the trace hook."""
    return transport is None or isinstance(transport, httpx.AsyncHTTPTransport)


class StartGate:
    """One attempt's start: the limiter's slot, taken before sending or on the wire.

    ``on_start(started)`` runs right after the slot is taken (the client checks it may still
    send, and counts the attempt); ``started`` is the start time, or ``None`` before it.
    """

    __slots__ = ("_limiter", "_on_start", "extensions", "started")

    def __init__(
        self, limiter: Limiter, on_start: Callable[[float], None], *, on_wire: bool
    ) -> None:
        self._limiter = limiter
        self._on_start = on_start
        self.started: float | None = None
        self.extensions: dict[str, Any] = {"trace": self._trace} if on_wire else {}

    async def open(self) -> float:
        """Take the slot now (once per attempt); return the start time."""
        if self.started is None:
            started = await self._limiter.acquire()
            self.started = started
            self._on_start(started)
        return self.started

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(_HEADERS_SENT):
            await self.open()

    async def settle(self) -> float:
        """After the response: the start time, taking the slot now if the hook never ran."""
        if self.started is None:
            logger.warning(
                "the transport sent a request without calling httpcore's trace hook; "
                "rate-limit slots are taken before sending from now on"
            )
        return await self.open()
