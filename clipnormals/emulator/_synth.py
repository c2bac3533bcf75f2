"""The emulator's synthetic normal maps.

They are not estimates of anything: one head-and-shoulders template (``_template``), drawn in a
square box (a :class:`~clipnormals.emulator._template.Placement`), is inflated into a smooth
height field by solving Poisson's equation at low resolution, upsampled, and differentiated.
Where the box goes is the only thing a photo can change: by default it stands at the bottom
centre, as in a portrait; the app moves and scales it onto where
:func:`~clipnormals.emulator._fit.fit_placement` guesses the subject is, so that the pictures
made from the map line up with the photo. The shape, and every normal, stay the template's.
Normals follow the +X right, +Y up, +Z towards the viewer convention; background pixels are
exactly (128, 128, 255) before JPEG encoding. Every JPEG carries a comment saying it is
synthetic.

Inflation: ``laplacian(h) = -1`` inside the silhouette, ``h = 0`` outside, and a reflecting
bottom edge (the body goes on below the frame). For a disc of radius R the solution is
``(R^2 - r^2) / 4``, so ``z = sqrt(4 h)`` would be a hemisphere; ``z = sqrt(2 h)`` is used, a
round but slightly flattened profile with normals that turn outwards at the outline. When the
box puts the torso past a side of the frame, the grid is widened on that side, so that the
surface runs on out of view there instead of curling down at the frame's edge.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from ._template import PLACEMENT_STEPS, Placement, coverage, overhang

__all__ = ["SynthMap", "synthetic_jpeg", "synthetic_normal_map"]

BACKGROUND: Final = (128, 128, 255)
JPEG_COMMENT: Final = (
    b"clipnormals emulator: synthetic normal map, a template placed on the photo, not derived "
    b"from its content"
)

_LOW_RES = 128  # long side of the Poisson grid
_SCREEN = 8.0  # how hard the field is pulled to zero outside the outline
_TOLERANCE = 1e-5  # relative SOR update at which the field counts as solved
_LEVEL = 0.004  # the outline is this fraction of the peak of the field
_SMOOTH_PASSES = 2
_CACHE_SIZE = 16

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
ByteArray = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class SynthMap:
    """A synthetic normal map before JPEG encoding.

    Attributes:
        normals: float32 (H, W, 3), unit vectors, +X right, +Y up, +Z to the viewer.
        mask: bool (H, W), True on the synthetic person.
        rgb: uint8 (H, W, 3), ``round((n + 1) * 127.5)``; exactly (128, 128, 255) off the mask.

    Example:
        >>> m = synthetic_normal_map(48, 64)
        >>> m.rgb.shape, bool(m.mask.any()), tuple(int(v) for v in m.rgb[0, 0])
        ((64, 48, 3), True, (128, 128, 255))
    """

    normals: FloatArray
    mask: BoolArray
    rgb: ByteArray


def _inflate(coverage: FloatArray) -> npt.NDArray[np.float64]:
    """Solve laplacian(h) - k (1 - c) h = -c for the cell coverage c.

    Where c = 1 this is Poisson's equation with a unit source; where c = 0 the field decays
    within a fraction of a cell, so it behaves like h = 0 outside while staying smooth across
    the outline (bicubic upsampling then adds no ripples). The top and side edges hold h = 0,
    the bottom edge reflects (the torso continues out of frame). Red-black successive
    over-relaxation, vectorised: ~128 px grid, a few tens of milliseconds.
    """
    rows, cols = coverage.shape
    h = np.zeros((rows + 2, cols + 2), dtype=np.float64)
    c = np.zeros_like(h)
    c[1:-1, 1:-1] = coverage
    interior = np.zeros_like(h, dtype=bool)
    interior[1:-1, 1:-1] = True
    parity = np.add.outer(np.arange(rows + 2), np.arange(cols + 2)) % 2
    colours = [interior & (parity == p) for p in (0, 1)]
    diagonal = [4.0 + _SCREEN * (1.0 - c[colour]) for colour in colours]
    source = [c[colour] for colour in colours]
    n = max(rows, cols)
    omega = 2.0 / (1.0 + math.sin(math.pi / n))
    for iteration in range(20 * n):
        biggest = 0.0
        for colour, diag, src in zip(colours, diagonal, source, strict=True):
            h[-1, :] = h[-2, :]
            neighbours = np.zeros_like(h)
            neighbours[1:-1, 1:-1] = h[:-2, 1:-1] + h[2:, 1:-1] + h[1:-1, :-2] + h[1:-1, 2:]
            delta = (neighbours[colour] + src) / diag - h[colour]
            h[colour] += omega * delta
            biggest = max(biggest, float(np.abs(delta).max()))
        if iteration % 8 == 7 and biggest <= _TOLERANCE * max(1.0, float(h.max())):
            break
    solved: npt.NDArray[np.float64] = h[1:-1, 1:-1]
    return solved


def _smooth(field: npt.NDArray[np.float64], passes: int) -> npt.NDArray[np.float64]:
    """Binomial blur: removes the cell-scale wobble the grid leaves along the outline."""
    out = field
    for _ in range(passes):
        padded = np.pad(out, 2, mode="edge")
        out = (
            padded[:-4] + 4 * padded[1:-3] + 6 * padded[2:-2] + 4 * padded[3:-1] + padded[4:]
        ) / 16.0
        out = (
            out[:, :-4] + 4 * out[:, 1:-3] + 6 * out[:, 2:-2] + 4 * out[:, 3:-1] + out[:, 4:]
        ) / 16.0
    return out


@functools.lru_cache(maxsize=32)
def _low_res_field(
    cols: int,
    rows: int,
    aspect_width: int,
    aspect_height: int,
    placement: tuple[int, int, int, int] | None = None,
) -> tuple[npt.NDArray[np.float64], int]:
    """The smoothed field on the low-resolution grid (plus rows below the frame, and columns
    beside it where the torso runs past a side), and how many columns lie left of the frame.

    It depends on the frame only through its aspect ratio and the placement's :meth:`key
    <Placement.key>`, so photos of one shape at different resolutions (4:3, 16:9...) share one
    solve. Read-only: callers share it.
    """
    extra = rows // 2
    box = None
    pad = (0, 0)
    lean = 0.0
    if placement is not None:
        steps = PLACEMENT_STEPS
        side = placement[2] / steps * min(aspect_width, aspect_height)
        box = (placement[0] / steps * aspect_width, placement[1] / steps * aspect_height, side)
        lean = placement[3] / steps
        pad = overhang(box, lean, aspect_width, cols)
    cells = coverage(aspect_width, aspect_height, cols, rows, extra, box, pad, lean)
    field = _smooth(_inflate(cells), _SMOOTH_PASSES)
    field.flags.writeable = False
    return field, pad[0]


def synthetic_normal_map(
    width: int, height: int, *, placement: Placement | None = None
) -> SynthMap:
    """Build the synthetic normal map of a ``width`` x ``height`` image (not cached).

    ``placement`` says where the template goes (None: :meth:`Placement.centred`); it is kept to
    1/1024 of the frame. CPU-bound (a second or two at 25 MP): call it from a worker thread in
    async code.

    Example:
        >>> m = synthetic_normal_map(64, 64)
        >>> bool(abs(float((m.normals**2).sum(axis=2).max()) - 1.0) < 1e-5)
        True
    """
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    scale = _LOW_RES / max(width, height)
    cols = max(8, round(width * scale))
    rows = max(8, round(height * scale))
    ratio = Fraction(width, height)
    key = None if placement is None else placement.key(width, height)
    solved, left = _low_res_field(cols, rows, ratio.numerator, ratio.denominator, key)
    peak = float(solved[:rows].max())
    # A margin of cells around the frame lets the bicubic kernel see real values at the edges
    # (the reflecting bottom especially) instead of a truncated kernel.
    margin = 2
    right = solved.shape[1] - cols - left
    # Beside the frame, the columns solved there (a torso running on out of view) where there
    # are any, else the edge repeated.
    add_left, add_right = max(0, margin - left), max(0, margin - right)
    padded = np.pad(solved[: rows + margin], ((margin, 0), (add_left, add_right)), mode="edge")
    start = left + add_left - margin
    padded = padded[:, start : start + cols + 2 * margin]
    # h is in low-res px^2; in full-res px^2 it scales with the square of the pixel size.
    to_px2 = (width / cols) * (height / rows)
    field = Image.fromarray(padded.astype(np.float32), mode="F").resize(
        (width, height),
        Image.Resampling.BICUBIC,
        box=(margin, margin, margin + cols, margin + rows),
    )
    h = np.asarray(field, dtype=np.float32)
    level = np.float32(_LEVEL * peak)
    mask: BoolArray = h > level
    z = np.where(mask, h - level, np.float32(0.0))
    np.multiply(z, np.float32(2.0 * to_px2), out=z)
    np.sqrt(z, out=z)
    slope_down = _slope(z, axis=0)
    slope_right = _slope(z, axis=1)
    del z, h
    # Off the person both slopes become exactly 0, so the normal there is exactly (0, 0, 1)
    # and encodes to exactly (128, 128, 255): round(127.5) is 128, half to even.
    np.multiply(slope_down, mask, out=slope_down)
    np.multiply(slope_right, mask, out=slope_right)
    # n = (-dz/dx, dz/dy_down, 1) / |...|: rows grow downwards while +Y points up.
    inv_length: FloatArray = np.square(slope_right)
    inv_length += np.square(slope_down)
    inv_length += np.float32(1.0)
    np.sqrt(inv_length, out=inv_length)
    np.reciprocal(inv_length, out=inv_length)
    nx = np.negative(slope_right, out=slope_right)
    nx *= inv_length
    ny = slope_down
    ny *= inv_length
    nz = inv_length
    normals = np.stack([nx, ny, nz], axis=-1)
    rgb = np.stack([_encode(nx), _encode(ny), _encode(nz)], axis=-1)
    return SynthMap(normals=normals, mask=mask, rgb=rgb)


def _slope(z: FloatArray, *, axis: int) -> FloatArray:
    """dz per pixel along ``axis`` (0 on an axis one pixel long, where there is no slope)."""
    if z.shape[axis] < 2:
        return np.zeros_like(z)
    slope: FloatArray = np.asarray(np.gradient(z, axis=axis), dtype=np.float32)
    return slope


def _encode(component: FloatArray) -> ByteArray:
    """``round((n + 1) * 127.5)`` as uint8 (|n| <= 1 keeps it within 0..255)."""
    scaled = component + np.float32(1.0)
    scaled *= np.float32(127.5)
    np.rint(scaled, out=scaled)
    encoded: ByteArray = scaled.astype(np.uint8)
    return encoded


def encode_jpeg(rgb: ByteArray, *, quality: int) -> bytes:
    """JPEG bytes of an RGB array, 4:2:0 chroma like the real service, labelled synthetic."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(
        buffer, format="JPEG", quality=quality, subsampling="4:2:0", comment=JPEG_COMMENT
    )
    return buffer.getvalue()


_CacheKey = tuple[int, int, int, tuple[int, int, int, int] | None]


class _JpegCache:
    """LRU of encoded maps by (width, height, quality, placement key); concurrent misses on one
    key compute it once (a 25 MP map costs ~1 GB of temporaries: sixteen at a time would
    hurt)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_CacheKey, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[_CacheKey, threading.Lock] = {}

    def peek(self, key: _CacheKey) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def get(self, key: _CacheKey, placement: Placement | None) -> bytes:
        found = self.peek(key)
        if found is not None:
            return found
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            found = self.peek(key)
            if found is None:
                width, height, quality, _ = key
                synth = synthetic_normal_map(width, height, placement=placement)
                found = encode_jpeg(synth.rgb, quality=quality)
                with self._lock:
                    self._items[key] = found
                    while len(self._items) > self._size:
                        self._items.popitem(last=False)
                    self._building.pop(key, None)
        return found


_CACHE = _JpegCache(_CACHE_SIZE)


def synthetic_jpeg(
    width: int, height: int, *, quality: int = 90, placement: Placement | None = None
) -> bytes:
    """The synthetic normal map of a ``width`` x ``height`` image as JPEG bytes, cached.

    Blocking on a cache miss (see :func:`synthetic_normal_map`).

    Example:
        >>> synthetic_jpeg(32, 32)[:3] == b"\\xff\\xd8\\xff"
        True
    """
    return _CACHE.get(_cache_key(width, height, quality, placement), placement)


def cached_jpeg(
    width: int, height: int, *, quality: int, placement: Placement | None = None
) -> bytes | None:
    """The cached JPEG when there is one, without building it (safe on an event loop)."""
    return _CACHE.peek(_cache_key(width, height, quality, placement))


def _cache_key(width: int, height: int, quality: int, placement: Placement | None) -> _CacheKey:
    return (width, height, quality, None if placement is None else placement.key(width, height))
