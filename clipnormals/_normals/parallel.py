"""Row blocks of an image, processed by a few threads at once.

numpy releases the interpreter lock inside its loops, so the rows of a large image split into
blocks and handed to threads are processed in parallel, one block per core; each block gives
the same numbers it would give in one pass (the work here is row-local or combined exactly
afterwards), so results do not depend on how many threads run.

The threads come from one small pool per process, made on first use (never at import) and made
anew in a forked child. Blocks are handed out one at a time, a few per core: the calling
thread works through them too, and a pool thread that the system does not schedule in time
(a busy machine) simply finds none left, so the call never waits for a thread that has not
started: at worst it runs at one thread's speed. An image smaller than :data:`MIN_BLOCK_PIXELS`
per block stays in the calling thread: handing it over would cost more than it saves.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["MIN_BLOCK_PIXELS", "cores", "in_blocks", "row_blocks"]

#: The fewest pixels worth a block of its own (about 0.2 ms of numpy work).
MIN_BLOCK_PIXELS = 1 << 17
_MAX_THREADS = 4
_BLOCKS_PER_CORE = 4

_T = TypeVar("_T")
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def cores() -> int:
    """How many cores this process may use (its CPU affinity), at most 4."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, available))


def row_blocks(
    height: int, width: int, *, min_pixels: int = MIN_BLOCK_PIXELS, align: int = 1
) -> list[tuple[int, int]]:
    """Split ``height`` rows into a few blocks per core, of at least ``min_pixels`` each.

    Returns ``(top, bottom)`` pairs covering ``0..height`` in order; block edges fall on
    multiples of ``align`` rows.

    Example:
        >>> row_blocks(10, 10)
        [(0, 10)]
        >>> len(row_blocks(4000, 3000)) == (1 if cores() == 1 else 4 * cores())
        True
    """
    threads = cores()
    if threads == 1:
        return [(0, height)]
    parts = max(1, min(_BLOCKS_PER_CORE * threads, (height * width) // max(min_pixels, 1)))
    if parts == 1 or height < 2 * align:
        return [(0, height)]
    step = -(-height // parts)
    step = -(-step // align) * align
    return [(top, min(top + step, height)) for top in range(0, height, step)]


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(
                max_workers=_MAX_THREADS - 1, thread_name_prefix="clipnormals-numpy"
            )
            _pool_pid = os.getpid()
        return _pool


def in_blocks(work: Callable[[int, int], _T], blocks: Sequence[tuple[int, int]]) -> list[_T]:
    """``[work(top, bottom) for top, bottom in blocks]``, blocks run by several threads at once.

    ``work`` must not itself wait on this pool. The first error raised is raised here, once
    every block that started has finished.

    Example:
        >>> in_blocks(lambda top, bottom: bottom - top, [(0, 3), (3, 5)])
        [3, 2]
    """
    if len(blocks) <= 1:
        return [work(top, bottom) for top, bottom in blocks]
    results: list[_T | None] = [None] * len(blocks)
    errors: list[BaseException] = []
    taken = itertools.count()  # next() is atomic: each block is taken once

    def drain() -> None:
        while True:
            i = next(taken)
            if i >= len(blocks) or errors:
                return
            try:
                results[i] = work(*blocks[i])
            except BaseException as exc:
                errors.append(exc)
                return

    pool = _executor()
    helpers: list[Future[None]] = [pool.submit(drain) for _ in range(min(cores(), len(blocks)) - 1)]
    drain()
    for helper in helpers:
        if not helper.cancel():  # started: let it finish the block it holds
            helper.result()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
