"""Memory: peak resident set while 100, 1,000 and 10,000 small images go through ``client.map``
and through the batch runner (``clipnormals.batch.run_batch``, what ``clipnormals batch`` runs).

Each measurement is a fresh child process, so every peak (``VmHWM`` from ``/proc/self/status``)
belongs to one run alone. The emulator runs in the same process through
``httpx.ASGITransport`` (canned 64x64 maps, no latency, a token-bucket limit far above what the
machine can do, which keeps no per-request history); the client's limiter is set as high.

- ``map``: the images are made one by one by a generator (96x120 PNGs, all different), never
  held in a list; each result is dropped once seen.
- ``batch``: the images are written to a temporary folder first (by this parent process), then
  the child runs the batch runner over it with default options: hashing, manifest, one normal
  map JPEG written per image.
- ``dryrun``: ``clipnormals.batch.dry_run`` over the same folder with the same client: it finds,
  hashes and prepares every image and sends nothing. Its peak should not exceed the run's.

Reported per run: the peak, the resident set just before the run started (interpreter, imports,
emulator), their difference, and the growth from the smallest to the largest run per 1,000
images. "Flat" means the largest run's peak is within 5% of the smallest run's.

    python benchmarks/memory.py                 # about 3 minutes
    python benchmarks/memory.py --quick         # 100 and 1,000 only

Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, machine, peak_rss_mib, shown, small_png, write_json

KEY = "bench-memory"
MODES = ("map", "batch", "dryrun")
# "Flat": the largest run's peak within this fraction of the smallest run's.
FLAT_TOLERANCE = 0.05


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process_client() -> Any:
    import clipnormals
    import clipnormals.batch
    from clipnormals.emulator import Emulator, EmulatorConfig, ServerLimit

    emulator = Emulator(
        EmulatorConfig(
            keys={KEY: 10**12},
            limit=ServerLimit(requests=10**9, per=1.0, policy="token"),
            synth="canned",
        )
    )
    return clipnormals.AsyncClient(
        api_key=KEY,
        base_url="http://127.0.0.1",
        transport=emulator.transport(),
        rate_limit=clipnormals.RateLimit(requests=10**9, per=1.0),
    )


def images(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield small_png(i)


async def child_map(n: int) -> dict[str, Any]:
    done = 0
    async with in_process_client() as client:
        # Warm up with one image, so the baseline includes the lazily imported app and caches.
        async for item in client.map(images(1)):
            item.unwrap()
        before = rss_mib()
        started = time.perf_counter()
        async for item in client.map(images(n)):
            item.unwrap()
            done += 1
        seconds = time.perf_counter() - started
    return {"done": done, "seconds": seconds, "rss_before_mib": before}


async def _timed_over_folder(folder: Path, dry: bool) -> dict[str, Any]:
    """``run_batch`` (or ``dry_run``) over ``folder``, on a client already warmed up by one
    image: its time, the images it did (or would send), and the RSS before it started."""
    import clipnormals.batch

    with tempfile.TemporaryDirectory(prefix="clipnormals-bench-out-") as out:
        config = clipnormals.batch.BatchConfig(inputs=[folder], output_dir=Path(out))
        async with in_process_client() as client:
            async for item in client.map(images(1)):
                item.unwrap()
            before = rss_mib()
            started = time.perf_counter()
            if dry:
                done = (await clipnormals.batch.dry_run(config, client=client)).to_send
            else:
                done = (await clipnormals.batch.run_batch(config, client=client)).done
            seconds = time.perf_counter() - started
    return {"done": done, "seconds": seconds, "rss_before_mib": before}


async def child_batch(n: int, folder: Path) -> dict[str, Any]:
    return await _timed_over_folder(folder, dry=False)


async def child_dryrun(n: int, folder: Path) -> dict[str, Any]:
    return await _timed_over_folder(folder, dry=True)


def child(mode: str, n: int, folder: Path | None) -> None:
    if mode == "map":
        result = asyncio.run(child_map(n))
    elif mode == "batch":
        assert folder is not None
        result = asyncio.run(child_batch(n, folder))
    else:
        assert folder is not None
        result = asyncio.run(child_dryrun(n, folder))
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def make_folder(n: int, root: Path) -> Path:
    folder = root / f"in-{n}"
    folder.mkdir()
    for i in range(n):
        (folder / f"portrait-{i:05d}.png").write_bytes(small_png(i))
    return folder


def measure(mode: str, n: int, folder: Path | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, str(n)]
    if folder is not None:
        command.append(str(folder))
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} with {n} images failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["done"] != n:
        raise RuntimeError(f"{mode} with {n} images: only {result['done']} done")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 images only")
    parser.add_argument("--output", type=Path, default=RESULTS / "memory.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, n_text, *rest = args.child
        child(mode, int(n_text), Path(rest[0]) if rest else None)
        return 0

    sizes = args.sizes or ([100, 1000] if args.quick else [100, 1000, 10000])
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    print(f"{'':6} {'images':>7} {'peak RSS':>10} {'before':>9} {'growth':>9} {'time':>7}")
    with tempfile.TemporaryDirectory(prefix="clipnormals-bench-in-") as tmp:
        for mode in args.modes:
            for n in sizes:
                folder = None
                if mode != "map":
                    folder = Path(tmp, f"in-{n}")
                    if not folder.exists():
                        make_folder(n, Path(tmp))
                r = measure(mode, n, folder)
                r["images"] = n
                r["growth_mib"] = r["peak_rss_mib"] - r["rss_before_mib"]
                results[mode].append(r)
                print(
                    f"{mode:6} {n:>7} {r['peak_rss_mib']:>7.1f} MiB {r['rss_before_mib']:>5.1f} MiB"
                    f" {r['growth_mib']:>5.1f} MiB {r['seconds']:>6.1f}s"
                )
    verdicts = []
    for mode, rows in results.items():
        small, large = rows[0], rows[-1]
        extra = large["images"] - small["images"]
        kib_per_image = 1024 * (large["peak_rss_mib"] - small["peak_rss_mib"]) / max(extra, 1)
        flat = large["peak_rss_mib"] <= small["peak_rss_mib"] * (1 + FLAT_TOLERANCE)
        verdicts.append(
            f"{mode}: peak {small['peak_rss_mib']:.1f} MiB at {small['images']} images, "
            f"{large['peak_rss_mib']:.1f} MiB at {large['images']}: "
            f"{kib_per_image:.2f} KiB per extra image: {'flat' if flat else 'NOT flat'} "
            f"(flat: within {FLAT_TOLERANCE:.0%})"
        )
    if "batch" in results and "dryrun" in results:
        for run, dry in zip(results["batch"], results["dryrun"], strict=True):
            ratio = dry["peak_rss_mib"] / run["peak_rss_mib"]
            growth = dry["growth_mib"] / max(run["growth_mib"], 0.1)
            verdicts.append(
                f"dry run at {run['images']} images: peak {dry['peak_rss_mib']:.1f} MiB, "
                f"{ratio:.2f}x the run's {run['peak_rss_mib']:.1f} MiB (growth "
                f"{dry['growth_mib']:.1f} vs {run['growth_mib']:.1f} MiB: {growth:.2f}x); "
                f"target <= 1.00x"
            )
    print("\n" + "\n".join(verdicts))
    report = {
        "benchmark": "memory",
        "machine": machine(),
        "command": " ".join(["python benchmarks/memory.py", *(argv or sys.argv[1:])]),
        "verdicts": verdicts,
        "results": results,
    }
    write_json(args.output, report)
    print(f"written {shown(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
