"""Decode benchmark: normals + mask per image, against a bare Pillow decode of the same JPEG.

Run from the repository root::

    python benchmarks/decode.py                 # 1, 4 and 25 megapixels
    python benchmarks/decode.py --sizes 1 4 --repeats 5

For each size a synthetic portrait (tests/synthetic.py) is encoded as a JPEG at quality 90, then
timed both ways, alternating so that a busy machine slows both alike:

- ``pillow``: ``np.asarray(Image.open(...).convert("RGB"))``, the floor for any decoder;
- ``normals+mask``: a fresh ``NormalMap(jpeg)``, then ``.normals`` and ``.mask`` (this includes
  the same Pillow decode); the JSON also has the median of each of the three parts.

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
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from clipnormals import NormalMap  # noqa: E402
from tests.synthetic import portrait  # noqa: E402

DEFAULT_SIZES = (1.0, 4.0, 25.0)
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


def run(megapixels: float, repeats: int) -> dict[str, object]:
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
    return {
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
        "ratio": round(ours_s / pillow_s, 2),
        "normals_mask_ms_per_mp": round(1000 * ours_s / (width * height / 1e6), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="default: 15, 7 or 5 by size")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/decode.json")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'size':>12} {'MP':>6} {'pillow':>9} {'normals+mask':>13} {'ratio':>6} {'ms/MP':>6}")
    for mp in args.sizes:
        repeats = args.repeats or (15 if mp <= 1 else 7 if mp <= 4 else 5)
        row = run(mp, repeats)
        rows.append(row)
        size = row["size"]
        assert isinstance(size, list)
        print(
            f"{size[0]:>5}x{size[1]:<6} {row['megapixels']:>6} {row['pillow_decode_s']:>8.3f}s"
            f" {row['normals_mask_s']:>12.3f}s {row['ratio']:>5}x"
            f" {row['normals_mask_ms_per_mp']:>6}"
        )
    report = {
        "benchmark": "decode",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"written {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
