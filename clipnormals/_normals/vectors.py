"""Normal fields as numbers: decoding, encoding, sign convention, and mapping back to the source.

Conventions: arrays are (H, W, 3) float32 with row 0 at the top; vectors are +X right, +Y up,
+Z towards the viewer (the flips exist to correct a server that uses other signs). An image
transform (a mirror, a quarter turn) moves the pixels *and* turns the vectors' X/Y parts with
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .._images.orientation import EXIF_TO_DISPLAY, inverse
from .mask import Runs
from .parallel import in_blocks, row_blocks

__all__ = [
    "NormalConvention",
    "decode_normals",
    "detect_convention",
    "encode_rgb8",
    "encode_rgb16",
    "reorient",
    "resize_field",
    "transform_field",
]

_F32 = NDArray[np.float32]
_Bool = NDArray[np.bool_]
#: Pixels per chunk of decoding: its float32 scratch (about 1 MiB) stays in a core's cache.
_CHUNK_PIXELS = 1 << 16

Transform = Image.Transpose

_T = Image.Transpose
#: How each transpose moves a vector's (x, y), with +Y up: new = (sx * old[i], sy * old[j]).
#: Which transpose an EXIF orientation asks for is ``clipnormals._images.orientation``'s table.
_VECTOR_MAP: dict[Transform, tuple[int, int, float, float]] = {
    _T.FLIP_LEFT_RIGHT: (0, 1, -1.0, 1.0),
    _T.FLIP_TOP_BOTTOM: (0, 1, 1.0, -1.0),
    _T.ROTATE_180: (0, 1, -1.0, -1.0),
    _T.ROTATE_90: (1, 0, -1.0, 1.0),  # (x, y) -> (-y, x), counter-clockwise
    _T.ROTATE_270: (1, 0, 1.0, -1.0),  # (x, y) -> (y, -x)
    _T.TRANSPOSE: (1, 0, -1.0, -1.0),  # (x, y) -> (-y, -x)
    _T.TRANSVERSE: (1, 0, 1.0, 1.0),  # (x, y) -> (y, x)
}


def decode_normals(rgb: NDArray[np.uint8], *, flip_x: bool = False, flip_y: bool = False) -> _F32:
    """Unit normals from an encoded map: ``(c - 128) / 127`` per channel, then renormalised.

    The background colour (128, 128, 255) decodes to exactly (0, 0, 1). A pixel at exactly
    (128, 128, 128) has no direction and also decodes to (0, 0, 1).

    Example:
        >>> decode_normals(np.array([[[128, 128, 255], [255, 128, 128]]], np.uint8)).tolist()
        [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
    """
    height, width = rgb.shape[:2]
    out = np.empty(rgb.shape, dtype=np.float32)
    # Row blocks in parallel threads (numpy releases the interpreter lock); each pixel's
    # arithmetic is the same whichever block it falls in.
    in_blocks(
        lambda top, bottom: _decode_rows(rgb, out, top, bottom, flip_x, flip_y),
        row_blocks(height, width),
    )
    return out


def _decode_rows(
    rgb: NDArray[np.uint8], out: _F32, top: int, bottom: int, flip_x: bool, flip_y: bool
) -> None:
    width = rgb.shape[1]
    rows = max(1, _CHUNK_PIXELS // max(width, 1))
    # Scratch for one chunk, reused: the only memory besides the result, and it stays in cache.
    squares = np.empty((rows, width, 3), dtype=np.float32)
    scratch = np.empty((rows, width), dtype=np.float32)
    sign_x = np.float32(-1.0 if flip_x else 1.0)
    sign_y = np.float32(-1.0 if flip_y else 1.0)
    for start in range(top, bottom, rows):
        end = min(start + rows, bottom)
        o = out[start:end]
        count = o.shape[0]
        np.copyto(o, rgb[start:end])
        # The 1/127 scale cancels in the renormalisation, so it is never applied.
        o -= np.float32(128.0)
        sq = squares[:count]
        np.multiply(o, o, out=sq)
        # Two adds of strided views sum the three squares several times faster than a
        # reduction over a length-3 axis, and unlike a matrix product through BLAS they never
        # start threads of their own; the sums are whole numbers, exact in float32.
        inv = scratch[:count]
        np.add(sq[..., 0], sq[..., 1], out=inv)
        inv += sq[..., 2]
        if not inv.all():
            # Exactly (128, 128, 128) has no direction: it decodes to +Z like the background.
            dead = inv == 0
            o[dead] = (0.0, 0.0, 1.0)
            inv[dead] = 1.0
        np.sqrt(inv, out=inv)
        np.divide(np.float32(1.0), inv, out=inv)
        o[..., 2] *= inv
        if flip_x:
            inv *= sign_x
        o[..., 0] *= inv
        if flip_x != flip_y:
            inv *= sign_x * sign_y
        o[..., 1] *= inv


def encode_rgb8(normals: NDArray[np.floating]) -> NDArray[np.uint8]:
    """The API's encoding ``round((n + 1) * 127.5)``, uint8 (H, W, 3)."""
    scaled = (np.asarray(normals, dtype=np.float32) + 1.0) * 127.5
    out: NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def encode_rgb16(normals: NDArray[np.floating]) -> NDArray[np.uint16]:
    """The same encoding over 16 bits: ``round((n + 1) * 32767.5)``, uint16 (H, W, 3)."""
    scaled = (np.asarray(normals, dtype=np.float64) + 1.0) * 32767.5
    out: NDArray[np.uint16] = np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    return out


# --------------------------------------------------------------------------- sign convention


@dataclass(frozen=True, slots=True)
class NormalConvention:
    """What the person's outline says about the signs of X and Y in a normal map.

    At the outline of a person, the true normal points outwards. ``x_agreement`` is how well
    the map's raw X (no flip) agrees with the outward direction, from -1 (always opposite) to
    +1 (always the same), weighted by how much X there is; the same for ``y_agreement``.

    Attributes:
        flip_x: pass as ``flip_x`` to get +X pointing right.
        flip_y: pass as ``flip_y`` to get +Y pointing up.
        x_agreement: evidence for X, in [-1, 1]; its sign decides ``flip_x``.
        y_agreement: evidence for Y, in [-1, 1]; its sign decides ``flip_y``.
        samples: outline pixels the evidence comes from.

    Example:
        >>> c = NormalConvention(flip_x=False, flip_y=True, x_agreement=0.9, y_agreement=-0.8,
        ...                      samples=1200)
        >>> c.confidence, c.reliable
        (0.8, True)
    """

    flip_x: bool
    flip_y: bool
    x_agreement: float
    y_agreement: float
    samples: int

    @property
    def confidence(self) -> float:
        """The weaker of the two agreements' magnitudes, in [0, 1]."""
        return min(abs(self.x_agreement), abs(self.y_agreement))

    @property
    def reliable(self) -> bool:
        """Enough outline, clearly one way: at least 100 samples and a confidence of 0.5."""
        return self.samples >= 100 and self.confidence >= 0.5


#: Outline pixels are read this many pixels deep into the person: inside JPEG's blur, on the
#: part of the surface that still turns away from the viewer.
_RIM_DEPTH = 4
#: Outlines closer than this to the frame are ignored: there the frame cuts the body off.
_FRAME_MARGIN = 3


def detect_convention(rgb: NDArray[np.uint8], mask: _Bool) -> NormalConvention:
    """Infer the signs of X and Y of an encoded map from the outline of its person mask.

    A row of the mask entering the person from the left crosses an outline whose outward normal
    points left (-X), leaving it to the right one pointing right (+X); columns do the same for Y.
    Ends of runs that touch the frame are skipped: that is where the frame cuts the body off.
    """
    _height, _width = mask.shape
    sum_x, weight_x, count_x = _rim_evidence(rgb[..., 0], mask)
    # Columns of the image are rows of its transpose; +Y is up, so a run's start (its top end)
    # has an outward normal along +Y: the opposite of rows, hence the minus sign.
    sum_y, weight_y, count_y = _rim_evidence(rgb[..., 1].T, np.ascontiguousarray(mask.T))
    ax = sum_x / weight_x if weight_x > 0 else 0.0
    ay = -sum_y / weight_y if weight_y > 0 else 0.0
    return NormalConvention(
        flip_x=ax < 0,
        flip_y=ay < 0,
        x_agreement=round(float(ax), 6),
        y_agreement=round(float(ay), 6),
        samples=count_x + count_y,
    )


def _rim_evidence(channel: NDArray[np.uint8], mask: _Bool) -> tuple[float, float, int]:
    """Sum of outward-signed raw components over run ends, the sum of their magnitudes, count."""
    height, width = mask.shape
    runs = Runs.of(mask)
    long_enough = runs.length >= 2 * _RIM_DEPTH + 2
    usable_row = (runs.row >= _FRAME_MARGIN) & (runs.row < height - _FRAME_MARGIN)
    total = 0.0
    weight = 0.0
    count = 0
    for ends, sign, off_frame in (
        (runs.start, -1.0, runs.start >= _FRAME_MARGIN),
        (runs.end - 1, 1.0, runs.end <= width - _FRAME_MARGIN),
    ):
        keep = long_enough & usable_row & off_frame
        rows = runs.row[keep]
        cols = ends[keep]
        for depth in range(1, _RIM_DEPTH + 1):
            values = channel[rows, cols - int(sign) * depth].astype(np.float64) - 128.0
            total += sign * float(values.sum())
            weight += float(np.abs(values).sum())
        count += int(keep.sum())
    return total, weight, count


# --------------------------------------------------------------------------- mapping back


def transform_field(normals: _F32, transform: Transform) -> _F32:
    """Move the pixels of a normal field as ``Image.transpose`` would, and turn its vectors.

    The vectors are taken as +X right, +Y up (the frame the flips are there to reach).
    """
    moved = _move(normals, transform)
    i, j, sx, sy = _VECTOR_MAP[transform]
    out = np.empty(moved.shape, dtype=np.float32)
    out[..., 0] = moved[..., i] * np.float32(sx)
    out[..., 1] = moved[..., j] * np.float32(sy)
    out[..., 2] = moved[..., 2]
    return out


def _move(a: NDArray[Any], transform: Transform) -> NDArray[Any]:
    """The numpy view that moves pixels as ``Image.transpose(transform)`` does."""
    if transform is _T.FLIP_LEFT_RIGHT:
        return a[:, ::-1]
    if transform is _T.FLIP_TOP_BOTTOM:
        return a[::-1]
    if transform is _T.ROTATE_180:
        return a[::-1, ::-1]
    if transform is _T.ROTATE_90:
        return np.rot90(a, 1)
    if transform is _T.ROTATE_270:
        return np.rot90(a, -1)
    if transform is _T.TRANSPOSE:
        return a.swapaxes(0, 1)
    return a[::-1, ::-1].swapaxes(0, 1)  # TRANSVERSE


def reorient(
    normals: _F32,
    mask: _Bool,
    orientation: int,
    *,
    to: Literal["stored", "display"],
) -> tuple[_F32, _Bool]:
    """Apply (``to="display"``) or undo (``to="stored"``) an EXIF orientation (1..8)."""
    if orientation not in EXIF_TO_DISPLAY:
        raise ValueError(f"EXIF orientation must be 1..8, not {orientation!r}")
    transform = EXIF_TO_DISPLAY[orientation]
    if transform is None:
        return normals, mask
    if to == "stored":
        transform = inverse(transform)
    field = transform_field(normals, transform)
    return field, np.ascontiguousarray(_move(mask, transform))


def resize_field(normals: _F32, mask: _Bool, size: tuple[int, int]) -> tuple[_F32, _Bool]:
    """Resize a normal field to ``size`` (width, height), keeping person and background apart.

    The person's normals are averaged only with the person's (premultiplied by the mask), so
    the outline does not fade towards the background's (0, 0, 1); the mask is resized as
    coverage and cut at one half. The result is renormalised; the background is (0, 0, 1).
    """
    height, width = mask.shape
    if (width, height) == size:
        return normals, mask
    weight = mask.astype(np.float32)
    coverage = _resize_plane(weight, size)
    new_mask = coverage >= 0.5
    out = np.zeros((size[1], size[0], 3), dtype=np.float32)
    safe = np.where(new_mask, coverage, np.float32(1.0))
    for k in range(3):
        plane = _resize_plane(normals[..., k] * weight, size)
        out[..., k] = np.where(new_mask, plane / safe, np.float32(0.0))
    length = np.sqrt(np.einsum("...i,...i->...", out, out))
    good = new_mask & (length > 1e-6)
    out[good] /= length[good, None]
    out[~good] = (0.0, 0.0, 1.0)
    return out, new_mask


def _resize_plane(plane: _F32, size: tuple[int, int]) -> _F32:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
