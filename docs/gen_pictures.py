"""Generate every picture of the documentation into docs/img/.

    python docs/gen_pictures.py

The normal maps come from the in-process emulator (no key, no network), run on the two bundled
sample portraits. The emulator's maps are synthetic, one smooth head-and-shoulders surface
placed where the subject of the photo seems to be, and every picture made from them says so.
The quota plot is the saturation benchmark's: copied from benchmarks/results/saturation.png, or
drawn by the benchmark's own ``plot`` from benchmarks/results/saturation.json when only that is
there.

The output is deterministic for a given Pillow/libjpeg: the emulator is seeded and nothing
depends on the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from clipnormals import (  # noqa: E402
    DirectionalLight,
    NormalMap,
    SHLighting,
    contact_sheet,
)
from clipnormals._normals.mask import MASK_THRESHOLD  # noqa: E402 - what the picture illustrates
from clipnormals.testing import emulated  # noqa: E402

SAMPLES = ROOT / "clipnormals" / "samples"
PORTRAITS = ("astronaut.png", "camera.png")
RESULTS = ROOT / "benchmarks" / "results"
SYNTHETIC = "Normal maps from the clipnormals emulator: synthetic, not an analysis of the photo."
SHEET_NOTE = (
    "Normal maps from the clipnormals emulator: one synthetic surface, placed where the subject "
    "seems to be, not an analysis of the photo. The sheet knows (NormalMap.synthetic), so its "
    "relit column lights the map's own clay instead of the photo."
)

PAPER = (255, 255, 255)
INK = (40, 40, 40)
MUTED = (110, 110, 110)
GAP = 8


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def text_width(text: str, face: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, _top, right, _bottom = face.getbbox(text)
    return int(right - left)


def with_footer(picture: Image.Image, note: str) -> Image.Image:
    """``picture`` with a note under it, wrapped to its width (pictures travel without their
    page, so each one says where its normal maps come from)."""
    face = font(13)
    lines: list[str] = []
    for word in note.split():
        if lines and text_width(f"{lines[-1]} {word}", face) <= picture.width - 2 * GAP:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    out = Image.new("RGB", (picture.width, picture.height + 4 + 18 * len(lines)), PAPER)
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((GAP, picture.height + 2 + 18 * i), line, fill=MUTED, font=face)
    return out


def labelled_row(cells: Sequence[Image.Image], labels: Sequence[str]) -> Image.Image:
    """Cells side by side, each under its centred label (``\\n`` starts a second line)."""
    face = font(14)
    label_h = 4 + 18 * max(label.count("\n") + 1 for label in labels)
    width = GAP + sum(c.width + GAP for c in cells)
    height = label_h + max(c.height for c in cells) + GAP
    out = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(out)
    left = GAP
    for cell, label in zip(cells, labels, strict=True):
        for i, line in enumerate(label.split("\n")):
            x = left + (cell.width - text_width(line, face)) // 2
            draw.text((x, 3 + 18 * i), line, fill=INK, font=face)
        out.paste(cell, (left, label_h))
        left += cell.width + GAP
    return out


async def normal_maps() -> dict[str, NormalMap]:
    """The bundled portraits through the client and the in-process emulator."""
    async with emulated() as (client, _emulator):
        return {name: await client.surface_normals(SAMPLES / name) for name in PORTRAITS}


def y_flipped(nm: NormalMap) -> NormalMap:
    """The same map as a server with the opposite Y convention would send it (G inverted)."""
    rgb = np.array(nm.rgb)
    rgb[..., 1] = 256 - rgb[..., 1].astype(np.int16).clip(1, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    return NormalMap(buffer.getvalue())


# -- the pictures ----------------------------------------------------------------------------


def sheet(maps: dict[str, NormalMap], out: Path) -> None:
    picture = contact_sheet(
        [(SAMPLES / name, nm) for name, nm in maps.items()], names=list(maps), tile=256
    )
    with_footer(picture, SHEET_NOTE).save(out / "contact-sheet.png", optimize=True)


LIGHTS: tuple[tuple[str, DirectionalLight | SHLighting], ...] = (
    ("from the left (-1, 0, 0.4)", DirectionalLight((-1.0, 0.0, 0.4))),
    ("from the right (1, 0, 0.4)", DirectionalLight((1.0, 0.0, 0.4))),
    ("from above (0, 1, 0.4)", DirectionalLight((0.0, 1.0, 0.4))),
    ("from below (0, -1, 0.4)", DirectionalLight((0.0, -1.0, 0.4))),
    (
        "sky and ground (SH)",
        SHLighting.from_lights(
            [
                DirectionalLight((0.0, 1.0, 0.3), intensity=0.8, color=(0.8, 0.9, 1.0)),
                DirectionalLight((0.0, -1.0, 0.3), intensity=0.3, color=(1.0, 0.85, 0.6)),
            ],
            ambient=0.15,
        ),
    ),
)


def relight_strip(nm: NormalMap, out: Path) -> None:
    tile = 200
    cells = [
        nm.shaded(light=light, ambient=0.05).resize((tile, tile), Image.Resampling.LANCZOS)
        for _label, light in LIGHTS
    ]
    row = labelled_row(cells, [label for label, _light in LIGHTS])
    with_footer(row, "Clay renders (NormalMap.shaded). " + SYNTHETIC).save(
        out / "relight-strip.png", optimize=True
    )


def relight_modes(nm: NormalMap, out: Path) -> None:
    """Why ``mode="ratio"`` exists: a photo already has lighting, which "albedo" keeps.

    The emulator's surface follows where the subject is, not its shape, so the "photo" here is
    made to match it: a flat skin tone lit from the left (by ``relight`` itself). Both modes
    then light it from the right.
    """
    skin, backdrop = np.array((226, 178, 150), np.uint8), np.array((90, 90, 90), np.uint8)
    flat = Image.fromarray(np.where(nm.mask[..., None], skin, backdrop))
    from_left = DirectionalLight((-0.8, 0.3, 0.55), intensity=1.0)
    from_right = DirectionalLight((0.8, 0.3, 0.55), intensity=1.0)
    photo = nm.relight(flat, light=from_left, ambient=0.25)
    cells = [
        photo,
        nm.relight(photo, light=from_right, ambient=0.1, mode="albedo"),
        nm.relight(photo, light=from_right, ambient=0.1, mode="ratio"),
    ]
    tile = 240
    cells = [c.resize((tile, tile), Image.Resampling.LANCZOS) for c in cells]
    labels = [
        "the photo: lit from the left",
        'mode="albedo", light from the right\nthe old light stays',
        'mode="ratio", light from the right\nthe old light is divided out',
    ]
    note = (
        "The photo is a flat colour lit by relight(), so that it matches the surface. " + SYNTHETIC
    )
    with_footer(labelled_row(cells, labels), note).save(out / "relight-modes.png", optimize=True)


def mask_picture(nm: NormalMap, out: Path) -> None:
    rgb = nm.rgb.astype(np.int16)
    distance = np.abs(rgb - np.array([128, 128, 255], dtype=np.int16)).max(axis=2)
    mask = nm.mask
    # A crop across the outline of the shoulder, enlarged, so JPEG's ringing is visible.
    ys, xs = np.nonzero(mask)
    shoulder_row = int(ys.max() - (ys.max() - ys.min()) * 0.25)
    cx, cy, half, zoom = int(xs[ys == shoulder_row].min()), shoulder_row, 40, 4
    height, width = mask.shape
    cx, cy = min(max(cx, half), width - half), min(max(cy, half), height - half)  # in the frame
    box = (cx - half, cy - half, cx + half, cy + half)

    def crop(picture: Image.Image) -> Image.Image:
        size = (2 * half * zoom, 2 * half * zoom)
        return picture.crop(box).resize(size, Image.Resampling.NEAREST)

    # Levels off the background colour: under the mask's threshold (JPEG noise) amplified in
    # grey, over it (the person) in orange.
    gain = 240 // MASK_THRESHOLD
    noise = np.clip(distance * gain, 0, 255).astype(np.uint8)
    levels = np.repeat(noise[..., None], 3, axis=2)
    levels[distance >= MASK_THRESHOLD] = (235, 130, 40)
    outline = np.array(nm.rgb)
    edge = mask ^ np.roll(mask, 1, axis=0) | mask ^ np.roll(mask, 1, axis=1)
    outline[edge] = (230, 30, 30)
    cells = [
        crop(Image.fromarray(nm.rgb)),
        crop(Image.fromarray(levels)),
        crop(Image.fromarray(outline)),
    ]
    labels = [
        "the JPEG as received",
        f"distance from (128, 128, 255): grey x{gain}\norange: {MASK_THRESHOLD} levels or more",
        "the edge of NormalMap.mask",
    ]
    note = f"A crop of {2 * half}x{2 * half} pixels at the shoulder, enlarged {zoom} times. "
    note += SYNTHETIC
    with_footer(labelled_row(cells, labels), note).save(out / "mask.png", optimize=True)


def arrows(nm: NormalMap, *, size: int = 360, step: int = 24) -> Image.Image:
    """The map's preview with the decoded (x, y) of its normals drawn as arrows (up is +Y)."""
    scale = size / max(nm.size)
    picture = nm.preview().resize(
        (round(nm.size[0] * scale), round(nm.size[1] * scale)), Image.Resampling.LANCZOS
    )
    draw = ImageDraw.Draw(picture)
    normals: NDArray[np.float32] = nm.normals
    mask = nm.mask
    height, width = mask.shape
    for y in range(step // 2, height, step):
        for x in range(step // 2, width, step):
            if not mask[y, x]:
                continue
            nx, ny = float(normals[y, x, 0]), float(normals[y, x, 1])
            if nx * nx + ny * ny < 0.15:
                continue
            x0, y0 = x * scale, y * scale
            x1, y1 = x0 + nx * 14, y0 - ny * 14  # +Y is up: screen rows grow downwards
            draw.line([(x0, y0), (x1, y1)], fill=(20, 20, 20), width=2)
            draw.ellipse([x1 - 2, y1 - 2, x1 + 2, y1 + 2], fill=(20, 20, 20))
    return picture


def convention_picture(nm: NormalMap, out: Path) -> None:
    flipped = y_flipped(nm)
    cells, labels = [], []
    for label, candidate in (("as served (+Y up)", nm), ("the same map with +Y down", flipped)):
        found = candidate.detect_convention()
        cells.append(arrows(candidate))
        evidence = f"flip_y={found.flip_y}, y_agreement {found.y_agreement:+.2f}"
        labels.append(f"{label}\ndetect_convention(): {evidence}")
    row = labelled_row(cells, labels)
    note = "Arrows: decoded (x, y) of the normals, drawn with +Y up. " + SYNTHETIC
    with_footer(row, note).save(out / "convention.png", optimize=True)


def saturation(out: Path, results: Path) -> None:
    """The saturation benchmark's chart: copied, or drawn by the benchmark from its results."""
    png, data = results / "saturation.png", results / "saturation.json"
    if png.exists():
        shutil.copyfile(png, out / "saturation.png")
        return
    if data.exists():
        script = ROOT / "benchmarks" / "saturation.py"
        spec = importlib.util.spec_from_file_location("saturation_benchmark", script)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot load {script}")
        benchmark = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = benchmark  # its dataclasses look their module up there
        spec.loader.exec_module(benchmark)
        report = json.loads(data.read_text())
        quota = report["quota"]
        benchmark.plot(report["results"], quota["requests"], quota["per"], out / "saturation.png")
        return
    raise SystemExit(
        f"no quota saturation results in {results}: run the saturation benchmark "
        "(python benchmarks/saturation.py) first, then this script again"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where the saturation benchmark wrote saturation.png / .json",
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    maps = asyncio.run(normal_maps())
    astronaut = maps["astronaut.png"]
    sheet(maps, out)
    relight_strip(astronaut, out)
    relight_modes(astronaut, out)
    mask_picture(astronaut, out)
    convention_picture(astronaut, out)
    saturation(out, args.results)
    for path in sorted(out.glob("*.png")):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
