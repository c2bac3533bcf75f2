"""Relighting: the physics of the shading, not particular pixel values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from clipnormals import NormalMap
from clipnormals._normals.relight import (
    SH_ORDER,
    DirectionalLight,
    SHLighting,
    relight_image,
    sh_basis,
    shading,
)

from .synthetic import encode, sphere, to_png

SIZE = 129  # odd: the sphere's centre falls on a pixel
CENTRE = SIZE // 2


@pytest.fixture(scope="module")
def ball() -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    return sphere(SIZE, radius=56)


def grey(value: float = 0.5) -> NDArray[np.float32]:
    return np.full((SIZE, SIZE, 3), value, dtype=np.float32)


def lit(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]], **kwargs: object
) -> NDArray[np.float32]:
    normals, mask = ball
    out = relight_image(grey(), normals, mask, srgb=False, **kwargs)  # type: ignore[arg-type]
    assert isinstance(out, np.ndarray)
    return np.asarray(out[..., 0], dtype=np.float32)


def test_light_towards_the_viewer_makes_the_centre_brightest(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    out = lit(ball, light=DirectionalLight((0, 0, 1)))
    mask = ball[1]
    assert out[CENTRE, CENTRE] == out[mask].max()
    # and it falls off towards the outline, the same way in every direction
    ring_values = [out[CENTRE, CENTRE + r] for r in range(0, 55, 5)]
    assert all(a > b for a, b in itertools.pairwise(ring_values))
    np.testing.assert_allclose(out[CENTRE, CENTRE + 30], out[CENTRE - 30, CENTRE], rtol=1e-5)


def test_light_from_plus_x_brightens_the_right_side(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    mask = ball[1]
    out = lit(ball, light=DirectionalLight((1, 0, 1)))
    right = out[:, CENTRE + 1 :][mask[:, CENTRE + 1 :]].mean()
    left = out[:, :CENTRE][mask[:, :CENTRE]].mean()
    assert right > 2 * left
    row, col = np.unravel_index(np.argmax(np.where(mask, out, -1)), out.shape)
    assert col > CENTRE + 30
    assert abs(row - CENTRE) <= 1
    # +Y is up: a light from above brightens the top rows
    up = lit(ball, light=DirectionalLight((0, 1, 1)))
    assert (
        up[: CENTRE - 10][mask[: CENTRE - 10]].mean()
        > up[CENTRE + 10 :][mask[CENTRE + 10 :]].mean()
    )


def test_sh_with_only_the_constant_term_equals_ambient(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    coeffs = np.zeros(9)
    coeffs[0] = 0.7
    from_sh = lit(ball, light=SHLighting.from_array(coeffs))
    from_ambient = lit(ball, light=None, ambient=0.886227 * 0.7)
    np.testing.assert_allclose(from_sh, from_ambient, rtol=1e-5)
    np.testing.assert_allclose(
        lit(ball, light=SHLighting.constant(0.3)), lit(ball, light=None, ambient=0.3), rtol=1e-5
    )
    mask = ball[1]
    assert np.ptp(from_sh[mask]) < 1e-6  # uniform over the sphere


def test_energy_never_goes_negative(ball: tuple[NDArray[np.float32], NDArray[np.bool_]]) -> None:
    mask = ball[1]
    wild = np.zeros((9, 3))
    wild[2] = -5.0  # a strong "light from behind" term that a truncated expansion turns negative
    wild[6] = 3.0
    out = lit(ball, light=SHLighting.from_array(wild), specular=0.5)
    assert (out >= 0).all()
    assert (out[mask] == 0).any()  # it was clamped, not merely positive by luck
    behind = lit(ball, light=DirectionalLight((0, 0, -1)))
    assert np.array_equal(behind[mask], np.zeros(int(mask.sum()), np.float32))
    ratio = relight_image(grey(), *ball, light=SHLighting.from_array(wild), mode="ratio")
    assert (np.asarray(ratio) >= 0).all()


def test_sh_basis_is_ramamoorthi_hanrahan_irradiance() -> None:
    """E(n) = sum over l, m of A_l L_lm Y_lm(n), with A = (pi, 2 pi / 3, pi / 4)."""
    rng = np.random.default_rng(11)
    n = rng.normal(size=(500, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    coeffs = rng.normal(size=9)
    x, y, z = n.T
    ylm = np.stack(
        [
            0.282095 * np.ones_like(x),
            0.488603 * y,
            0.488603 * z,
            0.488603 * x,
            1.092548 * x * y,
            1.092548 * y * z,
            0.315392 * (3 * z * z - 1),
            1.092548 * x * z,
            0.546274 * (x * x - y * y),
        ],
        axis=1,
    )
    band = np.array([np.pi] + [2 * np.pi / 3] * 3 + [np.pi / 4] * 5)
    want = ylm @ (band * coeffs)
    np.testing.assert_allclose(sh_basis(n) @ coeffs, want, atol=2e-5)
    assert SH_ORDER[0] == "L00"
    assert len(SH_ORDER) == 9


def test_sh_projection_of_a_directional_light_approximates_lambert() -> None:
    rng = np.random.default_rng(5)
    n = rng.normal(size=(4000, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    for direction in [(0, 0, 1), (1, 0, 0), (0.3, -0.5, 0.8)]:
        light = DirectionalLight(direction, intensity=2.0, color=(1.0, 0.5, 0.25))
        approx = SHLighting.from_lights([light]).irradiance(n)
        exact = shading(n, light=light)
        # order 2 captures the clamped cosine to within 0.094 of its peak
        assert np.abs(approx - exact).max() < 0.1 * 2.0
        assert np.abs(approx - exact).mean() < 0.035 * 2.0


def test_lights_add_up(ball: tuple[NDArray[np.float32], NDArray[np.bool_]]) -> None:
    a = DirectionalLight((1, 0.2, 0.5), intensity=0.6)
    b = DirectionalLight((-0.4, 0.8, 0.4), intensity=0.3, color=(1, 1, 1))
    mask = ball[1]
    both = lit(ball, light=[a, b], ambient=0.1)[mask]
    separate = lit(ball, light=a, ambient=0.1)[mask] + lit(ball, light=b)[mask]
    np.testing.assert_allclose(both, separate, atol=1e-6)


def test_blinn_phong_highlight_sits_at_the_half_vector(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    light = DirectionalLight((1, 0, 1))  # 45 degrees right; viewer along +Z
    highlight = lit(ball, light=light, specular=1.0, shininess=200.0) - lit(ball, light=light)
    assert highlight.min() >= 0
    row, col = np.unravel_index(np.argmax(highlight), highlight.shape)
    # the half vector is 22.5 degrees from +Z: the highlight is 56 * sin(22.5) = 21 px right
    assert abs(row - CENTRE) <= 1
    assert abs(col - (CENTRE + 21.4)) <= 1.5
    facing_away = lit(ball, light=DirectionalLight((0, 0, -1)), specular=1.0)
    assert not facing_away[ball[1]].any()


def test_ratio_mode_divides_out_the_photos_own_lighting(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    normals, mask = ball
    rng = np.random.default_rng(2)
    albedo = np.clip(0.5 + 0.1 * rng.normal(size=(SIZE, SIZE, 1)), 0.1, 1.0) * np.ones(3)
    albedo = albedo.astype(np.float32)
    old = DirectionalLight((-0.5, 0.1, 0.85))
    new = DirectionalLight((0.7, 0.2, 0.7))
    photo = relight_image(albedo, normals, mask, light=old, ambient=0.3, srgb=False)
    truth = np.asarray(relight_image(albedo, normals, mask, light=new, ambient=0.3, srgb=False))
    ratio = np.asarray(
        relight_image(photo, normals, mask, light=new, ambient=0.3, mode="ratio", srgb=False)
    )
    naive = np.asarray(relight_image(photo, normals, mask, light=new, ambient=0.3, srgb=False))
    corr_ratio = np.corrcoef(ratio[mask][:, 0], truth[mask][:, 0])[0, 1]
    corr_naive = np.corrcoef(naive[mask][:, 0], truth[mask][:, 0])[0, 1]
    assert corr_ratio > 0.95 > corr_naive + 0.2
    # relighting with the photo's own light keeps it: the ratio is flat up to scale
    same = np.asarray(
        relight_image(photo, normals, mask, light=old, ambient=0.3, mode="ratio", srgb=False)
    )
    gain = same[mask][:, 0] / np.asarray(photo)[mask][:, 0]
    assert np.percentile(gain, 95) / np.percentile(gain, 5) < 1.6


def test_background_is_untouched_and_kinds_are_kept(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    normals, mask = ball
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    light = DirectionalLight((0.2, 0.3, 1), intensity=1.5)
    out = relight_image(noise, normals, mask, light=light, ambient=0.2, specular=0.3)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert np.array_equal(out[~mask], noise[~mask])
    assert not np.array_equal(out[mask], noise[mask])
    rgba = Image.fromarray(np.dstack([noise, np.full((SIZE, SIZE), 77, np.uint8)]), "RGBA")
    out_pil = relight_image(rgba, normals, mask, light=light, mode="ratio")
    assert isinstance(out_pil, Image.Image)
    assert out_pil.mode == "RGBA"
    arr = np.asarray(out_pil)
    assert np.array_equal(arr[..., 3], np.full((SIZE, SIZE), 77))
    assert np.array_equal(arr[..., :3][~mask], noise[~mask])
    as_float = relight_image(noise / 255.0, normals, mask, light=light)
    assert isinstance(as_float, np.ndarray)
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float[~mask], noise[~mask] / 255.0, atol=1e-6)


def test_bad_arguments_are_refused(ball: tuple[NDArray[np.float32], NDArray[np.bool_]]) -> None:
    normals, mask = ball
    with pytest.raises(ValueError, match="image is"):
        relight_image(np.zeros((10, 10, 3), np.uint8), normals, mask, light=None)
    with pytest.raises(ValueError, match="mode"):
        relight_image(grey(), normals, mask, light=None, mode="screen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(0, 0, 0\)"):
        DirectionalLight((0, 0, 0))
    with pytest.raises(ValueError, match="9 finite"):
        SHLighting.from_array(np.zeros(4))
    with pytest.raises(TypeError, match="DirectionalLight or SHLighting"):
        shading(normals[mask], light=[(0, 0, 1)])  # type: ignore[list-item]
    assert DirectionalLight((3, 0, 4)).direction == (0.6, 0.0, 0.8)


def test_normal_map_relights_at_map_or_source_size() -> None:
    normals, mask = sphere(64, radius=28)

    class Prepared:
        size = (64, 64)
        display_size = (128, 128)
        orientation = 1

    nm = NormalMap(to_png(encode(normals, mask)), prepared=Prepared())  # type: ignore[arg-type]
    light = DirectionalLight((1, 0, 0.3))
    small = nm.relight(Image.new("RGB", (64, 64), (120, 120, 120)), light=light)
    big = nm.relight(np.full((128, 128, 3), 120, np.uint8), light=light)
    assert isinstance(small, Image.Image)
    assert small.size == (64, 64)
    assert isinstance(big, np.ndarray)
    assert big.shape == (128, 128, 3)
    # the right half is the lit one at both sizes
    assert big[64, 100, 0] > big[64, 28, 0]
    assert np.asarray(small)[32, 50, 0] > np.asarray(small)[32, 14, 0]
    with pytest.raises(ValueError, match="expected the map's size"):
        nm.relight(np.zeros((50, 50, 3), np.uint8), light=light)


def test_uint8_tables_agree_with_the_float_path(
    ball: tuple[NDArray[np.float32], NDArray[np.bool_]],
) -> None:
    normals, mask = ball
    rng = np.random.default_rng(7)
    photo = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    light = [DirectionalLight((0.4, 0.5, 0.8), intensity=1.3), SHLighting.constant(0.1)]
    for kwargs in ({}, {"mode": "ratio", "specular": 0.4}, {"srgb": False}):
        table = relight_image(photo, normals, mask, light=light, ambient=0.1, **kwargs)  # type: ignore[arg-type]
        exact = relight_image(photo / 255.0, normals, mask, light=light, ambient=0.1, **kwargs)  # type: ignore[arg-type]
        expected = np.clip(np.rint(np.asarray(exact) * 255.0), 0, 255)
        diff = np.abs(np.asarray(table).astype(np.int16) - expected.astype(np.int16))
        assert diff.max() <= 1, kwargs  # the tables round correctly except next to a tie
        assert (diff == 0).mean() > 0.99, kwargs
