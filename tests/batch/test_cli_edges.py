"""The ``clipnormals`` command at the edges of its inputs and outputs, run for real: a
subprocess of ``python -m clipnormals`` against an emulator on a loopback port, with real files
(odd names, full disks, read-only files, ``/proc``).

Every test asserts a guarantee: what the user sees, the exit code, what was charged, what is on
disk afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipnormals import NormalMap
from clipnormals._normals import sheets
from clipnormals.emulator import RunningServer

from .corpus import noise_image
from .test_cli_trouble import batch, emulator, run

pytestmark = pytest.mark.loopback


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with emulator() as running:
        yield running


def _label_band(picture: Image.Image) -> np.ndarray:
    """The name's row of a one-entry sheet, in grey levels."""
    return np.asarray(picture.convert("L"), dtype=np.float32)[20:50]


# -- labels on previews and sheets --------------------------------------------------------------


def test_names_with_controls_and_bidi_overrides_are_drawn_escaped(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    long = "very long name " + "x" * 150 + ".png"
    names = ["new\nline.png", "invoice\u202egnp.exe", "bell\x07 and sep\u2029.png", long]
    for i, name in enumerate(names):
        (root / name).write_bytes(noise_image(10 + i, size=(96, 128)))
    out = tmp_path / "out"
    done = run(batch([str(root)], out, server.url, "--preview", "--contact-sheets"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list((out / "contact-sheets").glob("sheet-*.jpg"))
    for name in names:
        nm = NormalMap((out / f"{name}.normals.jpg").read_bytes())
        with Image.open(out / f"{name}.preview.jpg") as im:
            preview = _label_band(im)
        shown = name.encode("unicode_escape").decode("ascii")  # what the label must say
        escaped = sheets.contact_sheet([(root / name, nm)], names=[shown], tile=320)
        assert np.abs(preview - _label_band(escaped)).mean() < 2.0, name
    # The override is not obeyed: the name does not pass for "invoiceexe.png".
    name = names[1]
    nm = NormalMap((out / f"{name}.normals.jpg").read_bytes())
    with Image.open(out / f"{name}.preview.jpg") as im:
        preview = _label_band(im)
    forged = sheets.contact_sheet([(root / name, nm)], names=["invoiceexe.png"], tile=320)
    assert np.abs(preview - _label_band(forged)).mean() > 2.0
    # A long name stays inside the sheet: the margin right of the name's row is bare paper.
    with Image.open(out / f"{long}.preview.jpg") as im:
        margin = _label_band(im)[:, -6:]
    assert margin.min() > 235
