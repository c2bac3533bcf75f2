"""Streaming many images through the client with bounded memory.

A pump runs ``depth`` workers; each pulls the next source (one worker at a time), runs it, and
waits until the consumer has taken its item before pulling another. So at most ``depth`` sources
and results are alive at once, whether the input holds ten images or ten million, and a slow
consumer slows the workers instead of filling memory.

Who owns the pump:

- ``async with client.map(...) as items``: the iterator's own task group, entered and left in
  the caller's task (structured concurrency). Leaving the block, an exception in its body, or a
  cancellation of the caller cancels the workers before the block is left.
- a bare ``async for item in client.map(...)``: an asyncio task started by the first
  ``__anext__``, since nothing else could own it. Breaking out of the loop, an exception in its
  body, or dropping the iterator cancels it at once (the pump holds no reference to the
  iterator, so the iterator dies with the loop that used it); so do :meth:`MapIterator.aclose`
  and closing the client.

Uploads run at most ``max_concurrency`` ahead of the consumer: an image may start its upload
only with an :class:`UploadPermit`, held until its item is delivered. Workers prepare further
ahead (``prefetch``), but send nothing more. So whatever way the consumer stops taking items,
at most ``max_concurrency`` images are charged beyond those it received: when the iterator is
closed or dropped, only the requests in flight at that moment; when it is still referenced
(a loop left with ``break`` over a named iterator, a traceback keeping it alive), at most
``max_concurrency`` in all until it is closed. Cancelled workers release their slots, tokens
and credit reservations through the ``async with`` blocks they are in.

A source iterable that raises stops the pump, cancels the images in progress, and the error is
raised bare by the iterator after the items already delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
)
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import ClipnormalsError
from .results import MapItem

__all__ = ["MapIterator", "UploadPermit"]

S = TypeVar("S")


class UploadPermit:
    """The right of one image to start its upload; held until its item is delivered.

    The client acquires it after preparing the image, before any credit, slot or token.
    """

    __slots__ = ("_gate", "_held")

    def __init__(self, gate: asyncio.Semaphore) -> None:
        self._gate = gate
        self._held = False

    async def acquire(self) -> None:
        """Wait until fewer than ``max_concurrency`` uploads are ahead of the consumer."""
        await self._gate.acquire()
        self._held = True

    def release(self) -> None:
        """The item was delivered (or will never be): let another upload start."""
        if self._held:
            self._held = False
            self._gate.release()


_Run = Callable[[Any, UploadPermit], Awaitable[tuple[Any, int]]]


class _Tally:
    """Counts shared by the pump and the iterator (the pump must not hold the iterator)."""

    __slots__ = ("delivered", "exhausted", "failure", "pulled", "total")

    def __init__(self, total: int | None) -> None:
        self.pulled = 0
        self.delivered = 0
        self.total = total  # the number of sources, when known beforehand (a list, a tuple)
        self.exhausted = False  # the sources ran out
        self.failure: BaseException | None = None

    @property
    def complete(self) -> bool:
        """Every source was pulled and its item delivered: nothing is left to lose. (Sources
        of unknown number are known to be over only once a worker has asked for one more.)"""
        ended = self.exhausted or self.pulled == self.total
        return ended and self.failure is None and self.delivered == self.pulled


class MapIterator(Generic[S]):
    """The async iterator returned by :meth:`AsyncClient.map`: one :class:`MapItem` per source.

    Items come in completion order. ``async with`` gives the iteration a task group of its own
    and stops every image in progress when the block is left; a bare ``async for`` stops them
    when the loop is left (``break``, an exception) or the iterator is dropped.

    Attributes:
        in_flight: sources taken from the input whose items have not been delivered yet.
        delivered: items handed to the consumer so far.

    Example:
        >>> import asyncio
        >>> from clipnormals import AsyncClient
        >>> async def main() -> list[str]:
        ...     async with AsyncClient() as client:
        ...         async with client.map(["a.jpg", "b.png", "c.webp"]) as items:
        ...             return sorted(item.source for item in [i async for i in items] if item.ok)
        >>> asyncio.run(main())
        ['a.jpg', 'b.png', 'c.webp']
    """

    def __init__(
        self,
        sources: Iterable[S] | AsyncIterable[S],
        *,
        depth: int,
        uploads: int,
        run: _Run,
        image: Callable[[S], Any] | None,
        on_close: Callable[[MapIterator[Any]], None],
    ) -> None:
        self._sources = sources
        self._depth = depth
        self._uploads = uploads
        self._run = run
        self._image = image
        self._on_close = on_close
        # A collection (not an iterator over one) says how many sources there are.
        total = len(sources) if isinstance(sources, Collection) else None
        self._tally = _Tally(total)
        self._receive: MemoryObjectReceiveStream[MapItem[S]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._abort: BaseException | None = None  # why the client ended the iteration

    @property
    def in_flight(self) -> int:
        """Sources pulled from the input whose items have not been delivered yet."""
        return self._tally.pulled - self._tally.delivered

    @property
    def delivered(self) -> int:
        """Items handed to the consumer so far."""
        return self._tally.delivered

    def __aiter__(self) -> Self:
        return self

    def _start(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """Make the streams; return the pump to run (it holds the send side, not ``self``)."""
        send, receive = anyio.create_memory_object_stream[MapItem[S]](0)
        self._receive = receive
        pump = _Pump(
            self._sources, self._depth, self._uploads, self._run, self._image, self._tally, send
        )
        return pump.run

    async def __anext__(self) -> MapItem[S]:
        if self._closed:
            self._raise_abort()
            raise StopAsyncIteration
        if self._receive is None:
            self._task = asyncio.get_running_loop().create_task(self._start()())
        assert self._receive is not None  # noqa: S101 - set just above
        try:
            # An item a worker is already waiting to hand over is taken without a trip
            # through the event loop (the worker is woken); otherwise, wait for one.
            try:
                item = self._receive.receive_nowait()
            except anyio.WouldBlock:
                # The caller's task runs on asyncio: said for the wait, sniffio answers anyio at
                # once (the workers' tasks say it once for all, see ``_Pump.run``).
                token = sniffio.current_async_library_cvar.set("asyncio")
                try:
                    item = await self._receive.receive()
                finally:
                    sniffio.current_async_library_cvar.reset(token)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            failure = self._tally.failure
            await self.aclose()
            if failure is not None:
                raise failure from None
            self._raise_abort()
            raise StopAsyncIteration from None
        self._tally.delivered += 1
        return item

    async def __aenter__(self) -> Self:
        if self._closed:
            self._raise_abort()  # the client was closed before the block began
        if self._receive is not None or self._closed:
            raise RuntimeError("enter client.map(...) with `async with` before iterating it")
        pump = self._start()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        group.start_soon(pump)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group = self._group
        self._group = None
        self._close_streams()
        if group is None:
            await self.aclose()
            return None
        group.cancel_scope.cancel()
        try:
            if exc is None or isinstance(exc, asyncio.CancelledError):
                swallowed = await group.__aexit__(exc_type, exc, tb)
                if swallowed:
                    # The block was cancelled from inside: by the client closing, say so.
                    self._raise_abort()
                return swallowed
            # The body's own error: stop the workers, then let it through unwrapped (a task
            # group would turn it into an exception group).
            await group.__aexit__(None, None, None)
            return None
        finally:
            self._finish()

    async def abort(self, error: BaseException) -> None:
        """End the iteration for a reason of the client's (it was closed): like
        :meth:`aclose`, but the consumer's next step raises ``error`` (the ``async with`` block
        raises it on exit) instead of ending as if every source had been done. An iteration
        whose every item was delivered already ends as it would have."""
        if self._closed:
            return
        if not self._delivered_everything():
            self._abort = error
        await self.aclose()

    def _delivered_everything(self) -> bool:
        """Every source was pulled and its item delivered (see ``_Tally.complete``)."""
        return self._tally.complete

    def _raise_abort(self) -> None:
        if self._abort is not None:
            raise self._abort

    async def aclose(self) -> None:
        """Stop pulling sources and cancel the images in progress.

        Waits until they are cancelled; a cancellation of the caller is not swallowed.
        """
        if self._closed:
            return
        self._close_streams()
        if self._group is not None:
            self._group.cancel_scope.cancel()  # the ``async with`` block finishes the job
            return
        task = self._task
        self._finish()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    def _close_streams(self) -> None:
        if self._receive is not None:
            self._receive.close()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)

    def __del__(self) -> None:
        # A bare ``async for`` that was left early: nobody will read what the workers make.
        self._close_streams()
        task = self._task
        if task is None or task.done():
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop = task.get_loop()
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                task.cancel()
            else:
                loop.call_soon_threadsafe(task.cancel)


class _Pump(Generic[S]):
    """The workers. Holds the sources and the send side, never the iterator."""

    __slots__ = ("_depth", "_image", "_run", "_send", "_sources", "_tally", "_uploads")

    def __init__(
        self,
        sources: Iterable[S] | AsyncIterable[S],
        depth: int,
        uploads: int,
        run: _Run,
        image: Callable[[S], Any] | None,
        tally: _Tally,
        send: MemoryObjectSendStream[MapItem[S]],
    ) -> None:
        self._sources = sources
        self._depth = depth
        self._uploads = uploads
        self._run = run
        self._image = image
        self._tally = tally
        self._send = send

    async def run(self) -> None:
        # This task and the workers it starts (each with a copy of its context) run on asyncio;
        # said once here, sniffio answers anyio's "which event loop?" at once, instead of
        # sniffing it again in every cancel scope, lock and checkpoint (a tenth of the CPU
        # of a request).
        sniffio.current_async_library_cvar.set("asyncio")
        send = self._send
        # A fixed pool of workers, not a task per image: cheaper per image, and the pool size
        # is the bound on sources and results alive at once.
        sources = _Sources(self._sources)
        # asyncio's own lock and semaphore: taken at once when free, without a trip through
        # the event loop or anyio's look-up of the running library (a cancellation is still
        # delivered while one waits); the source iterator and the workers' sends yield already.
        turn = asyncio.Lock()
        gate = asyncio.Semaphore(self._uploads)
        try:
            async with send, anyio.create_task_group() as tg:
                for _ in range(self._depth):
                    tg.start_soon(self._work, sources, turn, gate, send.clone(), tg.cancel_scope)
        finally:
            with anyio.CancelScope(shield=True):
                await sources.aclose()

    async def _work(
        self,
        sources: _Sources[S],
        turn: asyncio.Lock,
        gate: asyncio.Semaphore,
        send: MemoryObjectSendStream[MapItem[S]],
        scope: anyio.CancelScope,
    ) -> None:
        tally = self._tally
        async with send:
            while True:
                async with turn:  # one worker at a time pulls the next source
                    try:
                        source = await sources.next()
                    except StopAsyncIteration:
                        tally.exhausted = True
                        return
                    except Exception as exc:  # the caller's iterable failed: stop everything
                        if tally.failure is None:
                            tally.failure = exc
                        scope.cancel()
                        return
                    index = tally.pulled
                    tally.pulled += 1
                # Every image yields to the others once, even when nothing about it blocks (a
                # sync iterable of images refused before any I/O), outside the turn so that no
                # worker waits for it.
                await asyncio.sleep(0)
                try:
                    image = source if self._image is None else self._image(source)
                except Exception as exc:  # the caller's extractor failed: like the iterable
                    if tally.failure is None:
                        tally.failure = exc
                    scope.cancel()
                    return
                permit = UploadPermit(gate)
                try:
                    value, attempts = await self._run(image, permit)
                    if isinstance(value, ClipnormalsError):
                        _forget_locals(value)
                        item = MapItem(index=index, source=source, error=value, attempts=attempts)
                    else:
                        item = MapItem(index=index, source=source, result=value, attempts=attempts)
                    try:
                        # Handed straight to a consumer already waiting for it; otherwise,
                        # wait until one takes it (the stream holds no item: the bound).
                        try:
                            send.send_nowait(item)
                        except anyio.WouldBlock:
                            await send.send(item)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        scope.cancel()  # the consumer went away: start nothing more
                        return
                finally:
                    permit.release()


def _forget_locals(error: BaseException) -> None:
    """Drop the tracebacks of ``error``, its causes and its contexts. Failed items are often
    kept (to report them, to try them again), and a traceback keeps its frames, which hold the
    image: its bytes, its decoded pixels. (Clearing the frames instead would keep the file and
    line numbers, but clearing a frame of a coroutine still suspended elsewhere, as one of a
    shared error's could be, would close that coroutine.)"""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


class _Sources(Generic[S]):
    """One iterator over a sync or async iterable, pulled with ``await next()``."""

    __slots__ = ("_async", "_sync")

    def __init__(self, sources: Iterable[S] | AsyncIterable[S]) -> None:
        self._async: AsyncIterator[S] | None = None
        self._sync: Iterator[S] | None = None
        if isinstance(sources, AsyncIterable):
            self._async = aiter(sources)
        else:
            self._sync = iter(sources)

    async def next(self) -> S:
        if self._async is not None:
            return await anext(self._async)
        assert self._sync is not None  # noqa: S101 - one of the two is set
        try:
            return next(self._sync)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        closer = getattr(self._async, "aclose", None)
        if closer is not None:
            await closer()
        sync_close = getattr(self._sync, "close", None)
        if sync_close is not None:
            sync_close()
