"""Preparation benchmark: what ``prepare_image`` costs per upload, against a bare Pillow decode.

Run from the repository root::

    python benchmarks/prepare.py                   # 1 and 12 megapixels, JPEG, PNG and WEBP
    python benchmarks/prepare.py --sizes 1 --repeats 9

Every upload goes through :func:`clipnormals.images.prepare_image` (in a worker thread), so
its cost is
paid once per image. For each size a photo-like picture (a smooth synthetic portrait with sensor
noise, 4:3 landscape as a phone writes it) is encoded as a JPEG at quality 90, as a PNG and as a
WEBP (lossy at quality 90, and lossless), then timed three ways, alternating so that a busy
machine slows all alike:

- ``pillow``: ``Image.open(...).load()``, the single decode that any check of the pixels needs;
- ``prepare``: ``prepare_image(data)``, which here uploads the bytes untouched (the common case:
  sniffing, integrity checks, the decode, EXIF, hashing);
- ``rotated``: the same JPEG with EXIF orientation 6, which is decoded, turned and re-encoded;

and, apart, the structural checks of ``clipnormals._images.integrity`` alone (``integrity``
column, left empty on versions without them).

The medians are printed and written to ``benchmarks/results/prepare.json``; ``ratio`` is
``prepare / pillow`` measured in the same run.
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from clipnormals.images import prepare_image  # noqa: E402

try:
    from clipnormals._images.integrity import check_whole
except ImportError:  # a version before the checks: the column stays empty
    check_whole = None
from tests.synthetic import portrait  # noqa: E402

DEFAULT_SIZES = (1.0, 12.0)


def photo(megapixels: float, seed: int = 0) -> Image.Image:
    """A 4:3 picture of about this many megapixels with the entropy of a real photo."""
    width = int(math.sqrt(megapixels * 1_000_000 * 4 / 3))
    height = int(megapixels * 1_000_000) // width
    base = np.asarray(Image.open(io.BytesIO(portrait(height, height).jpeg(95))).convert("RGB"))
    canvas = np.zeros((height, width, 3), np.int16)
    canvas[:] = (90, 110, 130)
    left = (width - height) // 2
    canvas[:, left : left + height] = base
    rng = np.random.default_rng(seed)
    canvas += rng.integers(-6, 7, size=canvas.shape, dtype=np.int16)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def pillow_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def run(megapixels: float, repeats: int) -> list[dict[str, object]]:
    image = photo(megapixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "JPEG": encode(image, "JPEG", quality=90),
        "PNG": encode(image, "PNG", compress_level=6),
        "JPEG-rotated": encode(image, "JPEG", quality=90, exif=exif.tobytes()),
        "WEBP": encode(image, "WEBP", quality=90),
        "WEBP-lossless": encode(image, "WEBP", lossless=True, method=2),
    }
    rows = []
    for name, data in cases.items():
        prepared = prepare_image(data)  # warm lazy imports and caches outside the timings
        pillow_decode(data)
        base: list[float] = []
        ours: list[float] = []
        for _ in range(repeats):
            base.append(timed(lambda data=data: pillow_decode(data)))
            ours.append(timed(lambda data=data: prepare_image(data)))
        pillow_s = statistics.median(base)
        prepare_s = statistics.median(ours)
        integrity_s = None
        if check_whole is not None:
            fmt = name.split("-")[0]
            with Image.open(io.BytesIO(data)) as opened:
                integrity_s = statistics.median(
                    timed(lambda d=data, o=opened, f=fmt: check_whole(d, f, o, "bench"))
                    for _ in range(repeats)
                )
        rows.append(
            {
                "case": name,
                "megapixels": round(image.width * image.height / 1e6, 2),
                "size": [image.width, image.height],
                "bytes": len(data),
                "changes": list(prepared.changes),
                "repeats": repeats,
                "pillow_decode_s": round(pillow_s, 4),
                "prepare_s": round(prepare_s, 4),
                "ratio": round(prepare_s / pillow_s, 2),
                "integrity_s": None if integrity_s is None else round(integrity_s, 5),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="default: 15 or 5 by size")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/prepare.json")
    args = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    print(
        f"{'case':>13} {'MP':>6} {'bytes':>11} {'pillow':>9} {'prepare':>9} {'ratio':>6}"
        f" {'integrity':>10}"
    )
    for mp in args.sizes:
        repeats = args.repeats or (15 if mp <= 2 else 5)
        for row in run(mp, repeats):
            rows.append(row)
            checks = row["integrity_s"]
            shown = "-" if checks is None else f"{1000 * float(str(checks)):.2f}ms"
            print(
                f"{row['case']:>13} {row['megapixels']:>6} {row['bytes']:>11,}"
                f" {row['pillow_decode_s']:>8.3f}s {row['prepare_s']:>8.3f}s {row['ratio']:>5}x"
                f" {shown:>10}"
            )
    report = {
        "benchmark": "prepare",
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
