"""An asyncio worker: portraits arrive on a queue, a few tasks share one client.

Against the API (key in CLIPDROP_API_KEY):

    python asyncio_worker.py OUT_DIR portrait1.jpg portrait2.png ...

Against the built-in emulator, with injected server errors and resets (no key, no network):

    python asyncio_worker.py --emulator OUT_DIR
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import clipnormals

WORKERS = 4
log = logging.getLogger("worker")


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    not_sent: int = 0


async def worker(
    client: clipnormals.AsyncClient,
    queue: asyncio.Queue[Path],
    out_dir: Path,
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    while True:
        path = await queue.get()
        try:
            if stop.is_set():
                tally.not_sent += 1  # drain the queue without sending anything
                continue
            # Retries, the quota and the credit checks happen inside this one call.
            nm = await client.surface_normals(path)
            await nm.load()  # decode normals and mask in a thread: the loop stays free
            target = out_dir / f"{path.stem}.normals.npz"
            await asyncio.to_thread(nm.save, target)
            tally.done += 1
            log.info("%s -> %s (person: %.0f%% of the frame)", path, target, 100 * nm.mask.mean())
        except clipnormals.InvalidImageError as exc:
            tally.failed += 1
            log.warning("%s rejected before upload: %s", path, exc.message)
        except (
            clipnormals.CreditBudgetError,  # the reserve or the budget is reached
            clipnormals.InsufficientCreditsError,  # 402
            clipnormals.PermissionDeniedError,  # 403
            clipnormals.ClientClosedError,  # halted by an earlier 402/403
        ) as exc:
            # Nothing else can succeed: stop sending.
            tally.failed += 1
            log.error("stopping: %s", exc.message)
            stop.set()
        except clipnormals.ClipnormalsError as exc:
            tally.failed += 1  # already retried as far as the RetryPolicy allows
            log.warning("%s failed: %s", path, exc.message)
        finally:
            queue.task_done()


async def serve(client: clipnormals.AsyncClient, paths: list[Path], out_dir: Path) -> Tally:
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    queue: asyncio.Queue[Path] = asyncio.Queue(maxsize=2 * WORKERS)  # back-pressure
    tally, stop = Tally(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        workers = [
            tg.create_task(worker(client, queue, out_dir, tally, stop)) for _ in range(WORKERS)
        ]
        for path in paths:  # in a real service: a message broker, a socket, a watch folder...
            await queue.put(path)
        await queue.join()
        for task in workers:
            task.cancel()
    return tally


def open_client(use_emulator: bool) -> clipnormals.AsyncClient:
    if not use_emulator:
        return clipnormals.AsyncClient(max_concurrency=WORKERS)  # key from CLIPDROP_API_KEY
    from clipnormals.emulator import Emulator, Faults
    from clipnormals.testing import client_for, emulator_config

    faults = Faults(server_error=0.1, reset=0.05)  # about one attempt in seven fails
    emulator = Emulator(emulator_config(faults=faults, seed=7))
    return client_for(emulator, max_concurrency=WORKERS)


async def main(argv: list[str]) -> int:
    use_emulator = "--emulator" in argv
    args = [a for a in argv if a != "--emulator"]
    if not args:
        print(__doc__)
        return 2
    out_dir, paths = Path(args[0]), [Path(p) for p in args[1:]]
    if use_emulator and not paths:
        samples = Path(clipnormals.__file__).parent / "samples"
        # The two bundled portraits, six times each: enough requests for the faults to show.
        paths = sorted(samples.glob("*.png")) * 6
    async with open_client(use_emulator) as client:
        tally = await serve(client, paths, out_dir)
        stats = client.stats
        print(
            f"{tally.done} done, {tally.failed} failed, {tally.not_sent} not sent; "
            f"{stats.attempts} requests "
            f"({stats.retries} retries), {client.credits.consumed} credits spent, "
            f"{client.credits.remaining} left"
        )
    return 0 if tally.failed == tally.not_sent == 0 else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too many
    sys.exit(asyncio.run(main(sys.argv[1:])))
