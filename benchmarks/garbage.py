"""Half-garbage images: which ones ``prepare_image`` refuses, and what the rest upload.

Run from the repository root::

    python benchmarks/garbage.py              # 3 pictures x 4 cuts x 2 seeds per cell
    python benchmarks/garbage.py --quick      # 1 picture, 2 cuts, 1 seed

Each picture is encoded in every format preparation reads, then damaged the way a failed
download or a bad copy leaves a file of full length: from a cut at 25, 50, 75 or 90 % of the
file on, the rest is replaced by zero bytes, random bytes, ``0xFF`` bytes, or a repeat of the
file from its start; and, as a downloader that fetches pieces in parallel may leave it, a hole
of 5 % of the file at the cut is filled with zero or random bytes. Every damaged file goes
through :func:`clipnormals.prepare_image` twice, with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off
and on. A cell shows ``refused/tried`` and, when some were uploaded, ``~`` the mean absolute
difference (grey levels, 0-255) between the uploaded pixels and the picture, over as many of
the rows that differ most as the damaged share of the file. A ``*`` marks a cell where the
setting changed the outcome of some file. The whole files must all pass: their column counts
refusals, which must be 0.

The figures are printed and written to ``benchmarks/results/garbage.json``;
``docs/reference/images.md`` quotes them.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageFile  # noqa: E402

from clipnormals import InvalidImageError  # noqa: E402
from clipnormals._images.formats import require_reader  # noqa: E402
from clipnormals.images import prepare_image  # noqa: E402

SAMPLES = ROOT / "clipnormals" / "samples"
DAMAGES = ("zeros", "random", "0xFF", "repeat", "hole zeros", "hole random")
HOLE = 0.05  # of the file
ENCODINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "JPEG": ("JPEG", {"quality": 90}),
    "JPEG progressive": ("JPEG", {"quality": 90, "progressive": True}),
    "PNG": ("PNG", {}),
    "WEBP lossy": ("WEBP", {"quality": 80}),
    "WEBP lossless": ("WEBP", {"lossless": True}),
    "GIF": ("GIF", {}),
    "TIFF deflate": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "TIFF LZW": ("TIFF", {"compression": "tiff_lzw"}),
    "TIFF JPEG": ("TIFF", {"compression": "jpeg"}),
    "TIFF PackBits": ("TIFF", {"compression": "packbits"}),
    "TIFF raw": ("TIFF", {}),
    "BMP": ("BMP", {}),
    "PPM": ("PPM", {}),
    "QOI": ("QOI", {}),
    "ICO": ("ICO", {"sizes": [(256, 256)]}),
    "JPEG 2000": ("JPEG2000", {}),
    "HEIF": ("HEIF", {"quality": 80}),
    "AVIF": ("AVIF", {"quality": 80}),
}


def pictures(quick: bool) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    height, width = 384, 512
    y, x = np.mgrid[0:height, 0:width]
    ramps = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = np.clip(ramps + rng.normal(0, 12, ramps.shape), 0, 255).astype(np.uint8)
    found = {
        "astronaut": Image.open(SAMPLES / "astronaut.png").convert("RGB"),
        "gradient+noise": Image.fromarray(noisy),
        "camera": Image.open(SAMPLES / "camera.png").convert("RGB"),
    }
    return dict(list(found.items())[:1]) if quick else found


def encode(image: Image.Image, fmt: str, params: dict[str, Any]) -> bytes | None:
    if fmt in ("HEIF", "AVIF"):
        try:
            require_reader(fmt, "benchmark")  # registers pillow-heif, as preparation does
        except InvalidImageError:
            return None
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def damage(data: bytes, how: str, cut: float, seed: int) -> bytes:
    keep = int(len(data) * cut)
    if how.startswith("hole"):
        size = max(16, int(len(data) * HOLE))
        filled = damage(data[: keep + size], how.split()[1], keep / (keep + size), seed)
        return filled + data[keep + size :]
    rest = len(data) - keep
    if how == "zeros":
        tail = bytes(rest)
    elif how == "random":
        tail = random.Random(seed).randbytes(rest)
    elif how == "0xFF":
        tail = b"\xff" * rest
    else:
        tail = (data * 2)[:rest]
    return data[:keep] + tail


def outcome(data: bytes, truncated_allowed: bool) -> bytes | None:
    """The uploaded bytes, ``None`` when refused."""
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_allowed
    try:
        return prepare_image(data).data
    except InvalidImageError:
        return None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def difference(uploaded: bytes, picture: Image.Image, cut: float) -> float:
    with Image.open(io.BytesIO(uploaded)) as image:
        pixels = np.asarray(image.convert("RGB").resize(picture.size), dtype=np.float32)
    reference = np.asarray(picture.convert("RGB"), dtype=np.float32)
    rows = np.abs(pixels - reference).mean(axis=(1, 2))
    damaged = max(1, round(picture.height * (1 - cut)))
    return float(np.sort(rows)[-damaged:].mean())


def measure(quick: bool) -> list[dict[str, Any]]:
    cuts = (0.5, 0.9) if quick else (0.25, 0.5, 0.75, 0.9)
    seeds = (1,) if quick else (1, 2)
    rows = []
    for name, (fmt, params) in ENCODINGS.items():
        row: dict[str, Any] = {"encoding": name, "whole_refused": 0, "whole": 0}
        cells: dict[str, dict[str, Any]] = {
            how: {"tried": 0, "refused": 0, "diffs": []} for how in DAMAGES
        }
        flag_changed = {h: False for h in DAMAGES}
        for picture in pictures(quick).values():
            data = encode(picture, fmt, params)
            if data is None:
                row["skipped"] = f"no reader for {fmt}"
                break
            row["whole"] += 1
            if outcome(data, False) is None:
                row["whole_refused"] += 1
            for how in DAMAGES:
                for cut in cuts:
                    for seed in seeds:
                        broken = damage(data, how, cut, seed)
                        results = [outcome(broken, allowed) for allowed in (False, True)]
                        if (results[0] is None) != (results[1] is None):
                            flag_changed[how] = True
                        for uploaded in results:
                            cell = cells[how]
                            cell["tried"] += 1
                            if uploaded is None:
                                cell["refused"] += 1
                            else:
                                cell["diffs"].append(difference(uploaded, picture, cut))
        for how in DAMAGES:
            cell = cells[how]
            diffs = cell.pop("diffs")
            cell["uploaded_mean_diff"] = round(float(np.mean(diffs)), 1) if diffs else None
            cell["setting_changed_outcome"] = flag_changed[how]
        row["damages"] = cells
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/garbage.json")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # Pillow warns about the damaged EXIF blocks it meets
    rows = measure(args.quick)
    print(f"{'encoding':>17} {'whole':>6}" + "".join(f" {how:>13}" for how in DAMAGES))
    for row in rows:
        if "skipped" in row:
            print(f"{row['encoding']:>17}  skipped: {row['skipped']}")
            continue
        shown = []
        for how in DAMAGES:
            cell = row["damages"][how]
            text = f"{cell['refused']}/{cell['tried']}"
            if cell["uploaded_mean_diff"] is not None:
                text += f" ~{cell['uploaded_mean_diff']:.0f}"
            shown.append(text + ("*" if cell["setting_changed_outcome"] else ""))
        whole = f"{row['whole_refused']}/{row['whole']}"
        print(f"{row['encoding']:>17} {whole:>6}" + "".join(f" {text:>13}" for text in shown))
    report = {
        "benchmark": "garbage",
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    shown_path = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"written {shown_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
