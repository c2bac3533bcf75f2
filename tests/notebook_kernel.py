"""Run a percent-format notebook as a Jupyter kernel does, and watch its event loop.

    python tests/notebook_kernel.py NOTEBOOK.py REPORT.json

A Jupyter (IPython) kernel runs every cell on one asyncio event loop that keeps running between
cells, and compiles each cell with ``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`` so that a cell may
``await`` at the top level. This does the same with the standard library alone: the cells
("# %%" lines; "# %% [markdown]" cells are skipped) share one namespace and run in order on one
loop. Beside them a heartbeat task ticks every 50 ms, standing for the kernel's other work
(widgets, progress bars, tasks started in earlier cells). A cell that keeps the loop busy
(a blocking call) gets no tick while it runs; a cell that awaits lets them through.

REPORT.json gets one record per cell: its first line number, its first code line, the seconds
it took and the heartbeat ticks during it. A failing cell stops the run with its traceback.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

TICK = 0.05


def cells(source: str) -> list[tuple[int, str]]:
    """The code cells of a percent-format file: (first line number, code)."""
    found: list[tuple[int, list[str]]] = [(1, [])]  # code before the first marker, if any
    markdown = False
    for number, line in enumerate(source.splitlines(), start=1):
        if line.startswith("# %%"):
            markdown = "[markdown]" in line
            if not markdown:
                found.append((number + 1, []))
        elif not markdown:
            found[-1][1].append(line)
    return [(number, "\n".join(lines)) for number, lines in found if "".join(lines).strip()]


async def run(path: Path, source: str) -> list[dict[str, Any]]:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(TICK)
            ticks += 1

    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    records = []
    beat = asyncio.get_running_loop().create_task(heartbeat())
    try:
        for first_line, code in cells(source):
            compiled = compile(
                "\n" * (first_line - 1) + code,  # tracebacks give the file's line numbers
                str(path),
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            )
            before, start = ticks, time.perf_counter()
            result = eval(compiled, namespace)  # noqa: S307 - what a kernel does with a cell
            if inspect.iscoroutine(result):
                await result
            records.append(
                {
                    "line": first_line,
                    "code": next(s for s in code.splitlines() if s.strip()),
                    "source": code,
                    "seconds": time.perf_counter() - start,
                    "ticks": ticks - before,
                }
            )
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    return records


def main() -> int:
    notebook, report = Path(sys.argv[1]), Path(sys.argv[2])
    sys.argv = [str(notebook)]
    records = asyncio.run(run(notebook, notebook.read_text()))
    report.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
