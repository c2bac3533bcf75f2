"""Streaming many images through the client with bounded memory.

A pump task runs ``depth`` workers; each pulls the next source (one worker at a time), runs it,
and waits until the consumer has taken its item before pulling another. So at most ``depth``
sources and results are alive at once, whether the input holds ten images or ten million, and a
slow consumer slows the workers instead of filling memory.

The pump runs in its own asyncio task: an async generator must not yield from inside a task
group, and the consumer may stop iterating at any point. Closing the iterator (or the client)
cancels the pump, which cancels the workers: their slots, tokens and credit reservations are
released by the ``async with`` blocks they are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import ClipnormalsError
from .results import MapItem

__all__ = ["MapIterator"]

S = TypeVar("S")
_Run = Callable[[Any], Awaitable[tuple[Any, int]]]


class MapIterator(Generic[S]):
    """The async iterator returned by :meth:`AsyncClient.map`.

    Example:
        >>> async def run(client, paths):
        ...     async with client.map(paths) as items:
        ...         async for item in items:
        ...             print(item.source, "ok" if item.ok else item.error)
    """

    def __init__(
        self,
        sources: Iterable[S] | AsyncIterable[S],
        *,
        depth: int,
        run: _Run,
        on_close: Callable[[MapIterator[Any]], None],
    ) -> None:
        self._sources = sources
        self._depth = depth
        self._run = run
        self._on_close = on_close
        send, receive = anyio.create_memory_object_stream[MapItem[S]](0)
        self._send: MemoryObjectSendStream[MapItem[S]] = send
        self._receive: MemoryObjectReceiveStream[MapItem[S]] = receive
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MapItem[S]:
        if self._closed:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            task = self._task
            await self.aclose()
            if not task.cancelled() and (exc := task.exception()) is not None:
                # The task group wraps what the source iterable raised; hand it over bare.
                while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]
                raise exc from None
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop pulling sources and cancel the images in progress."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(_wait(task))
        self._receive.close()
        self._send.close()

    async def _pump(self) -> None:
        # A fixed pool of workers, not a task per image: cheaper per image, and the pool size
        # is the bound on sources and results alive at once.
        sources = _iterate(self._sources)
        turn = anyio.Lock()
        counter = itertools.count()
        try:
            async with self._send, anyio.create_task_group() as tg:
                for _ in range(self._depth):
                    tg.start_soon(self._work, sources, turn, counter, self._send.clone())
        finally:
            with anyio.CancelScope(shield=True):
                await sources.aclose()

    async def _work(
        self,
        sources: AsyncIterator[S],
        turn: anyio.Lock,
        counter: itertools.count[int],
        send: MemoryObjectSendStream[MapItem[S]],
    ) -> None:
        async with send:
            while True:
                async with turn:  # one worker at a time pulls the next source
                    try:
                        source = await anext(sources)
                    except StopAsyncIteration:
                        return
                    index = next(counter)
                value, attempts = await self._run(source)
                if isinstance(value, ClipnormalsError):
                    item = MapItem(index=index, source=source, error=value, attempts=attempts)
                else:
                    item = MapItem(index=index, source=source, result=value, attempts=attempts)
                try:
                    await send.send(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the consumer went away; nobody is left to tell


async def _wait(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(BaseException):
        await task


async def _iterate(sources: Iterable[S] | AsyncIterable[S]) -> AsyncGenerator[S, None]:
    if isinstance(sources, AsyncIterable):
        async for source in sources:
            yield source
    else:
        for source in sources:
            yield source
            # Give the workers a turn even when the iterable never blocks.
            await anyio.lowlevel.checkpoint()
