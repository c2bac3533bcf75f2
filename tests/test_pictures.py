"""Pictures: the RGB map, the clay render and the contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipnormals import NormalMap
from clipnormals._normals.sheets import contact_sheet

from .synthetic import BACKGROUND, encode, portrait, sphere, to_jpeg, to_png


@pytest.fixture(scope="module")
def ball_map() -> NormalMap:
    return NormalMap(to_png(encode(*sphere(96, radius=40))))


def test_preview_is_the_map_with_a_clean_background(ball_map: NormalMap) -> None:
    picture = ball_map.preview()
    assert picture.mode == "RGB"
    assert picture.size == ball_map.size
    arr = np.asarray(picture).astype(int)
    mask = ball_map.mask
    assert (arr[~mask] == BACKGROUND).all()
    # lossless input: re-encoding the decoded normals gives the same colours back (+-1)
    assert np.abs(arr[mask] - ball_map.rgb[mask].astype(int)).max() <= 1


def test_preview_follows_the_convention() -> None:
    server = portrait(128, 160, flip_x=True)
    nm = NormalMap(to_jpeg(server.rgb, 90), flip_x=True)
    arr = np.asarray(nm.preview()).astype(int)
    truth = encode(server.normals, server.mask).astype(int)  # +X right, as the flip intends
    both = nm.mask & server.mask
    assert np.median(np.abs(arr[both] - truth[both])) <= 2


def test_shaded_is_grey_clay_lit_from_the_upper_left(ball_map: NormalMap) -> None:
    picture = ball_map.shaded(background=(10, 20, 30))
    arr = np.asarray(picture).astype(int)
    mask = ball_map.mask
    assert (arr[~mask] == (10, 20, 30)).all()
    person = arr[mask]
    assert (person[:, 0] == person[:, 1]).all()
    assert (person[:, 1] == person[:, 2]).all()
    luma = arr[..., 0]
    assert luma[30, 30] > luma[66, 66] + 40  # upper left lit, lower right in shade
    assert luma[mask].max() > 150


def test_contact_sheet_layout_labels_and_png(tmp_path: Path, ball_map: NormalMap) -> None:
    photo = Image.new("RGB", ball_map.size, (180, 120, 90))
    path = tmp_path / "docs" / "sheet.png"
    sheet = contact_sheet(
        [(photo, ball_map), ball_map], names=["with photo", "map only"], tile=128, path=path
    )
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert saved.size == sheet.size
    width, height = sheet.size
    assert width == 8 + 4 * (128 + 8)
    arr = np.asarray(sheet).astype(int)
    header = arr[:14]
    assert (header < 128).any()  # labels were drawn
    # the first tile row starts where the normals cell's corner shows the map's background
    top = int(np.flatnonzero((arr[:, 8 + 136 + 1] == BACKGROUND).all(axis=1))[0])
    assert 14 < top < 60
    normals_cell = arr[top : top + 128, 8 + 136 : 8 + 136 + 128]
    assert ((normals_cell == BACKGROUND).all(axis=-1)).mean() > 0.3
    mask_cell = arr[top : top + 128, 8 + 2 * 136 : 8 + 2 * 136 + 128, 0]
    coverage = (mask_cell == 255).mean()
    assert abs(coverage - ball_map.mask.mean()) < 0.03
    assert ((mask_cell == 255) | (mask_cell == 20)).mean() > 0.95
    assert height > 2 * 128


def test_contact_sheet_takes_photo_paths_and_large_maps(tmp_path: Path) -> None:
    scene = portrait(640, 800)
    nm = NormalMap(scene.jpeg(90))
    photo_path = tmp_path / "photo.png"
    Image.new("RGB", nm.size, (200, 170, 150)).save(photo_path)
    sheet = contact_sheet([(photo_path, nm)], tile=96)
    assert sheet.size == (8 + 4 * 104, sheet.size[1])
    arr = np.asarray(sheet).astype(int)
    relit = arr[:, 8 + 3 * 104 : 8 + 3 * 104 + 96]
    assert len({tuple(p) for p in relit.reshape(-1, 3)}) > 20  # shaded, not flat


def test_contact_sheet_refuses_bad_arguments(ball_map: NormalMap) -> None:
    with pytest.raises(ValueError, match="names"):
        contact_sheet([ball_map], names=["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])
    with pytest.raises(ValueError, match="tile"):
        contact_sheet([ball_map], tile=8)
