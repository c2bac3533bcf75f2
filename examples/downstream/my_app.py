"""A tiny "downstream" application: the code a user of clipnormals would want to test.

It shades a portrait under a directional light using the surface normals from the API.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

import clipnormals


async def shade(
    client: clipnormals.AsyncClient,
    portrait: Image.Image,
    *,
    light: tuple[float, float, float] = (0.0, 0.0, 1.0),
) -> Image.Image:
    """A greyscale image of the person lit from ``light`` (+X right, +Y up, +Z to the viewer).

    The background stays black.
    """
    result = await client.surface_normals(portrait)
    direction = np.asarray(light, dtype=np.float32)
    direction /= np.linalg.norm(direction)
    brightness = np.clip(result.normals @ direction, 0.0, 1.0)
    brightness[~result.mask] = 0.0
    return Image.fromarray(np.rint(brightness * 255).astype(np.uint8), mode="L")
