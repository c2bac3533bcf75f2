"""Emulator fit benchmark: what placing the synthetic template on the subject adds per request.

Run from the repository root::

    python benchmarks/emulator_fit.py                # 0.25, 1, 4, 12 and 25 megapixels
    python benchmarks/emulator_fit.py --sizes 1 4 --repeats 5

For each size a photo (a head and shoulders, off centre, on a light backdrop with noise) is
encoded as JPEG (quality 90) and as PNG, then timed three ways, alternating so that a busy machine
slows all alike:

- ``check``: the emulator's checks of the upload as they were before any fitting
  (``inspect_image``, ``verify=True``: a JPEG decoded at 1/8 scale, a PNG in full);
- ``check+fit``: what the emulator runs now: the same checks keeping a small copy of what they
  decoded, then the fit (from that copy, or from its own reduced decode when the copy is too
  small, as for a JPEG under 512 pixels);
- ``alone``: ``fit_placement`` on the bytes, decoding for itself (a caller without the checks);
- ``map``: the synthetic map for that placement, built and JPEG-encoded as on a cache miss (the
  low-resolution solve's cache is cleared first, as for a new photo).

Medians are printed with the fit's added cost (check+fit minus check) over the checks and over
the map, and written to ``benchmarks/results/emulator_fit.json``. Uploads under ``MIN_PIXELS``
(128 x 128) are never fitted; the run checks that ``fit_placement`` answers None for one.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from benchmarks._common import RESULTS, machine, write_json  # noqa: E402
from clipnormals.emulator._app import _placed  # noqa: E402
from clipnormals.emulator._fit import GRID, MIN_PIXELS, fit_placement  # noqa: E402
from clipnormals.emulator._synth import (  # noqa: E402
    _low_res_field,
    encode_jpeg,
    synthetic_normal_map,
)
from clipnormals.emulator._validate import ImageInfo, inspect_image  # noqa: E402

DEFAULT_SIZES = (0.25, 1.0, 4.0, 12.0, 25.0)
API_MAX_PIXELS = 25_000_000


def photo_size(megapixels: float) -> tuple[int, int]:
    """A 4:3 landscape of about this many megapixels, never over the API's limit."""
    pixels = min(int(megapixels * 1_000_000), API_MAX_PIXELS)
    height = int(math.sqrt(pixels * 3 / 4))
    return pixels // height, height


def photo(width: int, height: int) -> Image.Image:
    """A head and shoulders left of centre on a light, noisy backdrop."""
    rng = np.random.default_rng(7)
    small = (max(1, width // 8), max(1, height // 8))
    noise = rng.normal(0, 10, (small[1], small[0], 1)) + np.array([205.0, 208.0, 212.0])
    image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).resize((width, height))
    draw = ImageDraw.Draw(image)
    head = 0.16 * height
    cx, top = 0.35 * width, 0.15 * height
    draw.rounded_rectangle(
        (cx - 1.3 * head, top + 1.45 * head, cx + 1.3 * head, height + head),
        radius=0.6 * head,
        fill=(40, 50, 80),
    )
    draw.ellipse((cx - head / 2, top, cx + head / 2, top + 1.3 * head), fill=(205, 155, 125))
    return image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run(megapixels: float, fmt: str, repeats: int) -> dict[str, object]:
    width, height = photo_size(megapixels)
    data = encoded(photo(width, height), fmt)
    placement = fit_placement(data)

    def check(keep: int = 0) -> ImageInfo:
        return inspect_image(
            data, max_pixels=API_MAX_PIXELS, max_file_bytes=1 << 30, verify=True, keep=keep
        )

    def check_and_fit() -> None:
        _placed(data, check(keep=GRID))

    def alone() -> None:
        fit_placement(data)

    def build() -> None:
        _low_res_field.cache_clear()
        encode_jpeg(synthetic_normal_map(width, height, placement=placement).rgb, quality=90)

    check(), check_and_fit(), alone()  # warm lazy imports outside the timings
    timings: dict[str, list[float]] = {"check": [], "check+fit": [], "alone": [], "map": []}
    for _ in range(repeats):
        timings["check"].append(seconds(check))
        timings["check+fit"].append(seconds(check_and_fit))
        timings["alone"].append(seconds(alone))
        timings["map"].append(seconds(build))
    medians = {name: statistics.median(values) for name, values in timings.items()}
    added = medians["check+fit"] - medians["check"]
    return {
        "megapixels": round(width * height / 1e6, 2),
        "size": [width, height],
        "format": fmt,
        "bytes": len(data),
        "fitted": placement is not None,
        "median_seconds": medians,
        "added_seconds": added,
        "added_over_check": added / medians["check"],
        "added_over_map": added / medians["map"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    tiny = encoded(photo(64, 48), "PNG")
    if MIN_PIXELS <= 64 * 48 or fit_placement(tiny) is not None:
        raise SystemExit("a 64x48 upload was fitted: tiny uploads must keep the default placement")
    results = []
    print(f"{'MP':>6} {'format':>6} {'check':>8} {'+fit':>8} {'alone':>8} {'map':>8} "
          f"{'added/check':>11} {'added/map':>9}   (ms)")  # fmt: skip
    for megapixels in args.sizes:
        for fmt in ("JPEG", "PNG"):
            row = run(megapixels, fmt, args.repeats)
            results.append(row)
            medians = row["median_seconds"]
            assert isinstance(medians, dict)
            print(
                f"{row['megapixels']:>6} {fmt:>6} {medians['check'] * 1e3:>8.1f} "
                f"{medians['check+fit'] * 1e3:>8.1f} {medians['alone'] * 1e3:>8.1f} "
                f"{medians['map'] * 1e3:>8.1f} {row['added_over_check']:>11.2f} "
                f"{row['added_over_map']:>9.2f}",
                flush=True,
            )
    write_json(
        RESULTS / "emulator_fit.json",
        {"machine": machine(), "repeats": args.repeats, "results": results},
    )


if __name__ == "__main__":
    main()
