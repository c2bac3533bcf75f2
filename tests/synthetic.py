"""Synthetic portraits with known surface normals, encoded the way the API encodes them.

A head, a neck, a torso cut off by the bottom of the frame and two upper arms, each an ellipsoid,
seen orthographically along -Z. Where ellipsoids overlap, the one nearest the viewer wins, so the
scene has occluding contours inside the person too (chin over neck, arms over torso) and pockets
of background between the arms and the torso that are open at the bottom edge.

Normals use +X right, +Y up, +Z towards the viewer. The encoding is ``c = round((n + 1) * 127.5)``
per channel, with the background exactly (128, 128, 255); ``flip_x`` / ``flip_y`` negate X / Y
before encoding, to emulate a server that uses the other sign.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "BACKGROUND",
    "Ellipsoid",
    "Portrait",
    "encode",
    "height_field_normals",
    "portrait",
    "render",
    "ring",
    "smooth_region",
    "sphere",
    "to_jpeg",
    "to_png",
]

BACKGROUND = (128, 128, 255)


@dataclass(frozen=True, slots=True)
class Ellipsoid:
    """Centre and semi-axes in pixels; ``cy`` counts rows downwards like the image."""

    cx: float
    cy: float
    cz: float
    ax: float
    ay: float
    az: float
    angle: float = 0.0  # radians, counter-clockwise as seen by the viewer


@dataclass(frozen=True, slots=True)
class Portrait:
    """Ground truth plus its encoding: ``normals`` is (0, 0, 1) outside ``mask``."""

    normals: NDArray[np.float32]
    mask: NDArray[np.bool_]
    rgb: NDArray[np.uint8]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]

    def jpeg(self, quality: int = 75) -> bytes:
        return to_jpeg(self.rgb, quality)


def render(
    width: int, height: int, ellipsoids: list[Ellipsoid]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Z-buffer the ellipsoids at pixel centres; return (normals, mask)."""
    best_z = np.full((height, width), -np.inf)
    normals = np.zeros((height, width, 3), dtype=np.float32)
    normals[..., 2] = 1.0
    for e in ellipsoids:
        c, s = np.cos(e.angle), np.sin(e.angle)
        # Work only inside the ellipse's bounding box: 25-megapixel portraits stay quick.
        half_w = np.hypot(e.ax * c, e.ay * s)
        half_h = np.hypot(e.ax * s, e.ay * c)
        c0, c1 = max(0, int(e.cx - half_w)), min(width, int(e.cx + half_w) + 2)
        r0, r1 = max(0, int(e.cy - half_h)), min(height, int(e.cy + half_h) + 2)
        if c0 >= c1 or r0 >= r1:
            continue
        dx = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5 - e.cx
        dy = e.cy - (np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5)  # Y up
        u = (c * dx + s * dy) / e.ax
        v = (-s * dx + c * dy) / e.ay
        inside = u * u + v * v < 1.0
        w = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
        z = e.cz + e.az * w
        box_z = best_z[r0:r1, c0:c1]
        front = inside & (z > box_z)
        # The gradient of the implicit surface in the ellipsoid's frame, rotated back.
        lx, ly, lz = u / e.ax, v / e.ay, w / e.az
        n = np.stack(np.broadcast_arrays(c * lx - s * ly, s * lx + c * ly, lz), axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        normals[r0:r1, c0:c1][front] = n[front]
        box_z[front] = z[front]
    return normals, np.isfinite(best_z)


def encode(
    normals: NDArray[np.floating],
    mask: NDArray[np.bool_],
    *,
    flip_x: bool = False,
    flip_y: bool = False,
) -> NDArray[np.uint8]:
    """Encode as the API does; the background is exactly (128, 128, 255)."""
    n = np.array(normals, dtype=np.float64)
    if flip_x:
        n[..., 0] *= -1
    if flip_y:
        n[..., 1] *= -1
    rgb = np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
    rgb[~mask] = BACKGROUND
    return rgb


def to_jpeg(rgb: NDArray[np.uint8], quality: int) -> bytes:
    """JPEG with Pillow's defaults (4:2:0 chroma subsampling), like a typical server."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_png(rgb: NDArray[np.uint8]) -> bytes:
    """Lossless, for tests that must see the encoding exactly."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def portrait(
    width: int = 512, height: int = 640, *, flip_x: bool = False, flip_y: bool = False
) -> Portrait:
    """A head-and-shoulders portrait filling the frame like a typical upload."""
    w, h = float(width), float(height)
    parts = [
        # torso: centre below the frame, so the frame cuts it and its front faces the bottom edge
        Ellipsoid(0.5 * w, 1.0 * h, 0.0, 0.33 * w, 0.4 * h, 0.22 * w),
        # upper arms leaning out, joined to the torso at the shoulders: background pockets
        # between arm and torso are open only at the bottom edge
        Ellipsoid(0.13 * w, 0.84 * h, 0.02 * w, 0.07 * w, 0.26 * h, 0.08 * w, -0.45),
        Ellipsoid(0.87 * w, 0.84 * h, 0.02 * w, 0.07 * w, 0.26 * h, 0.08 * w, 0.45),
        Ellipsoid(0.5 * w, 0.66 * h, 0.0, 0.36 * w, 0.06 * h, 0.1 * w),  # shoulders
        Ellipsoid(0.5 * w, 0.5 * h, 0.1 * w, 0.1 * w, 0.12 * h, 0.1 * w),  # neck
        Ellipsoid(0.5 * w, 0.3 * h, 0.12 * w, 0.19 * w, 0.19 * h, 0.18 * w),  # head
    ]
    normals, mask = render(width, height, parts)
    return Portrait(normals, mask, encode(normals, mask, flip_x=flip_x, flip_y=flip_y))


def sphere(size: int, radius: float | None = None) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """A sphere centred in a square image: (normals, mask)."""
    r = 0.45 * size if radius is None else radius
    return render(size, size, [Ellipsoid(size / 2, size / 2, 0.0, r, r, r)])


def ring(size: int, radius: float, tube: float) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """A torus lying face-on, centred in a square image: background shows through its hole."""
    centre = size / 2
    coords = np.arange(size, dtype=np.float64) + 0.5
    dx = coords[None, :] - centre
    dy = centre - coords[:, None]  # Y up
    rho = np.hypot(dx, dy)
    t = (rho - radius) / tube
    mask = np.abs(t) < 1.0
    safe = np.maximum(rho, 1e-9)
    normals = np.zeros((size, size, 3))
    normals[..., 0] = t * dx / safe
    normals[..., 1] = t * dy / safe
    normals[..., 2] = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
    normals[~mask] = (0.0, 0.0, 1.0)
    return normals.astype(np.float32), mask


def height_field_normals(height_map: NDArray[np.floating]) -> NDArray[np.float32]:
    """Normals of the surface z = height_map[row, col] (+X right, +Y up, +Z viewer)."""
    dz_drow, dz_dcol = np.gradient(np.asarray(height_map, dtype=np.float64))
    # +Y is up, i.e. towards smaller rows.
    n = np.stack([-dz_dcol, dz_drow, np.ones_like(dz_dcol)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return n.astype(np.float32)


def smooth_region(
    normals: NDArray[np.float32], mask: NDArray[np.bool_], margin: int
) -> NDArray[np.bool_]:
    """Person pixels at least ``margin`` pixels from the outline and from any crease.

    A crease is where neighbouring ground-truth normals differ by more than 10 degrees: an
    occluding contour inside the person (chin over neck, arm over torso). JPEG's 8x8 blocks
    cannot hold such steps, so decoding accuracy is judged away from them.
    """
    cos_limit = np.cos(np.radians(10.0))
    edge = np.zeros(mask.shape, dtype=bool)
    for axis in (0, 1):
        a = normals[1:] if axis == 0 else normals[:, 1:]
        b = normals[:-1] if axis == 0 else normals[:, :-1]
        ma = mask[1:] if axis == 0 else mask[:, 1:]
        mb = mask[:-1] if axis == 0 else mask[:, :-1]
        step = ((a * b).sum(-1) < cos_limit) | (ma != mb)
        if axis == 0:
            edge[1:] |= step
            edge[:-1] |= step
        else:
            edge[:, 1:] |= step
            edge[:, :-1] |= step
    for _ in range(margin):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return mask & ~edge
