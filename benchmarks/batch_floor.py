"""The batch runner against the durable floor, and its cost per image as the batch grows.

Run from the repository root::

    python benchmarks/batch_floor.py                   # floor vs batch, then 1,000 vs 10,000
    python benchmarks/batch_floor.py --rounds 5 --skip-scale

The emulator serves from its own process on a loopback port (canned 64x64 maps, no rate limit,
no latency, uploads not decoded), so the server's CPU is the same for every way and never
shares an event loop with the client. The inputs are tiny PNGs (96x120, all different) written
to a folder beforehand.

**Floor vs batch** (``--images``, 1,500 by default): the two take turns, ``--rounds`` times,
each a fresh process writing into a fresh output folder; wall time from starting the process to
its exit (both pay their interpreter's start-up):

- ``floor``: the least any durable batch has to do: 16 asyncio workers, each reading a source,
  posting it with a bare ``httpx.AsyncClient`` and writing the answer to its output file with
  ``write`` + ``fsync`` in a worker thread (no validation, no hash, no manifest, no rename);
- ``batch``: ``python -m clipnormals batch IN -o OUT --concurrency 16 --plain`` with a client
  quota far above what the machine can do.

The figure is the floor's median wall time over the batch's: the batch's share of the floor's
speed (target 0.8 or more). Each child's CPU time (user + system, threads included) is printed
beside it.

**Cost per image, 1,000 vs 10,000 images** (``--scale``): ``run_batch`` in a fresh process,
timed from the call to its return (the interpreter's start-up left out, so that a fixed cost
does not flatter the large run), alternating the two sizes; the figure is the median seconds
per image at 10,000 over the same at 1,000 (target 1.1 or less: bookkeeping that grows with the
batch would show here).

**Event-loop lag** (with the scale runs): a task sleeping 5 ms in a loop during ``run_batch``
records how late it wakes; the p99 and the maximum are printed.

Writes ``benchmarks/results/batch_floor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS,
    ROOT,
    EmulatorProcess,
    ServerSpec,
    machine,
    percentile,
    shown,
    small_png,
    write_json,
)

KEY = "bench-batch-floor"
ENDPOINT = "/portrait-surface-normals/v1"
CONCURRENCY = 16
TARGET_SHARE = 0.8
TARGET_SCALE = 1.1
QUOTA = "1000000/1"  # far above what the machine can do: the client's limiter never waits


# -- the children -------------------------------------------------------------------------------


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sources(inputs: Path) -> list[Path]:
    return sorted(p for p in inputs.iterdir() if p.is_file())


async def _floor(inputs: Path, out: Path, url: str, concurrency: int) -> int:
    import httpx

    paths = iter(await asyncio.to_thread(_sources, inputs))
    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as http:

        async def worker() -> None:
            nonlocal done
            for path in paths:
                data = path.read_bytes()
                response = await http.post(
                    ENDPOINT,
                    headers={"x-api-key": KEY},
                    files={"image_file": (path.name, data, "image/png")},
                )
                response.raise_for_status()
                target = out / f"{path.name}.normals.jpg"
                await asyncio.to_thread(_write_durably, target, response.content)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def _lag_probe(lags: list[float], stop: asyncio.Event) -> Any:
    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lags.append(loop.time() - due)

    return probe()


async def _run_batch(inputs: Path, out: Path, url: str, concurrency: int) -> dict[str, Any]:
    import clipnormals
    from clipnormals.batch import BatchConfig, run_batch

    lags: list[float] = []
    stop = asyncio.Event()
    async with clipnormals.AsyncClient(
        api_key=KEY,
        base_url=url,
        rate_limit=clipnormals.RateLimit.parse(QUOTA),
        max_concurrency=concurrency,
    ) as client:
        probe = asyncio.ensure_future(_lag_probe(lags, stop))
        cpu = time.process_time()
        started = time.perf_counter()
        summary = await run_batch(BatchConfig(inputs=[inputs], output_dir=out), client=client)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        stop.set()
        await probe
    return {
        "done": summary.done,
        "seconds": seconds,
        "cpu_s": cpu,
        "lag_p99_ms": 1000 * percentile(lags, 99),
        "lag_max_ms": 1000 * max(lags, default=0.0),
    }


def child(args: list[str]) -> None:
    way, inputs, out, url = args
    if way == "floor":
        done = asyncio.run(_floor(Path(inputs), Path(out), url, CONCURRENCY))
        print(json.dumps({"done": done}))
    else:
        print(json.dumps(asyncio.run(_run_batch(Path(inputs), Path(out), url, CONCURRENCY))))


# -- the parent ---------------------------------------------------------------------------------


def make_inputs(root: Path, n: int) -> Path:
    folder = root / f"in-{n}"
    folder.mkdir()
    for i in range(n):
        (folder / f"portrait-{i:05d}.png").write_bytes(small_png(i))
    return folder


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds of one child process, and what it printed."""
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return seconds, _children_cpu() - cpu, done.stdout


def floor_vs_batch(
    root: Path, url: str, images: int, rounds: int, env: dict[str, str]
) -> dict[str, Any]:
    inputs = make_inputs(root, images)
    times: dict[str, list[float]] = {"floor": [], "batch": []}
    cpus: dict[str, list[float]] = {"floor": [], "batch": []}
    for r in range(rounds):
        order = ("floor", "batch") if r % 2 == 0 else ("batch", "floor")
        for way in order:
            out = root / f"out-{way}-{r}"
            if way == "floor":
                out.mkdir()
                command = [sys.executable, __file__, "--child", way, str(inputs), str(out), url]
            else:
                command = [
                    sys.executable, "-m", "clipnormals", "batch", str(inputs), "-o", str(out),
                    "--base-url", url, "--rate", QUOTA, "--concurrency", str(CONCURRENCY),
                    "--plain",
                ]  # fmt: skip
            seconds, cpu, _ = timed(command, env)
            written = sum(1 for p in out.rglob("*.normals.jpg"))
            if written != images:
                raise RuntimeError(f"{way}: {written} outputs of {images}")
            times[way].append(seconds)
            cpus[way].append(cpu)
            print(f"  round {r + 1} {way:>5}: {seconds:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)
            shutil.rmtree(out)
    floor_s = statistics.median(times["floor"])
    batch_s = statistics.median(times["batch"])
    return {
        "images": images,
        "rounds": rounds,
        "wall_s": times,
        "cpu_s": cpus,
        "floor_median_s": floor_s,
        "batch_median_s": batch_s,
        "share_of_floor_speed": floor_s / batch_s,
        "cpu_ratio": statistics.median(cpus["batch"]) / statistics.median(cpus["floor"]),
    }


def scale(root: Path, url: str, sizes: tuple[int, int], rounds: int) -> dict[str, Any]:
    folders = {n: make_inputs(root, n) for n in sizes}
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for r in range(rounds):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            out = root / f"scale-{n}-{r}"
            command = [sys.executable, __file__, "--child", "run_batch", str(folders[n]), str(out)]
            _, _, printed = timed([*command, url], dict(os.environ))
            result = json.loads(printed.strip().splitlines()[-1])
            if result["done"] != n:
                raise RuntimeError(f"run_batch over {n}: {result['done']} done")
            runs[n].append(result)
            print(
                f"  round {r + 1} {n:>6} images: {result['seconds']:6.2f} s, "
                f"{1000 * result['seconds'] / n:.3f} ms/image, {result['cpu_s']:6.2f} s CPU, "
                f"loop lag p99 {result['lag_p99_ms']:.1f} ms (max {result['lag_max_ms']:.1f})",
                flush=True,
            )
            shutil.rmtree(out)
    small, large = sizes
    per_image = {n: statistics.median(x["seconds"] / n for x in runs[n]) for n in sizes}
    cpu_per_image = {n: statistics.median(x["cpu_s"] / n for x in runs[n]) for n in sizes}
    return {
        "sizes": list(sizes),
        "rounds": rounds,
        "runs": {str(n): v for n, v in runs.items()},
        "ms_per_image": {str(n): 1000 * v for n, v in per_image.items()},
        "cpu_ms_per_image": {str(n): 1000 * v for n, v in cpu_per_image.items()},
        "ratio": per_image[large] / per_image[small],
        "cpu_ratio": cpu_per_image[large] / cpu_per_image[small],
        "lag_p99_ms": {str(n): statistics.median(x["lag_p99_ms"] for x in runs[n]) for n in sizes},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=int, nargs=2, default=[1000, 10000], metavar=("N", "M"))
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "batch_floor.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    spec = ServerSpec(requests=None, synth="canned", verify_images=False, trace=False)
    env = dict(os.environ, CLIPDROP_API_KEY=KEY)
    report: dict[str, Any] = {
        "benchmark": "batch_floor",
        "machine": machine(),
        "command": " ".join(["python benchmarks/batch_floor.py", *(argv or sys.argv[1:])]),
        "load_average": os.getloadavg(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="clipnormals-bench-batch-") as tmp,
        EmulatorProcess(spec, key=KEY) as server,
    ):
        root = Path(tmp)
        if not args.skip_floor:
            print(f"floor vs batch, {args.images} images, {args.rounds} rounds")
            floor = floor_vs_batch(root, server.url, args.images, args.rounds, env)
            report["floor_vs_batch"] = floor
            print(
                f"floor {floor['floor_median_s']:.2f} s, batch {floor['batch_median_s']:.2f} s: "
                f"the batch runs at {floor['share_of_floor_speed']:.2f} of the floor's speed "
                f"(target >= {TARGET_SHARE}); CPU {floor['cpu_ratio']:.2f}x the floor's"
            )
        if not args.skip_scale:
            small, large = args.scale
            print(f"cost per image, {small} vs {large} images, {args.scale_rounds} rounds")
            grown = scale(root, server.url, (small, large), args.scale_rounds)
            report["scale"] = grown
            ms = grown["ms_per_image"]
            print(
                f"{ms[str(small)]:.3f} ms/image at {small}, {ms[str(large)]:.3f} at {large}: "
                f"ratio {grown['ratio']:.2f} (target <= {TARGET_SCALE}); "
                f"CPU per image ratio {grown['cpu_ratio']:.2f}"
            )
    write_json(args.output, report)
    print(f"written {shown(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
