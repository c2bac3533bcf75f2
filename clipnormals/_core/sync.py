"""The blocking facade: the same AsyncClient, run on an event loop in a background thread.

Every behaviour lives in the async client; this module only carries calls across the thread
boundary with an anyio BlockingPortal, so scripts and notebooks get identical limits, retries and
credit accounting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._images.prepare import ImageSource
from .._normals.normalmap import NormalMap
from .client import AsyncClient
from .credits import CreditLedger
from .map import MapIterator
from .results import ClientStats, MapItem

__all__ = ["Client"]

S = TypeVar("S")


class Client:
    """Blocking client for scripts and notebooks; takes the same arguments as AsyncClient.

    Example:
        >>> with Client() as client:  # key from CLIPDROP_API_KEY
        ...     nm = client.surface_normals("portrait.jpg")
        ...     done = sorted(item.source for item in client.map(["a.jpg", "b.jpg"]) if item.ok)
        >>> nm.normals.shape, done
        ((512, 512, 3), ['a.jpg', 'b.jpg'])
    """

    def __init__(self, **options: Any) -> None:
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self._async: AsyncClient = self._portal.call(_make_client, options)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncClient(", "Client(", 1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and stop its event-loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._async.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    @property
    def credits(self) -> CreditLedger:
        """The live credit ledger (see :attr:`AsyncClient.credits`)."""
        return self._async.credits

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the requests made so far."""
        return self._async.stats

    @property
    def halted(self) -> bool:
        """True after a 402 or 403."""
        return self._async.halted

    def surface_normals(self, image: ImageSource, *, name: str | None = None) -> NormalMap:
        """Blocking :meth:`AsyncClient.surface_normals`."""
        return self._portal.call(lambda: self._async.surface_normals(image, name=name))

    def map(self, images: Iterable[S], *, prefetch: int | None = None) -> Iterator[MapItem[S]]:
        """Blocking :meth:`AsyncClient.map`: yields items in completion order.

        Leaving the loop early cancels the images still in progress.
        """
        iterator: MapIterator[S] = self._portal.call(
            lambda: _open_map(self._async, images, prefetch)
        )
        try:
            while True:
                try:
                    yield self._portal.call(iterator.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(RuntimeError):  # the portal may already be gone
                self._portal.call(iterator.aclose)


async def _make_client(options: dict[str, Any]) -> AsyncClient:
    # Created inside the portal's loop so that every primitive binds to that loop.
    return AsyncClient(**options)


async def _open_map(
    client: AsyncClient, images: Iterable[S], prefetch: int | None
) -> MapIterator[S]:
    return client.map(images, prefetch=prefetch)
