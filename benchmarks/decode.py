"""Decode benchmark: normals + mask per image, against a bare Pillow decode of the same JPEG.

Run from the repository root::

    python benchmarks/decode.py                 # 1, 4, 12 and 25 megapixels, relight at 4
    python benchmarks/decode.py --sizes 1 4 --repeats 5

For each size a synthetic portrait (tests/synthetic.py) is encoded as a JPEG at quality 90, then
timed both ways, alternating so that a busy machine slows both alike:

- ``pillow``: ``np.asarray(Image.open(...).convert("RGB"))``, the floor for any decoder;
- ``normals+mask``: a fresh ``NormalMap(jpeg)``, then ``.normals`` and ``.mask`` (this includes
  the same Pillow decode); the JSON also has the median of each of the three parts.

- ``relight`` (at ``--relight-sizes``, 4 MP by default): ``nm.relight(photo, light=...,
  ambient=0.2)`` on a noisy 8-bit RGB ``PIL.Image`` the map's size, the map already decoded.

Peak memory is measured in a fresh child process per size: the growth of the peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) during a bare decode, and during
``NormalMap(jpeg)`` + ``.normals`` + ``.mask``, in units of the RGB array (H x W x 3 bytes).
What a NormalMap keeps (rgb, float32 normals, bool mask) is itself 1 + 4 + 1/3 of that: the
floor. Each peak is taken twice: as the process runs by default, and with glibc's
``MALLOC_MMAP_THRESHOLD_=131072`` in the child's environment, which makes the C allocator give
every large block back to the system when it is freed (by default it keeps blocks below a
threshold that grows up to 32 MiB, so the pages of Pillow's decoding buffer stay resident
after Pillow frees them, and count in the peak).

Every figure is the median of interleaved rounds; the machine's load average is recorded.
Normals, mask and relighting split their work over up to :func:`clipnormals._normals.parallel.
cores` threads (the JSON says how many).

The medians are printed as a table and written to ``benchmarks/results/decode.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from clipnormals import DirectionalLight, NormalMap  # noqa: E402
from clipnormals._normals.parallel import cores  # noqa: E402
from tests.synthetic import portrait  # noqa: E402

DEFAULT_SIZES = (1.0, 4.0, 12.0, 25.0)
RELIGHT_SIZES = (4.0,)
KEY_LIGHT = DirectionalLight((0.7, 0.3, 0.65), intensity=1.2)
API_MAX_PIXELS = 25_000_000


def portrait_size(megapixels: float) -> tuple[int, int]:
    """A 4:5 portrait of about this many megapixels, never over the API's limit."""
    pixels = min(int(megapixels * 1_000_000), API_MAX_PIXELS)
    width = int(math.sqrt(pixels * 4 / 5))
    return width, pixels // width


def pillow_decode(data: bytes) -> None:
    np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def normals_and_mask(data: bytes) -> tuple[float, float, float]:
    """Seconds spent decoding the JPEG, then the normals, then the mask."""
    start = time.perf_counter()
    nm = NormalMap(data)
    _ = nm.rgb
    decoded = time.perf_counter()
    _ = nm.normals
    normals = time.perf_counter()
    _ = nm.mask
    return decoded - start, normals - decoded, time.perf_counter() - normals


def timed_pillow(data: bytes) -> float:
    start = time.perf_counter()
    pillow_decode(data)
    return time.perf_counter() - start


def _vm_hwm() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _peak_growth(action: str, data: bytes) -> int:
    """Bytes the peak resident set grew by while ``action`` ran (in this process)."""
    import ctypes
    import gc

    gc.collect()
    # Hand freed heap back to the system, or the action reuses it without the peak moving.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident set
    before = _vm_hwm()
    if action == "pillow":
        kept: object = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    else:
        nm = NormalMap(data)
        kept = (nm.normals, nm.mask)
    peak = _vm_hwm()
    del kept
    return peak - before


def peak_memory(megapixels: float) -> dict[str, float]:
    """Peak growth of each action, in RGB arrays, each in a fresh child process; the
    ``returned`` ones with freed blocks given back to the system at once (see above)."""
    width, height = portrait_size(megapixels)
    rgb_bytes = width * height * 3
    out: dict[str, float] = {}
    for suffix, extra in (("", {}), (" returned", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        for action in ("pillow", "normals+mask"):
            child = subprocess.run(
                [sys.executable, __file__, "--peak-child", action, str(megapixels)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **extra},
            )
            out[action + suffix] = round(int(child.stdout.strip()) / rgb_bytes, 2)
    return out


def _peak_child(action: str, megapixels: float) -> None:
    width, height = portrait_size(megapixels)
    data = portrait(width, height).jpeg(90)
    pillow_decode(portrait(64, 80).jpeg(90))  # lazy imports and plugins, outside the peak
    _ = NormalMap(portrait(64, 80).jpeg(90)).mask
    print(_peak_growth(action, data))


def relight_ms(data: bytes, repeats: int) -> tuple[float, float, float]:
    """Median seconds of a bare decode and of a relight, interleaved, and the median of each
    round's ratio."""
    nm = NormalMap(data)
    width, height = nm.size
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    _ = nm.normals, nm.mask
    nm.relight(photo, light=KEY_LIGHT, ambient=0.2)
    base: list[float] = []
    lit: list[float] = []
    for _ in range(repeats):
        base.append(timed_pillow(data))
        start = time.perf_counter()
        nm.relight(photo, light=KEY_LIGHT, ambient=0.2)
        lit.append(time.perf_counter() - start)
    ratio = statistics.median(x / b for x, b in zip(lit, base, strict=True))
    return statistics.median(base), statistics.median(lit), ratio


def run(megapixels: float, repeats: int, relight: bool) -> dict[str, object]:
    width, height = portrait_size(megapixels)
    data = portrait(width, height).jpeg(90)
    pillow_decode(data)  # warm caches and lazy imports outside the timings
    normals_and_mask(data)
    base: list[float] = []
    parts: list[tuple[float, float, float]] = []
    for _ in range(repeats):
        base.append(timed_pillow(data))
        parts.append(normals_and_mask(data))
    pillow_s = statistics.median(base)
    ours_s = statistics.median(sum(p) for p in parts)
    # Each round's own ratio (its two runs next to each other), then their median: steadier
    # than a ratio of medians when other jobs come and go on the machine.
    ratio = statistics.median(sum(p) / b for p, b in zip(parts, base, strict=True))
    extra: dict[str, object] = {"peak_in_rgb_arrays": peak_memory(megapixels)}
    if relight:
        relight_base, relight_s, relight_ratio = relight_ms(data, repeats)
        extra["relight"] = {
            "pillow_decode_s": round(relight_base, 4),
            "relight_s": round(relight_s, 4),
            "ratio": round(relight_ratio, 2),
        }
    return {
        **extra,
        "megapixels": round(width * height / 1e6, 2),
        "size": [width, height],
        "jpeg_bytes": len(data),
        "repeats": repeats,
        "pillow_decode_s": round(pillow_s, 4),
        "normals_mask_s": round(ours_s, 4),
        "breakdown_s": {
            name: round(statistics.median(p[i] for p in parts), 4)
            for i, name in enumerate(("decode", "normals", "mask"))
        },
        "ratio": round(ratio, 2),
        "ratio_of_medians": round(ours_s / pillow_s, 2),
        "normals_mask_ms_per_mp": round(1000 * ours_s / (width * height / 1e6), 1),
    }


def _blas() -> list[dict[str, object]] | str:
    """Which BLAS kernel numpy runs (OPENBLAS_CORETYPE changes it), when threadpoolctl is here."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to record it)"
    return [
        {k: v for k, v in info.items() if k in ("internal_api", "architecture", "num_threads")}
        for info in threadpool_info()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument(
        "--relight-sizes", type=float, nargs="*", default=list(RELIGHT_SIZES), metavar="MP"
    )
    parser.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help="default: 31, 21, 9 or 7 by size")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/decode.json")
    args = parser.parse_args(argv)
    if args.peak_child:
        _peak_child(args.peak_child[0], float(args.peak_child[1]))
        return 0
    rows = []
    print(
        f"{'size':>12} {'MP':>6} {'pillow':>9} {'normals+mask':>13} {'ratio':>6} {'ms/MP':>6}"
        f" {'peak: pillow':>13} {'normals+mask':>13} {'(returned)':>11}"
    )
    for mp in args.sizes:
        repeats = args.repeats or (31 if mp <= 1 else 21 if mp <= 4 else 9 if mp <= 12 else 7)
        row = run(mp, repeats, mp in args.relight_sizes)
        rows.append(row)
        size = row["size"]
        peak = row["peak_in_rgb_arrays"]
        assert isinstance(size, list)
        assert isinstance(peak, dict)
        print(
            f"{size[0]:>5}x{size[1]:<6} {row['megapixels']:>6} {row['pillow_decode_s']:>8.3f}s"
            f" {row['normals_mask_s']:>12.3f}s {row['ratio']:>5}x"
            f" {row['normals_mask_ms_per_mp']:>6} {peak['pillow']:>12}x"
            f" {peak['normals+mask']:>12}x {peak['normals+mask returned']:>10}x"
        )
    for row in rows:
        relit = row.get("relight")
        if isinstance(relit, dict):
            print(
                f"relight at {row['megapixels']} MP: {1000 * relit['relight_s']:.1f} ms, "
                f"{relit['ratio']}x a bare decode ({1000 * relit['pillow_decode_s']:.1f} ms)"
            )
    report = {
        "benchmark": "decode",
        "command": " ".join(["python benchmarks/decode.py", *(argv or sys.argv[1:])]),
        "load_average": os.getloadavg(),
        "threads": cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "blas": _blas(),
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"written {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
