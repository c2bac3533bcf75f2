"""Rendering normal-map arrays as pictures: the RGB map and a neutral clay render.

Functions of arrays, so that :class:`~clipnormals.NormalMap` (which offers them as methods) and
the contact sheets share them without depending on each other.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from .mask import BACKGROUND_RGB
from .relight import DirectionalLight, LightSpec, linear_to_srgb, shading
from .vectors import encode_rgb8

__all__ = ["CLAY_AMBIENT", "CLAY_LIGHTS", "preview_image", "shaded_image"]

#: A key light from the upper left and a weak fill from the right, like a studio clay render.
CLAY_LIGHTS = (
    DirectionalLight((-0.5, 0.6, 0.62), intensity=0.9),
    DirectionalLight((0.8, -0.1, 0.6), intensity=0.15),
)
CLAY_AMBIENT = 0.08
_CLAY_ALBEDO = 0.7


def preview_image(normals: NDArray[np.float32], mask: NDArray[np.bool_]) -> Image.Image:
    """The normal map as RGB, re-encoded from the (flipped, if asked) normals.

    The background is painted exactly (128, 128, 255), without the JPEG's noise.
    """
    rgb = encode_rgb8(normals)
    rgb[~mask] = BACKGROUND_RGB
    return Image.fromarray(rgb)


def shaded_image(
    normals: NDArray[np.float32],
    mask: NDArray[np.bool_],
    *,
    light: LightSpec = CLAY_LIGHTS,
    ambient: float | ArrayLike = CLAY_AMBIENT,
    background: tuple[int, int, int] = (70, 70, 70),
) -> Image.Image:
    """A neutral grey clay render of the person: light grey albedo, Lambert lights, sRGB."""
    out = np.empty((*mask.shape, 3), dtype=np.uint8)
    out[:] = background
    if mask.any():
        lit = shading(normals[mask], light=light, ambient=ambient) * np.float32(_CLAY_ALBEDO)
        out[mask] = np.clip(np.rint(linear_to_srgb(lit) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out)
