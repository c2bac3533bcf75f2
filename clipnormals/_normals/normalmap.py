"""NormalMap: the API's JPEG turned into unit normals, a person mask, relighting and pictures.

Everything is computed lazily, once, and cached; the arrays handed out are read-only so that a
caller cannot corrupt the cache. ``await nm.load()`` does the decoding in a worker thread for
asyncio code that must not block its loop.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio.to_thread
import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from .._atomic import atomic_write_bytes
from .._errors import InvalidImageError
from .export import ExportFormat, format_for_path, npy_bytes, npz_bytes, png16_bytes
from .mask import person_mask
from .pixels import rgb_array
from .relight import ImageT, relight_image
from .render import CLAY_AMBIENT, CLAY_LIGHTS, preview_image, shaded_image
from .vectors import (
    NormalConvention,
    decode_normals,
    detect_convention,
    encode_rgb16,
    reorient,
    resize_field,
)

if TYPE_CHECKING:
    from .._images.prepare import PreparedImage
    from .relight import LightSpec

__all__ = ["SYNTHETIC_LABEL", "NormalMap"]

#: How clipnormals' emulator labels its maps: every JPEG it serves carries a comment (COM
#: marker) starting with these bytes. The emulator shares no code with the client, so the two
#: spellings are held equal by a test.
SYNTHETIC_LABEL = b"clipnormals emulator: synthetic"


_Array = TypeVar("_Array", bound="np.ndarray[Any, Any]")


def _readonly(a: _Array) -> _Array:
    a.flags.writeable = False
    return a


class NormalMap:
    """A surface-normal map of a portrait: the API's JPEG and what can be computed from it.

    Each pixel of the JPEG encodes the surface normal there as ``c = round((n + 1) * 127.5)``
    (R = X, G = Y, B = Z); the background is (128, 128, 255), "facing the viewer". The API does
    not document the signs of X and Y: :meth:`detect_convention` reads them off the person's
    outline, and ``flip_x`` / ``flip_y`` (or :meth:`with_convention`) set them.

    Attributes:
        jpeg: the response bytes, untouched.
        credits_remaining: ``x-remaining-credits`` of the response, ``None`` when absent.
        credits_consumed: ``x-credits-consumed`` of the response, ``None`` when absent.
        prepared: how the upload was prepared (orientation, downscale), ``None`` when unknown.
        synthetic: True when the map is known not to describe the photo (clipnormals'
            emulator made it); pictures then light the map's own surface, never the photo.
        size: (width, height) of the map.
        rgb: uint8 (H, W, 3), the decoded JPEG.
        normals: float32 (H, W, 3) unit vectors, +X right, +Y up, +Z towards the viewer.
        mask: bool (H, W), True on the person.

    Example:
        >>> nm = NormalMap.from_file("portrait_normals.jpg")  # a map the API returned earlier
        >>> nm.normals.shape, nm.normals.dtype, round(float(nm.mask.mean()), 2)
        ((512, 512, 3), dtype('float32'), 0.36)
        >>> from PIL import Image
        >>> from clipnormals import DirectionalLight
        >>> photo = Image.open("portrait.jpg").convert("RGB")
        >>> nm.relight(photo, light=DirectionalLight((1, 0, 1))).save("relit.png")
    """

    __slots__ = (
        "_credits_consumed",
        "_credits_remaining",
        "_flip_x",
        "_flip_y",
        "_headers",
        "_jpeg",
        "_lock",
        "_mask",
        "_normals",
        "_prepared",
        "_request_id",
        "_rgb",
        "_size",
        "_source",
        "_synthetic",
    )

    def __init__(
        self,
        jpeg: bytes,
        *,
        credits_remaining: int | None = None,
        credits_consumed: int | None = None,
        prepared: PreparedImage | None = None,
        flip_x: bool = False,
        flip_y: bool = False,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        synthetic: bool = False,
    ) -> None:
        if not isinstance(jpeg, bytes | bytearray | memoryview):
            raise TypeError(f"jpeg must be bytes, not {type(jpeg).__name__}")
        data = bytes(jpeg)
        size, comment = _read_header(data)
        self._init(
            data,
            size,
            comment,
            credits_remaining=credits_remaining,
            credits_consumed=credits_consumed,
            prepared=prepared,
            flip_x=flip_x,
            flip_y=flip_y,
            headers=headers,
            request_id=request_id,
            synthetic=synthetic,
        )

    @classmethod
    def _from_header(
        cls, jpeg: bytes, size: tuple[int, int], comment: bytes | None, **options: Any
    ) -> NormalMap:
        """A map whose header was read already (the client reads it when it checks the
        answer): ``size`` (width, height) and the JPEG comment; the bytes are not opened
        again. ``options`` are the keyword arguments of the constructor."""
        nm = cls.__new__(cls)
        nm._init(jpeg, size, comment, **options)
        return nm

    def _init(
        self,
        jpeg: bytes,
        size: tuple[int, int],
        comment: bytes | None,
        *,
        credits_remaining: int | None = None,
        credits_consumed: int | None = None,
        prepared: PreparedImage | None = None,
        flip_x: bool = False,
        flip_y: bool = False,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        synthetic: bool = False,
    ) -> None:
        self._jpeg = jpeg
        self._size = size
        labelled = comment is not None and comment.startswith(SYNTHETIC_LABEL)
        self._synthetic = bool(synthetic) or labelled
        self._credits_remaining = credits_remaining
        self._credits_consumed = credits_consumed
        self._prepared = prepared
        self._flip_x = bool(flip_x)
        self._flip_y = bool(flip_y)
        self._headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        self._request_id = request_id
        # Decoding may be asked for from several threads at once (load() and a property).
        self._lock = threading.RLock()
        self._rgb: NDArray[np.uint8] | None = None
        self._normals: NDArray[np.float32] | None = None
        self._mask: NDArray[np.bool_] | None = None
        self._source: dict[bool, tuple[NDArray[np.float32], NDArray[np.bool_]]] = {}

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, flip_x: bool = False, flip_y: bool = False
    ) -> NormalMap:
        """A normal map saved earlier (the API's JPEG, or any image Pillow reads). Blocking.

        Example:
            >>> NormalMap.from_file("portrait_normals.jpg", flip_y=True).flip_y
            True
        """
        return cls(Path(path).read_bytes(), flip_x=flip_x, flip_y=flip_y)

    # ------------------------------------------------------------------ plain attributes

    @property
    def jpeg(self) -> bytes:
        """The response bytes, untouched."""
        return self._jpeg

    @property
    def credits_remaining(self) -> int | None:
        """Credits left on the key after this call, from ``x-remaining-credits``."""
        return self._credits_remaining

    @property
    def credits_consumed(self) -> int | None:
        """Credits this call cost, from ``x-credits-consumed``."""
        return self._credits_consumed

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers (lower-case names; no cookies or credentials), for logging what
        the server said. Empty for a map not made by the client."""
        return self._headers

    @property
    def request_id(self) -> str | None:
        """The answer's request id (``x-request-id`` or a gateway's equivalent), if any."""
        return self._request_id

    @property
    def prepared(self) -> PreparedImage | None:
        """How the upload was prepared from the source, when known."""
        return self._prepared

    @property
    def synthetic(self) -> bool:
        """True when the map is known to be synthetic, not an analysis of the photo.

        Set by the ``synthetic`` keyword (the client passes it when the response says
        ``x-emulator: clipnormals``) or by the map's own bytes: the emulator's JPEGs carry a
        comment starting with :data:`SYNTHETIC_LABEL`, which survives saving and reloading.
        Contact sheets then relight the map's clay surface instead of the photo, and say so.
        """
        return self._synthetic

    @property
    def flip_x(self) -> bool:
        """Whether the decoded X is negated."""
        return self._flip_x

    @property
    def flip_y(self) -> bool:
        """Whether the decoded Y is negated."""
        return self._flip_y

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the map."""
        return self._size

    def __repr__(self) -> str:
        parts = [f"{self._size[0]}x{self._size[1]}"]
        if self._credits_remaining is not None:
            parts.append(f"credits_remaining={self._credits_remaining}")
        if self._credits_consumed is not None:
            parts.append(f"credits_consumed={self._credits_consumed}")
        if self._flip_x:
            parts.append("flip_x=True")
        if self._flip_y:
            parts.append("flip_y=True")
        if self._synthetic:
            parts.append("synthetic=True")
        return f"NormalMap({', '.join(parts)})"

    # ------------------------------------------------------------------ lazy arrays

    @property
    def rgb(self) -> NDArray[np.uint8]:
        """The decoded JPEG, uint8 (H, W, 3), read-only."""
        with self._lock:
            if self._rgb is None:
                self._rgb = _readonly(_decode(self._jpeg))
            return self._rgb

    @property
    def normals(self) -> NDArray[np.float32]:
        """Unit normals, float32 (H, W, 3), read-only: +X right, +Y up, +Z towards the viewer.

        Each channel decodes as ``(c - 128) / 127``, so the background is exactly (0, 0, 1),
        and is renormalised (JPEG leaves lengths between about 0.74 and 1.36). ``flip_x`` /
        ``flip_y`` negate X / Y.
        """
        with self._lock:
            if self._normals is None:
                field = decode_normals(self.rgb, flip_x=self._flip_x, flip_y=self._flip_y)
                self._normals = _readonly(field)
            return self._normals

    @property
    def mask(self) -> NDArray[np.bool_]:
        """The person, bool (H, W), read-only; robust to JPEG artefacts."""
        with self._lock:
            if self._mask is None:
                self._mask = _readonly(person_mask(self.rgb))
            return self._mask

    async def load(self) -> NormalMap:
        """Decode rgb, normals and mask in a worker thread; return ``self``.

        Example:
            >>> import asyncio
            >>> from clipnormals import AsyncClient
            >>> async def main() -> tuple[int, ...]:
            ...     async with AsyncClient() as client:
            ...         nm = await client.surface_normals("portrait.jpg")
            ...     await nm.load()  # the event loop stays free while numpy works
            ...     return nm.normals.shape
            >>> asyncio.run(main())
            (512, 512, 3)
        """
        await anyio.to_thread.run_sync(self._load_all)
        return self

    def _load_all(self) -> None:
        _ = self.normals, self.mask

    # ------------------------------------------------------------------ sign convention

    def detect_convention(self) -> NormalConvention:
        """Infer the signs of X and Y from the person's outline, where normals point outwards.

        The answer is about the raw map, whatever this object's flips: pass its ``flip_x`` and
        ``flip_y`` to :meth:`with_convention` (or to the client) to get +X right and +Y up.

        Example:
            >>> nm = NormalMap.from_file("portrait_normals.jpg")
            >>> found = nm.detect_convention()
            >>> found.reliable, found.flip_x, found.flip_y
            (True, False, False)
            >>> nm = nm.with_convention(flip_x=found.flip_x, flip_y=found.flip_y)
        """
        return detect_convention(self.rgb, self.mask)

    def with_convention(self, *, flip_x: bool, flip_y: bool) -> NormalMap:
        """The same map with other flips; what was decoded already is reused, not redone.

        Example:
            >>> nm = NormalMap.from_file("portrait_normals.jpg")
            >>> nm.with_convention(flip_x=False, flip_y=True).flip_y
            True
        """
        other = NormalMap(
            self._jpeg,
            credits_remaining=self._credits_remaining,
            credits_consumed=self._credits_consumed,
            prepared=self._prepared,
            flip_x=flip_x,
            flip_y=flip_y,
            headers=self._headers,
            request_id=self._request_id,
            synthetic=self._synthetic,
        )
        with self._lock:
            other._rgb, other._mask = self._rgb, self._mask
            if self._normals is not None:
                field = self._normals.copy()
                if other._flip_x != self._flip_x:
                    field[..., 0] *= -1
                if other._flip_y != self._flip_y:
                    field[..., 1] *= -1
                other._normals = _readonly(field)
        return other

    # ------------------------------------------------------------------ mapping back

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the source as a viewer sees it: before any downscale."""
        return self._prepared.display_size if self._prepared is not None else self._size

    def normals_at_source(self, *, stored_orientation: bool = False) -> NDArray[np.float32]:
        """The normals at the source's size (undoing a downscale before upload), read-only.

        With ``stored_orientation=True`` the EXIF orientation applied before upload is undone
        too, giving the pixel layout stored in the source file; the vectors turn with the
        pixels. Without preparation data this is :attr:`normals`. After a resize the background
        is exactly (0, 0, 1).

        Example:
            >>> nm = NormalMap.from_file("portrait_normals.jpg")
            >>> nm.normals_at_source().shape[:2] == nm.source_size[::-1]
            True
        """
        return self._at_source(stored_orientation)[0]

    def mask_at_source(self, *, stored_orientation: bool = False) -> NDArray[np.bool_]:
        """The person mask matching :meth:`normals_at_source`, read-only."""
        return self._at_source(stored_orientation)[1]

    def _at_source(self, stored: bool) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        prepared = self._prepared
        if prepared is None:
            return self.normals, self.mask
        with self._lock:
            if stored not in self._source:
                field, mask = resize_field(self.normals, self.mask, prepared.display_size)
                if stored:
                    field, mask = reorient(field, mask, int(prepared.orientation), to="stored")
                self._source[stored] = (
                    _readonly(np.ascontiguousarray(field)),
                    _readonly(np.ascontiguousarray(mask)),
                )
            return self._source[stored]

    # ------------------------------------------------------------------ relighting, pictures

    def relight(
        self,
        image: ImageT,
        *,
        light: LightSpec,
        ambient: float | ArrayLike = 0.0,
        specular: float = 0.0,
        shininess: float = 32.0,
        mode: Literal["albedo", "ratio"] = "albedo",
        srgb: bool = True,
        eps: float = 0.05,
    ) -> ImageT:
        """Relight the portrait ``image`` on the person; the background is left untouched.

        Shading is ambient plus Lambert for each :class:`DirectionalLight` plus irradiance for
        each :class:`SHLighting`, clamped at zero; ``specular`` adds white Blinn-Phong
        highlights. ``mode="albedo"`` takes the photo as the albedo (``out = photo * shading``);
        ``mode="ratio"`` first divides out the photo's own lighting, estimated by a
        least-squares SH fit on the person (``out = photo * new / max(old, eps)``, ``old``
        scaled to a mean of one). With ``srgb`` (default) pixel values are sRGB and lighting
        happens in linear light.

        ``image`` is a PIL image or an array (uint8, or float in [0, 1]) the size of the map,
        or of :attr:`source_size`; the result has the same kind (RGB, alpha kept).

        Example:
            >>> from PIL import Image
            >>> from clipnormals import DirectionalLight
            >>> nm = NormalMap.from_file("portrait_normals.jpg")
            >>> photo = Image.open("portrait.jpg").convert("RGB")
            >>> key = DirectionalLight((0.7, 0.3, 0.65), intensity=1.2)
            >>> nm.relight(photo, light=key, ambient=0.2, mode="ratio").size
            (512, 512)
        """
        size = image.size if isinstance(image, Image.Image) else np.shape(image)[1::-1]
        if tuple(size) == self._size:
            normals, mask = self.normals, self.mask
        elif tuple(size) == tuple(self.source_size):
            normals, mask = self._at_source(False)
        else:
            raise ValueError(
                f"image is {size[0]}x{size[1]}; expected the map's size "
                f"{self._size[0]}x{self._size[1]} or the source's {self.source_size}"
            )
        return relight_image(
            image,
            normals,
            mask,
            light=light,
            ambient=ambient,
            specular=specular,
            shininess=shininess,
            mode=mode,
            srgb=srgb,
            eps=eps,
        )

    def preview(self) -> Image.Image:
        """The normal map as an RGB picture (flips applied, background exactly clean).

        Example:
            >>> NormalMap.from_file("portrait_normals.jpg").preview().save("normals.png")
        """
        return preview_image(self.normals, self.mask)

    def shaded(
        self,
        *,
        light: LightSpec = CLAY_LIGHTS,
        ambient: float | ArrayLike = CLAY_AMBIENT,
        background: tuple[int, int, int] = (70, 70, 70),
    ) -> Image.Image:
        """A neutral grey clay render of the person, lit from the upper left.

        Example:
            >>> NormalMap.from_file("portrait_normals.jpg").shaded().save("clay.png")
        """
        return shaded_image(
            self.normals, self.mask, light=light, ambient=ambient, background=background
        )

    # ------------------------------------------------------------------ export

    def export(self, format: ExportFormat) -> bytes:
        """The map as file bytes.

        Formats: ``"jpeg"`` (the response bytes, untouched), ``"npy"`` (normals, float32
        (H, W, 3)), ``"npz"`` (``normals`` and ``mask``, compressed), ``"png16"`` (a 16-bit RGB
        PNG normal map, ``round((n + 1) * 32767.5)``, in this object's convention).

        Example:
            >>> nm = NormalMap.from_file("portrait_normals.jpg")
            >>> np.load(io.BytesIO(nm.export("npz")))["mask"].dtype
            dtype('bool')
        """
        if format == "jpeg":
            return self._jpeg
        if format == "npy":
            return npy_bytes(self.normals)
        if format == "npz":
            return npz_bytes(normals=self.normals, mask=self.mask)
        if format == "png16":
            return png16_bytes(encode_rgb16(self.normals))
        raise ValueError(f"unknown export format {format!r}; use jpeg, npy, npz or png16")

    def save(self, path: str | os.PathLike[str], *, format: ExportFormat | None = None) -> Path:
        """Write :meth:`export` bytes to ``path`` atomically; the format follows the suffix
        (.jpg/.jpeg, .npy, .npz, .png) unless given. Blocking. Returns the path.

        Example:
            >>> NormalMap.from_file("portrait_normals.jpg").save("out/portrait.npz")
            PosixPath('out/portrait.npz')
        """
        target = Path(path)
        atomic_write_bytes(target, self.export(format or format_for_path(target)))
        return target


def _read_header(data: bytes) -> tuple[tuple[int, int], bytes | None]:
    """Width and height from the header, without decoding the pixels, and the JPEG comment
    (read with the header; it says whether the file is labelled synthetic)."""
    if not data:
        raise InvalidImageError("the normal map is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            comment = image.info.get("comment")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"the normal map is not a readable image: {exc}") from exc
    return (int(width), int(height)), comment if isinstance(comment, bytes) else None


def _decode(data: bytes) -> NDArray[np.uint8]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            rgb.load()
            return rgb_array(rgb)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"the normal map could not be decoded: {exc}") from exc
