"""Splitting the numpy work on a normal map over threads changes no result.

The normals, the person mask and relighting run in bands of rows over a small thread pool
(``clipnormals._normals.parallel``); the bands here are made tiny and numerous, and the results
are compared with those of a single band in the calling thread, bit for bit.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipnormals import DirectionalLight, NormalMap, SHLighting
from clipnormals._batch.discover import NotRegularFileError, RegularFile, read_regular
from clipnormals._normals import parallel
from clipnormals._normals.pixels import rgb_array

from .synthetic import portrait


def _everything(jpeg: bytes, photo: Image.Image) -> list[np.ndarray]:
    nm = NormalMap(jpeg)
    lights = [DirectionalLight((0.7, 0.3, 0.65), intensity=1.2, color=(1.0, 0.9, 0.8))]
    return [
        nm.rgb,
        nm.normals,
        nm.mask,
        np.asarray(nm.relight(photo, light=lights[0], ambient=0.2)),
        np.asarray(nm.relight(photo, light=[*lights, SHLighting.constant(0.1)], mode="ratio")),
        nm.relight(
            np.asarray(photo).astype(np.float32) / 255, light=lights, ambient=(0.1, 0.2, 0.3)
        ),
        NormalMap(jpeg, flip_x=True, flip_y=True).normals,
    ]


@pytest.mark.parametrize("size", [(203, 317), (64, 80), (512, 640)])
def test_many_threads_and_one_give_the_same_results(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = portrait(*size)
    jpeg = scene.jpeg(90)
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))

    monkeypatch.setattr(parallel, "cores", lambda: 1)
    one = _everything(jpeg, photo)
    monkeypatch.setattr(parallel, "cores", lambda: 3)
    monkeypatch.setattr(parallel, "MIN_BLOCK_PIXELS", 512)  # bands of a few rows
    blocks = parallel.row_blocks(size[1], size[0], min_pixels=512)
    assert len(blocks) >= 9  # the split really happens, into more bands than threads
    many = _everything(jpeg, photo)
    for a, b in zip(one, many, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)


def test_blocks_cover_every_row_once_and_errors_come_back() -> None:
    for height in (1, 2, 7, 64, 1000):
        blocks = parallel.row_blocks(height, 10_000, min_pixels=1)
        rows = [r for top, bottom in blocks for r in range(top, bottom)]
        assert rows == list(range(height))

    def work(top: int, bottom: int) -> int:
        if top == 0:
            raise ValueError("boom")
        return bottom - top

    with pytest.raises(ValueError, match="boom"):
        parallel.in_blocks(work, [(0, 1), (1, 3), (3, 6)])
    assert parallel.in_blocks(lambda t, b: b - t, [(0, 1), (1, 3), (3, 6)]) == [1, 2, 3]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pixels_unpacked_straight_into_the_array_are_numpys(mode: str) -> None:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (37, 1023, 3), dtype=np.uint8)).convert(mode)
    rgb = image.convert("RGB")
    out = rgb_array(rgb)
    assert out.dtype == np.uint8
    assert out.flags.writeable
    assert out.flags.c_contiguous
    assert np.array_equal(out, np.asarray(rgb))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=90)
    assert np.array_equal(NormalMap(buffer.getvalue()).rgb, np.asarray(Image.open(buffer)))


def test_a_source_read_for_preparation_must_be_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 70_000)
    assert read_regular(path) == b"x" * 70_000
    (tmp_path / "empty").write_bytes(b"")
    assert read_regular(tmp_path / "empty") == b""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with pytest.raises(NotRegularFileError):
        read_regular(fifo)  # refused at once, not a hang waiting for a writer
    source = RegularFile(str(fifo))
    with pytest.raises(NotRegularFileError):
        source.read()
    assert isinstance(source.error, NotRegularFileError)


def _patchwork(seed: int, height: int = 257, width: int = 301) -> np.ndarray:
    """Background with rectangles of random colours and heavy noise: thin structures and
    speckles everywhere, so band edges cut through what the opening and the filling see."""
    rng = np.random.default_rng(seed)
    rgb = np.full((height, width, 3), (128, 128, 255), np.int16)
    for _ in range(60):
        y, x = rng.integers(0, height), rng.integers(0, width)
        dy, dx = rng.integers(1, 40, 2)
        rgb[y : y + dy, x : x + dx] = rng.integers(0, 256, 3)
    rgb += rng.integers(-60, 60, rgb.shape, dtype=np.int16)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_the_mask_of_a_patchwork_does_not_depend_on_the_bands(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipnormals._normals.mask import person_mask

    rgb = _patchwork(seed)
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    monkeypatch.setattr("clipnormals._normals.mask._CHUNK_ROWS", 10**6)  # the whole image at once
    one = [person_mask(rgb, threshold=t, min_blob=4) for t in (20, 48)]
    monkeypatch.setattr(parallel, "cores", lambda: 3)
    monkeypatch.setattr(parallel, "MIN_BLOCK_PIXELS", 301 * 5)
    monkeypatch.setattr("clipnormals._normals.mask._CHUNK_ROWS", 3)  # chunks inside bands too
    many = [person_mask(rgb, threshold=t, min_blob=4) for t in (20, 48)]
    for a, b in zip(one, many, strict=True):
        assert a.any()
        assert np.array_equal(a, b)
