"""Relighting a photo with its normal map: Lambert, Blinn-Phong and order-2 spherical harmonics.

Lighting works in linear light on the person's pixels only; the background is copied through.
Directions use the normal map's frame: +X right, +Y up, +Z towards the viewer, and a light's
direction points *towards* the light. Shading is clamped at zero: energy never goes negative,
even where a truncated spherical-harmonics expansion dips below it.

Spherical harmonics follow Ramamoorthi & Hanrahan, "An Efficient Representation for Irradiance
Environment Maps" (SIGGRAPH 2001): nine radiance coefficients per channel, in the order
L00, L1-1, L10, L11, L2-2, L2-1, L20, L21, L22, turned into irradiance with their constants
c1..c5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from .parallel import in_blocks, row_blocks
from .pixels import rgb_array

__all__ = [
    "SH_ORDER",
    "DirectionalLight",
    "ImageT",
    "LightSpec",
    "SHLighting",
    "relight_image",
    "sh_basis",
    "shading",
]

Vec3: TypeAlias = tuple[float, float, float]
_F32 = NDArray[np.float32]
_F64 = NDArray[np.float64]

#: Coefficient order, as in Ramamoorthi & Hanrahan.
SH_ORDER = ("L00", "L1-1", "L10", "L11", "L2-2", "L2-1", "L20", "L21", "L22")
# Irradiance constants (Ramamoorthi & Hanrahan, equation 12).
_C1, _C2, _C3, _C4, _C5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708
# Real spherical harmonics Y_lm(d) up to order 2, in SH_ORDER, without their polynomial part.
_Y_SCALE = (
    0.282095,
    0.488603,
    0.488603,
    0.488603,
    1.092548,
    1.092548,
    0.315392,
    1.092548,
    0.546274,
)
_REC709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_CHUNK_PIXELS = 1 << 16
_FIT_SAMPLES = 200_000


def _vec3(value: ArrayLike, what: str) -> Vec3:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be three finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _rgb(value: float | ArrayLike, what: str) -> Vec3:
    if isinstance(value, int | float):
        return _vec3((value, value, value), what)
    return _vec3(value, what)


@dataclass(frozen=True, slots=True)
class DirectionalLight:
    """A light infinitely far away, like the sun.

    Attributes:
        direction: towards the light, in the normal map's frame (+X right, +Y up, +Z towards
            the viewer); normalised on creation.
        intensity: irradiance it brings to a surface facing it.
        color: linear RGB multiplier.

    Example:
        >>> DirectionalLight((3.0, 0.0, 4.0)).direction
        (0.6, 0.0, 0.8)
    """

    direction: Vec3
    intensity: float = 1.0
    color: Vec3 = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        d = np.array(_vec3(self.direction, "direction"))
        norm = float(np.linalg.norm(d))
        if norm == 0.0:
            raise ValueError("a light's direction cannot be (0, 0, 0)")
        if not math.isfinite(self.intensity) or self.intensity < 0:
            raise ValueError(f"intensity must be finite and >= 0, got {self.intensity!r}")
        unit = d / norm
        object.__setattr__(self, "direction", (float(unit[0]), float(unit[1]), float(unit[2])))
        object.__setattr__(self, "color", _vec3(self.color, "color"))


@dataclass(frozen=True, slots=True)
class SHLighting:
    """Distant lighting as order-2 spherical harmonics: nine radiance coefficients per channel.

    Attributes:
        coefficients: nine (R, G, B) triples in :data:`SH_ORDER`.

    Example:
        >>> sky = SHLighting.constant(0.5)  # irradiance 0.5 from every direction
        >>> round(float(sky.irradiance(np.array([[0.0, 0.0, 1.0]]))[0, 0]), 6)
        0.5
    """

    coefficients: tuple[Vec3, ...]

    def __post_init__(self) -> None:
        arr = _sh_array(self.coefficients)
        object.__setattr__(self, "coefficients", tuple(_vec3(row, "coefficient") for row in arr))

    @classmethod
    def from_array(cls, coefficients: ArrayLike) -> SHLighting:
        """From a (9,) array (grey light) or a (9, 3) array (RGB), in :data:`SH_ORDER`."""
        arr = _sh_array(coefficients)
        return cls(tuple(_vec3(row, "coefficient") for row in arr))

    @classmethod
    def constant(cls, irradiance: float | ArrayLike) -> SHLighting:
        """Uniform light giving ``irradiance`` to every surface: the same as an ambient term."""
        rgb = np.array(_rgb(irradiance, "irradiance"))
        coeffs = np.zeros((9, 3))
        coeffs[0] = rgb / _C4
        return cls.from_array(coeffs)

    @classmethod
    def from_lights(
        cls, lights: Sequence[DirectionalLight], *, ambient: float | ArrayLike = 0.0
    ) -> SHLighting:
        """Project directional lights (and an ambient term) onto the nine coefficients.

        The result is the smooth, low-frequency version of those lights: within about 0.1 of the
        exact Lambert shading per unit of intensity.
        """
        coeffs = cls.constant(ambient).as_array()
        for light in lights:
            basis = np.array(_Y_SCALE) * _polynomials(np.array([light.direction]))[0]
            coeffs += np.outer(basis, np.array(light.color) * light.intensity)
        return cls.from_array(coeffs)

    def as_array(self) -> _F64:
        """The coefficients as a (9, 3) float64 array."""
        return np.array(self.coefficients, dtype=np.float64)

    def irradiance(self, normals: ArrayLike) -> _F32:
        """Irradiance (…, 3) for unit normals (…, 3); not clamped (it can dip below zero)."""
        n = np.asarray(normals, dtype=np.float32)
        flat = n.reshape(-1, 3)
        out = sh_basis(flat) @ self.as_array().astype(np.float32)
        return out.reshape(*n.shape[:-1], 3)


def _sh_array(coefficients: ArrayLike) -> _F64:
    arr = np.asarray(coefficients, dtype=np.float64)
    if arr.shape == (9,):
        arr = np.repeat(arr[:, None], 3, axis=1)
    if arr.shape != (9, 3) or not np.all(np.isfinite(arr)):
        raise ValueError(
            f"SH lighting needs 9 finite coefficients (or 9 RGB triples), got shape {arr.shape}"
        )
    return arr


def _polynomials(n: NDArray[np.floating]) -> NDArray[np.floating]:
    """The polynomial parts of the nine real harmonics, (N, 9), in SH_ORDER."""
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    one = np.ones_like(x)
    return np.stack([one, y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y], axis=1)


def sh_basis(normals: NDArray[np.floating]) -> _F32:
    """Irradiance basis (N, 9): ``E(n) = sh_basis(n) @ L`` for radiance coefficients ``L``.

    Ramamoorthi & Hanrahan's quadratic form, one column per coefficient in :data:`SH_ORDER`.
    """
    n = np.asarray(normals, dtype=np.float32)
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    out = np.empty((len(n), 9), dtype=np.float32)
    # Each column is written in place: no (N, 9) stack of temporaries.
    out[:, 0] = _C4
    np.multiply(y, np.float32(2 * _C2), out=out[:, 1])
    np.multiply(z, np.float32(2 * _C2), out=out[:, 2])
    np.multiply(x, np.float32(2 * _C2), out=out[:, 3])
    for column, (a, b) in ((4, (x, y)), (5, (y, z)), (7, (x, z))):
        np.multiply(a, b, out=out[:, column])
        out[:, column] *= np.float32(2 * _C1)
    np.multiply(z, z, out=out[:, 6])
    out[:, 6] *= np.float32(_C3)
    out[:, 6] -= np.float32(_C5)
    np.multiply(x, x, out=out[:, 8])
    out[:, 8] -= y * y
    out[:, 8] *= np.float32(_C1)
    return out


LightSpec: TypeAlias = (
    "DirectionalLight | SHLighting | Sequence[DirectionalLight | SHLighting] | None"
)


def _light_list(light: LightSpec) -> list[DirectionalLight | SHLighting]:
    if light is None:
        return []
    if isinstance(light, DirectionalLight | SHLighting):
        return [light]
    items = list(light)
    for item in items:
        if not isinstance(item, DirectionalLight | SHLighting):
            raise TypeError(f"lights must be DirectionalLight or SHLighting, got {item!r}")
    return items


def shading(
    normals: NDArray[np.floating],
    *,
    light: LightSpec,
    ambient: float | ArrayLike = 0.0,
) -> _F32:
    """Irradiance (N, 3) on unit normals (N, 3): ambient + Lambert lights + SH lights, >= 0.

    Example:
        >>> s = shading(np.array([[0.0, 0.0, 1.0]]), light=DirectionalLight((0, 0, 1)), ambient=0.1)
        >>> np.round(s.astype(float), 3).tolist()
        [[1.1, 1.1, 1.1]]
    """
    n = np.asarray(normals, dtype=np.float32)
    planes = _shading_planes(n, _light_list(light), _rgb(ambient, "ambient"))
    if planes.shape[0] == 1:
        return np.repeat(planes.T, 3, axis=1)
    return np.ascontiguousarray(planes.T)


def _shading_planes(n: _F32, items: Sequence[DirectionalLight | SHLighting], ambient: Vec3) -> _F32:
    """:func:`shading` as planes: (3, N), or (1, N) when every light and the ambient term are
    grey (the same for the three channels).

    Planes, not (N, 3): numpy is slow on a length-3 last axis (each step of an operation that
    broadcasts over it handles three numbers), and fast on long contiguous rows. The products
    are element-wise, not matrix products through BLAS: the shapes are thin, where BLAS gains
    nothing and its own threads fight the caller's."""
    directional = [item for item in items if isinstance(item, DirectionalLight)]
    harmonics = [item for item in items if isinstance(item, SHLighting)]
    grey = not harmonics and all(
        len(set(colour)) == 1 for colour in (ambient, *(lamp.color for lamp in directional))
    )
    channels = 1 if grey else 3
    out = np.empty((channels, len(n)), dtype=np.float32)
    for c in range(channels):
        out[c].fill(ambient[c])
    if directional:
        cosine = np.empty(len(n), dtype=np.float32)
        scratch = np.empty(len(n), dtype=np.float32)
        x, y, z = n[:, 0], n[:, 1], n[:, 2]
        for lamp in directional:
            dx, dy, dz = (np.float32(v) for v in lamp.direction)
            np.multiply(x, dx, out=cosine)
            cosine += np.multiply(y, dy, out=scratch)
            cosine += np.multiply(z, dz, out=scratch)
            np.maximum(cosine, np.float32(0.0), out=cosine)
            for c in range(channels):
                out[c] += np.multiply(
                    cosine, np.float32(lamp.color[c] * lamp.intensity), out=scratch
                )
    for item in harmonics:
        out += item.irradiance(n).T
    np.maximum(out, np.float32(0.0), out=out)
    return out


def _specular(
    normals: NDArray[np.float32], light: LightSpec, strength: float, shininess: float
) -> _F32:
    """Blinn-Phong highlights of the directional lights, for a viewer along +Z."""
    out = np.zeros((len(normals), 3), dtype=np.float32)
    for item in _light_list(light):
        if not isinstance(item, DirectionalLight):
            continue
        d = np.array(item.direction, dtype=np.float32)
        half = d + np.array([0.0, 0.0, 1.0], dtype=np.float32)
        norm = float(np.linalg.norm(half))
        if norm == 0.0:  # light straight behind the viewer's back: no highlight can face both
            continue
        lobe = normals @ (half / norm)
        np.maximum(lobe, np.float32(0.0), out=lobe)
        np.power(lobe, np.float32(shininess), out=lobe)
        lobe[(normals @ d) <= 0] = 0.0
        colour = np.array(item.color, dtype=np.float32) * np.float32(item.intensity * strength)
        out += lobe[:, None] @ colour[None, :]
    return out


# The sRGB transfer functions (IEC 61966-2-1). On uint8 pixels both directions go through
# tables: 256 linear values in, and out a table over 2**16 steps of linear light, fine enough
# that the 8-bit result is the correctly rounded one except within 0.03 of a level from a tie
# (the steepest part of the curve, near black, moves 12.92 * 255 / 2**16 = 0.05 levels a step).
_LINEAR_STEPS = 1 << 16


def _srgb_to_linear64(c: NDArray[np.float64]) -> NDArray[np.float64]:
    c = np.clip(c, 0.0, None)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb64(c: NDArray[np.float64]) -> NDArray[np.float64]:
    c = np.clip(c, 0.0, None)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


_SRGB8_TO_LINEAR: _F32 = _srgb_to_linear64(np.arange(256) / 255.0).astype(np.float32)
_LINEAR_TO_SRGB8: NDArray[np.uint8] = np.rint(
    _linear_to_srgb64(np.arange(_LINEAR_STEPS + 1) / _LINEAR_STEPS) * 255.0
).astype(np.uint8)


def srgb_to_linear(c: NDArray[np.float32]) -> _F32:
    """sRGB values in [0, 1] to linear light, float32; negative values count as zero."""
    out = np.maximum(np.asarray(c, dtype=np.float32), np.float32(0.0))
    low = out <= np.float32(0.04045)
    dark = out[low] / np.float32(12.92)
    out += np.float32(0.055)
    out /= np.float32(1.055)
    np.power(out, np.float32(2.4), out=out)
    out[low] = dark
    return out


def linear_to_srgb(c: NDArray[np.float32]) -> _F32:
    """Linear light to sRGB values, float32, unclipped above one; negative values count as zero."""
    out = np.maximum(np.asarray(c, dtype=np.float32), np.float32(0.0))
    low = out <= np.float32(0.0031308)
    dark = out[low] * np.float32(12.92)
    np.power(out, np.float32(1 / 2.4), out=out)
    out *= np.float32(1.055)
    out -= np.float32(0.055)
    out[low] = dark
    return out


def _linear_to_srgb8(lit: _F32) -> NDArray[np.uint8]:
    """Linear light (any shape, float32, overwritten) to 8-bit sRGB through the table."""
    np.multiply(lit, np.float32(_LINEAR_STEPS), out=lit)
    # Clipped one step short of the top, so that the index fits 16 bits: the table's last two
    # entries are both 255 (the top step is 1/65536 below white), so nothing changes.
    np.clip(lit, np.float32(0.0), np.float32(_LINEAR_STEPS - 1), out=lit)
    lit += np.float32(0.5)
    out: NDArray[np.uint8] = np.take(_LINEAR_TO_SRGB8, lit.astype(np.uint16))
    return out


def _fit_shading(
    normals: _F32, mask: NDArray[np.bool_], pixels: NDArray[Any], to_linear: _ToLinear
) -> _F32 | None:
    """Least-squares SH fit of the photo's luminance on the person: its current shading.

    The fit sees albedo times shading and cannot tell them apart, so it is scaled to a mean of
    one: dividing by it flattens the photo's lighting while keeping its overall brightness.
    Only the subsampled person pixels it fits are converted to linear light.
    """
    count = int(mask.sum())
    step = max(1, math.isqrt(max(1, count // _FIT_SAMPLES)))
    sub = mask[::step, ::step]
    basis = sh_basis(normals[::step, ::step][sub]).astype(np.float64)
    target = (to_linear(pixels[::step, ::step][sub]) @ _REC709_LUMA).astype(np.float64)
    if len(target) < 9:
        return None
    # Normal equations (9 x 9) rather than an SVD of the whole sample: a hundredth of the time.
    try:
        coeffs = np.linalg.solve(basis.T @ basis, basis.T @ target)
    except np.linalg.LinAlgError:
        coeffs, *_ = np.linalg.lstsq(basis, target, rcond=None)
    mean = float((basis @ coeffs).mean())
    # A black photo has no shading to divide out.
    return (coeffs / mean).astype(np.float32) if mean > 1e-6 else None


ImageT = TypeVar("ImageT", Image.Image, "np.ndarray[Any, Any]")


def relight_image(
    image: ImageT,
    normals: _F32,
    mask: NDArray[np.bool_],
    *,
    light: LightSpec,
    ambient: float | ArrayLike = 0.0,
    specular: float = 0.0,
    shininess: float = 32.0,
    mode: Literal["albedo", "ratio"] = "albedo",
    srgb: bool = True,
    eps: float = 0.05,
) -> ImageT:
    """Relight ``image`` (same size as ``normals``); see :meth:`NormalMap.relight`.

    A PIL image comes back as a PIL image (RGB, alpha kept), a uint8 array as uint8 (H, W, 3)
    or (H, W, 4), a float array as float32, unclipped above one.
    """
    if mode not in ("albedo", "ratio"):
        raise ValueError(f"mode must be 'albedo' or 'ratio', not {mode!r}")
    if specular < 0 or shininess <= 0 or eps <= 0:
        raise ValueError("specular must be >= 0, shininess > 0 and eps > 0")
    options = _Options(
        light=_light_list(light),
        ambient=_rgb(ambient, "ambient"),
        specular=float(specular),
        shininess=float(shininess),
        ratio=mode == "ratio",
        srgb=srgb,
        eps=float(eps),
    )
    if isinstance(image, Image.Image):
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        rgb = rgb_array(image if image.mode == "RGB" else image.convert("RGB"))
        # A fresh array of our own: relit in place.
        picture = Image.fromarray(_relight_uint8(rgb, normals, mask, options, own=True))
        if alpha is not None:
            picture.putalpha(alpha)
        return picture
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    rgb_part = arr[..., :3]
    alpha_part = arr[..., 3:]
    if arr.dtype == np.uint8:
        out = _relight_uint8(rgb_part, normals, mask, options)
        return np.concatenate([out, alpha_part], axis=2) if alpha_part.size else out
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image arrays must be uint8 or floating point, got {arr.dtype}")
    result = _relight_float(rgb_part.astype(np.float32), normals, mask, options)
    if alpha_part.size:
        return np.concatenate([result, alpha_part.astype(np.float32)], axis=2)
    return result


@dataclass(frozen=True, slots=True)
class _Options:
    light: list[DirectionalLight | SHLighting]
    ambient: Vec3
    specular: float
    shininess: float
    ratio: bool
    srgb: bool
    eps: float


_ToLinear: TypeAlias = "Callable[[NDArray[Any]], _F32]"


def _check_size(pixels: NDArray[Any], normals: _F32) -> None:
    height, width = pixels.shape[:2]
    if normals.shape[:2] != (height, width):
        raise ValueError(
            f"image is {width}x{height} but the normal map is {normals.shape[1]}x{normals.shape[0]}"
        )


def _each_person_chunk(mask: NDArray[np.bool_], work: Callable[[NDArray[np.intp]], None]) -> None:
    """``work`` on the flat indices of the person's pixels, chunk by chunk; bands of rows in
    parallel threads (their pixels are disjoint).

    Chunks are small enough for their temporaries to stay in cache. Gathering rows by index
    (``np.take``) is several times faster than boolean indexing of an (H, W, 3) array, and
    only the person's pixels are ever converted.
    """
    height, width = mask.shape

    def band(top: int, bottom: int) -> None:
        person = np.flatnonzero(mask[top:bottom])
        person += top * width
        for start in range(0, len(person), _CHUNK_PIXELS):
            work(person[start : start + _CHUNK_PIXELS])

    in_blocks(band, row_blocks(height, width))


_RGB8 = np.dtype((np.void, 3))  # one pixel of an (N, 3) uint8 array as one element


def _lit(linear: _F32, normals: _F32, fit: _F32 | None, options: _Options) -> _F32:
    """Linear light (K, 3) of the person's pixels under the new lighting; ``linear`` is reused."""
    planes = _shading_planes(normals, options.light, options.ambient)
    # Channel by channel: strided columns, no broadcasting over a length-3 axis.
    for c in range(3):
        linear[:, c] *= planes[c % len(planes)]
    if fit is not None:
        old = sh_basis(normals) @ fit
        np.maximum(old, np.float32(options.eps), out=old)
        for c in range(3):
            linear[:, c] /= old
    if options.specular > 0:
        linear += _specular(normals, options.light, options.specular, options.shininess)
    return linear


def _relight_uint8(
    rgb: NDArray[np.uint8],
    normals: _F32,
    mask: NDArray[np.bool_],
    options: _Options,
    *,
    own: bool = False,
) -> NDArray[np.uint8]:
    """8-bit in, 8-bit out; only the person's pixels are converted, through the tables.

    ``own``: ``rgb`` is a C-contiguous array nobody else holds, relit in place."""
    _check_size(rgb, normals)
    srgb = options.srgb

    def to_linear(values: NDArray[np.uint8]) -> _F32:
        if srgb:
            return np.take(_SRGB8_TO_LINEAR, values)
        out: _F32 = values.astype(np.float32)
        out *= np.float32(1 / 255)
        return out

    fit = _fit_shading(normals, mask, rgb, to_linear) if options.ratio else None
    # The background is copied bit for bit, never through floating point.
    result = rgb if own and rgb.flags.c_contiguous else np.array(rgb, dtype=np.uint8, order="C")
    # Each pixel as one 3-byte element: gathered and scattered in one step, not three.
    pixels = result.reshape(-1, 3).view(_RGB8).reshape(-1)
    vectors = np.ascontiguousarray(normals).reshape(-1, 3)

    def relight(index: NDArray[np.intp]) -> None:
        values = np.take(pixels, index).view(np.uint8).reshape(-1, 3)
        lit = _lit(to_linear(values), np.take(vectors, index, axis=0), fit, options)
        if srgb:
            out = _linear_to_srgb8(lit)
        else:
            lit *= np.float32(255.0)
            np.clip(lit, np.float32(0.0), np.float32(255.0), out=lit)
            out = np.rint(lit, out=lit).astype(np.uint8)
        np.put(pixels, index, out.view(_RGB8).reshape(-1))

    _each_person_chunk(mask, relight)
    return result


def _relight_float(pixels: _F32, normals: _F32, mask: NDArray[np.bool_], options: _Options) -> _F32:
    _check_size(pixels, normals)
    srgb = options.srgb

    def to_linear(values: NDArray[Any]) -> _F32:
        if srgb:
            return srgb_to_linear(values)
        return np.maximum(np.asarray(values, dtype=np.float32), np.float32(0.0))

    fit = _fit_shading(normals, mask, pixels, to_linear) if options.ratio else None
    result = np.array(pixels, dtype=np.float32, order="C")
    flat = result.reshape(-1, 3)
    vectors = np.ascontiguousarray(normals).reshape(-1, 3)

    def relight(index: NDArray[np.intp]) -> None:
        lit = _lit(
            to_linear(np.take(flat, index, axis=0)), np.take(vectors, index, axis=0), fit, options
        )
        np.maximum(lit, np.float32(0.0), out=lit)
        flat[index] = linear_to_srgb(lit) if srgb else lit

    _each_person_chunk(mask, relight)
    return result
