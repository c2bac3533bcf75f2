"""Docstring examples run for real: against a local emulator, in a folder of sample portraits.

``--doctest-modules`` collects every example in the package. Those that call the API find
``CLIPDROP_API_KEY`` and ``CLIPDROP_BASE_URL`` pointing at an emulator on a loopback port, and
run in a fresh folder holding the portraits the examples name (``portrait.jpg``, ``a.jpg``,
``b.png``, ...), made from the bundled samples. Nothing here applies to ordinary tests.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

_KEY = "doctest-key"


def _portraits(folder: Path) -> None:
    from PIL import Image

    samples = resources.files("clipnormals").joinpath("samples")
    astronaut = Image.open(io.BytesIO(samples.joinpath("astronaut.png").read_bytes()))
    camera = Image.open(io.BytesIO(samples.joinpath("camera.png").read_bytes()))
    from clipnormals.emulator import synthetic_jpeg

    # A normal map "the API returned earlier": the emulator's synthetic map of the portrait.
    (folder / "portrait_normals.jpg").write_bytes(synthetic_jpeg(*astronaut.size))
    for name, image, fmt in (
        ("portrait.jpg", astronaut, "JPEG"),
        ("a.jpg", astronaut, "JPEG"),
        ("b.jpg", camera, "JPEG"),
        ("b.png", camera, "PNG"),
        ("c.webp", astronaut, "WEBP"),
    ):
        image.convert("RGB").save(folder / name, format=fmt)


@pytest.fixture(scope="session")
def _doctest_emulator_url() -> Iterator[str]:
    from clipnormals.emulator import EmulatorConfig, start_in_thread

    with start_in_thread(EmulatorConfig(keys={_KEY: 1_000_000})) as server:
        yield server.url


@pytest.fixture(autouse=True)
def _doctest_environment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(request.node, DoctestItem):
        return
    url = request.getfixturevalue("_doctest_emulator_url")
    monkeypatch.setenv("CLIPDROP_API_KEY", _KEY)
    monkeypatch.setenv("CLIPDROP_BASE_URL", url)
    _portraits(tmp_path)
    monkeypatch.chdir(tmp_path)
