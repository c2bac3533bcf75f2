"""The blocking facade: the same AsyncClient, run on an event loop in a background thread.

Every behaviour lives in the async client; this module only carries calls across the thread
boundary with an anyio BlockingPortal, so scripts and notebooks get identical limits, retries and
credit accounting.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._errors import ClientClosedError
from .._images.prepare import ImageSource, PreparedImage, PrepareOptions
from .._normals.normalmap import NormalMap
from .client import _UNSET, AsyncClient
from .credits import CreditPolicy, Ledger
from .http import EventHooks
from .limiter import Limiter, RateLimit
from .map import MapIterator
from .results import ClientStats, MapItem
from .retry import RetryPolicy

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["Client"]

S = TypeVar("S")


class Client:
    """Blocking client for scripts and notebooks: an :class:`AsyncClient` on an event loop of its
    own, in a background thread. Same arguments, same behaviour, same errors.

    One client per process: after ``os.fork()`` the child gets :class:`ClientClosedError` (the
    loop thread stayed with the parent) and must create its own. In a Jupyter notebook the
    kernel already runs an event loop: use ``AsyncClient`` with top-level ``await`` there, so
    the kernel's other tasks keep running while the client works.

    ``http_client=`` is refused (``ValueError``): an ``httpx.AsyncClient`` is bound to the
    event loop it is used in, and this client's loop is its own.

    A :class:`Limiter` or :class:`Ledger` given here belongs to this client, since its
    connections live on the client's loop: a ledger that is an async context manager (a
    ``RedisLedger``) is entered in that loop when the client is built, and :meth:`close` closes
    both (neither may be shared with another client).

    Example:
        >>> with Client() as client:  # key from CLIPDROP_API_KEY
        ...     nm = client.surface_normals("portrait.jpg")
        ...     done = sorted(item.source for item in client.map(["a.jpg", "b.jpg"]) if item.ok)
        >>> nm.normals.shape, done
        ((512, 512, 3), ['a.jpg', 'b.jpg'])
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        rate_limit: RateLimit | None = None,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        credits: CreditPolicy | None = None,
        timeout: float | httpx.Timeout = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        ledger: Ledger | None = None,
        prepare: PrepareOptions | None = None,
        flip_x: bool = False,
        flip_y: bool = False,
        http_client: httpx.AsyncClient | None = None,
        proxy: str | httpx.Proxy | None = None,
        verify: ssl.SSLContext | str | bool = True,
        default_headers: Mapping[str, str] | None = None,
        event_hooks: EventHooks | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._closed = True  # until fully built: repr and close work on a half-built client
        if http_client is not None:
            # Its connections would belong to this client's private event loop, which ends
            # with it: the caller's client would be left broken for its own loop.
            raise ValueError(
                "the blocking Client runs its own event loop and cannot share an "
                "httpx.AsyncClient with yours: pass its settings instead (proxy=, verify=, "
                "default_headers=, event_hooks=, transport=), or use AsyncClient(http_client=...)"
            )
        self._pid = os.getpid()
        self._limiter = limiter
        self._root: Client | None = None  # set on views: the client that owns the loop
        self._ledger = ledger
        self._ledger_cm: contextlib.AbstractContextManager[Any] | None = None
        options: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "rate_limit": rate_limit,
            "max_concurrency": max_concurrency,
            "retry": retry,
            "credits": credits,
            "timeout": timeout,
            "transport": transport,
            "limiter": limiter,
            "ledger": ledger,
            "prepare": prepare,
            "flip_x": flip_x,
            "flip_y": flip_y,
            "http_client": http_client,
            "proxy": proxy,
            "verify": verify,
            "default_headers": default_headers,
            "event_hooks": event_hooks,
            "tracer_provider": tracer_provider,
            "meter_provider": meter_provider,
        }
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self._async: AsyncClient = self._portal.call(_make_client, options)
            if isinstance(ledger, AbstractAsyncContextManager):
                # Entered and later exited by one task of the portal: a ledger that keeps its
                # leases alive in a task group of its own needs exactly that.
                cm = self._portal.wrap_async_context_manager(ledger)
                cm.__enter__()
                self._ledger_cm = cm
        except BaseException:
            try:
                with contextlib.suppress(Exception):  # the error that stopped the build wins
                    self._portal.call(self._aclose)
            finally:
                self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    def __repr__(self) -> str:
        inner = getattr(self, "_async", None)
        if inner is None:
            return "Client(<not built>)"
        state = ", closed" if self._closed else ""
        return repr(inner).replace("AsyncClient(", "Client(", 1)[:-1] + state + ")"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def with_options(
        self,
        *,
        timeout: float | httpx.Timeout = _UNSET,
        retry: RetryPolicy = _UNSET,
        prepare: PrepareOptions = _UNSET,
        flip_x: bool = _UNSET,
        flip_y: bool = _UNSET,
    ) -> Client:
        """:meth:`AsyncClient.with_options`: a view sharing this client's quota, credits, pool
        and event-loop thread. Closing this client closes the view; closing the view closes
        nothing."""
        self._check()
        view = object.__new__(Client)
        view._closed = False
        view._pid = self._pid
        view._limiter = None
        view._ledger = None
        view._ledger_cm = None
        view._root = self._root or self
        view._portal_cm = self._portal_cm
        view._portal = self._portal
        # _UNSET is the async client's own "not given" marker as well.
        view._async = self._async.with_options(
            timeout=timeout, retry=retry, prepare=prepare, flip_x=flip_x, flip_y=flip_y
        )
        return view

    def close(self) -> None:
        """Close the client (and the limiter and ledger given to it); stop its event-loop thread.

        Idempotent; in a forked child it only marks the client closed. On a view from
        :meth:`with_options` it does nothing: the client it came from owns the loop.
        """
        if self._root is not None or self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return  # the loop thread is in the parent; nothing here to stop
        try:
            try:
                self._portal.call(self._aclose)
            finally:
                if self._ledger_cm is not None:
                    self._ledger_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    async def _aclose(self) -> None:
        try:
            inner = getattr(self, "_async", None)
            if inner is not None:
                await inner.aclose()
        finally:
            owned: list[object] = [self._limiter]
            if self._ledger_cm is None:  # a ledger entered above is closed by leaving it
                owned.append(self._ledger)
            for resource in owned:
                closer = getattr(resource, "aclose", None)
                if closer is not None:
                    await closer()

    def _check(self) -> None:
        if self._pid != os.getpid():
            raise ClientClosedError(
                f"this client was created in process {self._pid}, and this is process "
                f"{os.getpid()} (a fork): its event-loop thread stayed with the parent. Create "
                "one client per process, after the fork"
            )
        if self._closed or (self._root is not None and self._root._closed):
            raise ClientClosedError("the client is closed")

    def stop_sending(self) -> None:
        """:meth:`AsyncClient.stop_sending`: start no request any more (thread-safe)."""
        if not self._closed and self._pid == os.getpid():
            self._portal.call(_stop_sending, self._async)

    @property
    def prepare_options(self) -> PrepareOptions:
        """How this client prepares images."""
        return self._async.prepare_options

    @property
    def credits(self) -> Ledger:
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

    def surface_normals(
        self,
        image: ImageSource,
        *,
        name: str | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> NormalMap:
        """Blocking :meth:`AsyncClient.surface_normals` (same errors)."""
        self._check()
        return self._portal.call(
            lambda: self._async.surface_normals(image, name=name, timeout=timeout)
        )

    def prepare(self, image: ImageSource, *, name: str | None = None) -> PreparedImage:
        """Blocking :meth:`AsyncClient.prepare`."""
        self._check()
        return self._portal.call(lambda: self._async.prepare(image, name=name))

    def map(
        self,
        images: Iterable[S],
        *,
        image: Callable[[S], ImageSource] | None = None,
        prefetch: int | None = None,
    ) -> Iterator[MapItem[S]]:
        """Blocking :meth:`AsyncClient.map`: yields items in completion order.

        Leaving the loop early cancels the images still in progress.
        """
        self._check()
        iterator: MapIterator[S] = self._portal.call(
            lambda: _open_map(self._async, images, image, prefetch)
        )
        try:
            while True:
                try:
                    self._check()
                except ClientClosedError:
                    # closed (in this process) after every item was delivered: nothing is lost
                    if self._pid == os.getpid() and iterator._delivered_everything():
                        return
                    raise
                try:
                    yield self._portal.call(iterator.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed and self._pid == os.getpid():
                with contextlib.suppress(RuntimeError):  # the portal may already be gone
                    self._portal.call(iterator.aclose)


async def _stop_sending(client: AsyncClient) -> None:
    client.stop_sending()


async def _make_client(options: dict[str, Any]) -> AsyncClient:
    # Created inside the portal's loop so that every primitive binds to that loop.
    return AsyncClient(**options)


async def _open_map(
    client: AsyncClient,
    images: Iterable[S],
    image: Callable[[S], ImageSource] | None,
    prefetch: int | None,
) -> MapIterator[S]:
    return client.map(images, image=image, prefetch=prefetch)
