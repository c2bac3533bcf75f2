"""``clipnormals demo``: the whole batch path against the built-in emulator, in seconds.

The bundled portraits (plus a few variants made from them at run time: mirrored, cropped,
downsized, rotated through EXIF, and one exact copy, so that the run looks like a small batch
and shows de-duplication and orientation handling) go through the real batch runner, the real
client and a real HTTP server on a loopback port. The emulator's quota is scaled down to 60
requests per 6 seconds so the demo finishes quickly, and its normal maps are synthetic; the
output says both. The batch then runs a second time to show that nothing is paid for twice.
"""

from __future__ import annotations

import io
import shutil
from importlib import resources
from pathlib import Path

import anyio
import anyio.to_thread
from PIL import Image, ImageOps
from rich.console import Console

from .._atomic import atomic_write_bytes
from .._batch.config import BatchConfig
from .._batch.control import BatchControl
from .._batch.events import BatchReporter, NullReporter
from .._batch.jobs import SHEETS_DIR
from .._batch.outcomes import ExitCode
from .._batch.runner import run_batch
from .._core.client import AsyncClient
from .._core.credits import CreditPolicy
from .._core.limiter import RateLimit

__all__ = ["DEMO_RATE", "make_demo_inputs", "run_demo"]

# Ten times the real API's default quota: the demo takes seconds, and still goes through the
# same limiter, credit ledger and retry path as a real run.
DEMO_RATE = RateLimit(requests=60, per=6.0)
DEMO_CREDITS = 100
_MARKER = ".clipnormals-demo"
_SAMPLES = ("astronaut.png", "camera.png")


def _sample(name: str) -> bytes:
    return resources.files("clipnormals").joinpath("samples", name).read_bytes()


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def make_demo_inputs(folder: Path) -> list[str]:
    """Write the demo's input images into ``folder``; return their names.

    The two bundled portraits, and variants made from them here: the demo says so.
    """
    folder.mkdir(parents=True, exist_ok=True)
    astronaut_png, camera_png = (_sample(n) for n in _SAMPLES)
    astronaut = Image.open(io.BytesIO(astronaut_png)).convert("RGB")
    camera = Image.open(io.BytesIO(camera_png)).convert("L")
    w, h = astronaut.size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the client must undo it
    rotated = astronaut.transpose(Image.Transpose.ROTATE_90)
    files = {
        "astronaut.png": astronaut_png,
        "camera.png": camera_png,
        "variants/astronaut-mirrored.png": _encode(ImageOps.mirror(astronaut), "PNG"),
        "variants/astronaut-face.jpg": _encode(
            astronaut.crop((w // 8, 0, w * 5 // 8, h // 2)), "JPEG", quality=92
        ),
        "variants/astronaut-exif-rotated.jpg": _encode(rotated, "JPEG", quality=92, exif=exif),
        "variants/camera-small.webp": _encode(camera.resize((256, 256)), "WEBP", quality=90),
        "variants/camera-mirrored.jpg": _encode(ImageOps.mirror(camera), "JPEG", quality=92),
        "copies/camera-again.png": camera_png,  # identical bytes: uploaded once
    }
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    return sorted(files)


def _fresh_directory(directory: Path) -> None:
    """Empty a previous demo's folder; refuse to touch a folder the demo did not make."""
    if directory.exists():
        if not (directory / _MARKER).exists():
            if any(directory.iterdir()):
                raise FileExistsError(
                    f"{directory} exists and was not made by the demo: choose another --dir"
                )
        else:
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _MARKER).write_text("made by `clipnormals demo`; safe to delete\n")


async def run_demo(directory: Path, reporter: BatchReporter, out: Console) -> ExitCode:
    """Run the demo into ``directory``; print where to look."""
    from ..emulator import local_emulator

    await anyio.to_thread.run_sync(_fresh_directory, directory)
    inputs = directory / "portraits"
    names = await anyio.to_thread.run_sync(make_demo_inputs, inputs)
    out.print(
        f"clipnormals demo: {len(names)} portraits into {directory}/ "
        f"({len(_SAMPLES)} bundled samples and {len(names) - len(_SAMPLES)} variants made from "
        "them just now)",
        markup=False,
        highlight=False,
    )
    out.print(
        f"against the built-in emulator on a loopback port: no key, no network. Its quota is "
        f"scaled to {DEMO_RATE.requests} requests per {DEMO_RATE.per:g} s (the real API: 60 per "
        "minute) so this takes seconds; its normal maps are synthetic (a smooth person-shaped "
        "surface placed where the subject seems to be), not Clipdrop's, so the pictures relight "
        "that surface as grey clay, not the photo.",
        markup=False,
        highlight=False,
    )
    output = directory / "normals"
    config = BatchConfig(
        inputs=(str(inputs),),
        output_dir=output,
        previews=True,
        contact_sheets=True,
    )
    async with local_emulator(
        requests=DEMO_RATE.requests, per=DEMO_RATE.per, credits=DEMO_CREDITS
    ) as (url, key):
        control = BatchControl()
        async with AsyncClient(
            api_key=key, base_url=url, rate_limit=DEMO_RATE, max_concurrency=4,
            credits=CreditPolicy(),
        ) as client:  # fmt: skip
            summary = await run_batch(config, client=client, reporter=reporter, control=control)
        if summary.exit_code != ExitCode.OK:
            return summary.exit_code
        async with AsyncClient(api_key=key, base_url=url, rate_limit=DEMO_RATE) as client:
            again = await run_batch(config, client=client, reporter=NullReporter())
    out.print(
        f"ran the same batch again: {again.skipped} skipped, {again.credits_consumed} credits "
        "spent (resume never pays twice)",
        markup=False,
        highlight=False,
    )
    sheets = sorted((output / SHEETS_DIR).glob("*.jpg"))
    out.print("look at:", markup=False)
    for sheet in sheets:
        out.print(f"  {sheet}   (contact sheet: portrait, normal map, mask, relit)", markup=False)
    out.print(f"  {output}/   (<name>.normals.jpg as the API returns it, previews)", markup=False)
    out.print(f"  {config.manifest_path}   (one JSON record per image)", markup=False)
    out.print(
        "next: clipnormals batch YOUR_FOLDER -o OUT (key in CLIPDROP_API_KEY), "
        "or add --dry-run to see the cost first",
        markup=False,
        highlight=False,
    )
    return again.exit_code
