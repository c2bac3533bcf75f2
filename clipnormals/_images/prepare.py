"""Image preparation: turn what the user passes into bytes the API accepts, before any upload.

The API takes PNG, JPEG or WEBP, at most 25 megapixels and 30 MB. :func:`prepare_image` accepts
a path, bytes, a binary file, a PIL image or a numpy array and returns a :class:`PreparedImage`:

- the format is sniffed from the bytes, never from a file name;
- a PNG, JPEG or WEBP that needs no change is uploaded byte for byte (``changes == ()``);
- EXIF orientation is applied, so the normals line up with what the user sees, and the uploaded
  bytes carry no orientation tag (a server must not rotate a second time);
- other formats Pillow reads (TIFF, BMP, GIF, ICO, PPM, ...) and the first frame of animations
  are converted to PNG;
- above ``max_pixels`` the image is downscaled and above ``max_bytes`` it is re-encoded, unless
  ``strict`` is set, which refuses instead;
- the image must decode completely: empty, foreign, and truncated data are refused, whatever
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` says; so are decompression bombs, before decoding.

These are blocking functions: the async client runs them in a worker thread.

Thread safety: calls share no state. Pillow's globals are read (``MAX_IMAGE_PIXELS``), never
written, and the warnings filters are left alone: ``warnings.catch_warnings`` swaps process-wide
state and is not safe while other threads run. So Pillow's own decompression-bomb check still
happens inside ``Image.open``: its ``DecompressionBombError``, and its
``DecompressionBombWarning`` when the application turns warnings into errors, become
:class:`InvalidImageError`; under default filters Pillow prints the warning and the bomb limit
here refuses the image right after. A PIL image passed in must not be used by another thread
while it is prepared (loading it reads its file).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

from .._errors import InvalidImageError
from .reencode import fit, oriented_size, reencode
from .sources import (
    Source,
    array_to_image,
    bomb_limit,
    canonical_format,
    exif_orientation,
    load,
    open_image,
    pillow_errors,
    read_file,
    read_path,
    sniff,
    source_label,
)

__all__ = ["ImageSource", "PrepareOptions", "PreparedImage", "prepare_image", "sniff_format"]

_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_EXTENSIONS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "WEBP": (".webp",)}


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    """How :func:`prepare_image` treats images the API would refuse as they are.

    Attributes:
        strict: raise :class:`InvalidImageError` instead of downscaling or of re-encoding lossily
            to meet the limits. Lossless changes (EXIF orientation, conversion to PNG) still
            happen; a JPEG that must be rotated may become a JPEG at quality 95.
        max_pixels: the API's limit on width * height.
        max_bytes: the API's limit on the file size.
        reencode_jpeg_as: the format for a JPEG that must be re-encoded (rotated, downscaled,
            or passed as a PIL image). ``"JPEG"``, the default, encodes at quality 95 (lower
            only to fit ``max_bytes``): an EXIF-rotated 24 MP phone photo becomes about 2.4 MB
            in 0.05 s, where a PNG is about 16 MB and takes 1.3 s. At the quota's one request
            a second, keeping pace takes a 2.4 MB/s uplink rather than 16 MB/s, for a small
            generation loss on a source that was lossy already. ``"PNG"`` is lossless.
        bomb_pixels: images declaring more pixels are refused before decoding. ``None`` means
            Pillow's ``Image.MAX_IMAGE_PIXELS`` read at call time (89,478,485 unless the
            application changed it), or 4 * ``max_pixels`` when the application disabled it.
            Pillow's own check in ``Image.open`` applies as well.

    Example:
        >>> PrepareOptions(strict=True, max_pixels=16_000_000).max_bytes
        30000000
    """

    strict: bool = False
    max_pixels: int = 25_000_000
    max_bytes: int = 30_000_000
    reencode_jpeg_as: Literal["PNG", "JPEG"] = "JPEG"
    bomb_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.reencode_jpeg_as not in ("PNG", "JPEG"):
            raise ValueError(
                f"reencode_jpeg_as must be 'PNG' or 'JPEG', got {self.reencode_jpeg_as!r}"
            )
        for name in ("max_pixels", "max_bytes", "bomb_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image ready for upload, and how it relates to the source the user gave.

    Attributes:
        data: exactly the bytes to upload.
        format: ``"PNG"``, ``"JPEG"`` or ``"WEBP"``.
        content_type: the matching media type.
        filename: the multipart file name: the source's base name, extension matching format.
        size: (width, height) of the uploaded image.
        display_size: (width, height) of the source as the user sees it: after EXIF
            orientation, before any downscale.
        orientation: the EXIF orientation (1..8) that was applied; 1 means none.
        source_sha256: hex SHA-256 of the source bytes as given; for PIL and numpy inputs, of
            ``data``.
        source_name: the path or file name when known.
        changes: what was done, in order, e.g. ``("converted-from-TIFF", "downscaled")``;
            ``()`` exactly when ``data`` is the source bytes untouched. Entries:
            ``encoded-from-PIL``, ``encoded-from-array``, ``converted-from-<FORMAT>``,
            ``first-frame``, ``converted-mode-<MODE>``, ``downscaled``, ``exif-orientation``,
            ``re-encoded`` (the pixels went to a JPEG, or an API-format source was
            recompressed to fit) and ``alpha-flattened`` (a JPEG, on white).

    Example:
        >>> from PIL import Image
        >>> prepared = prepare_image(Image.new("RGB", (4, 3)), name="grey.tiff")
        >>> prepared.format, prepared.filename, prepared.size, prepared.changes
        ('PNG', 'grey.png', (4, 3), ('encoded-from-PIL',))
    """

    data: bytes = field(repr=False)
    format: str
    content_type: str
    filename: str
    size: tuple[int, int]
    display_size: tuple[int, int]
    orientation: int
    source_sha256: str
    source_name: str | None
    changes: tuple[str, ...]

    @property
    def scale(self) -> float:
        """Uploaded width over displayed width: 1.0 unless the image was downscaled."""
        return self.size[0] / self.display_size[0]


ImageSource: TypeAlias = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | BinaryIO
    | Image.Image
    | npt.NDArray[Any]
    | PreparedImage
)
"""Anything :func:`prepare_image` accepts."""

_DEFAULT_OPTIONS = PrepareOptions()


def prepare_image(
    source: ImageSource, *, options: PrepareOptions = _DEFAULT_OPTIONS, name: str | None = None
) -> PreparedImage:
    """Validate ``source`` and turn it into the bytes to upload. Blocking: run it in a thread.

    Args:
        source: a path, bytes, a binary file object (read from its current position), a PIL
            image, a numpy array (uint8 or bool, or float in [0, 1]; (H, W), (H, W, 1),
            (H, W, 3) or (H, W, 4)), or a :class:`PreparedImage`, which is returned unchanged.
        options: limits and strictness, see :class:`PrepareOptions`.
        name: the source's name, for the upload's file name and for error messages; defaults
            to the path or the file object's name.

    A PIL image straight from ``Image.open`` gets its EXIF orientation applied; any image
    derived from it (``copy``, ``rotate``, ...) is taken as its pixels stand.

    Raises:
        InvalidImageError: not an image, unreadable, truncated, a decompression bomb, an
            unsupported array, or over a limit in strict mode. The message names the source.

    Example:
        >>> png = prepare_image(Image.new("L", (8, 8))).data
        >>> prepared = prepare_image(png, name="flat.png")
        >>> prepared.data == png, prepared.changes, prepared.content_type
        (True, (), 'image/png')
    """
    if isinstance(source, PreparedImage):
        return source
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", None)
        source_name = name or (filename if isinstance(filename, str) and filename else None)
        label = source_label(source_name, "PIL image")
        is_file = isinstance(source, ImageFile.ImageFile)
        return _prepare_pixels(
            source, label, source_name, options, "encoded-from-PIL", is_file=is_file, owned=False
        )
    if isinstance(source, np.ndarray):
        label = source_label(name, "numpy array")
        image = array_to_image(source, label)
        return _prepare_pixels(
            image, label, name, options, "encoded-from-array", is_file=False, owned=True
        )
    if isinstance(source, bytes | bytearray | memoryview):
        data = source.tobytes() if isinstance(source, memoryview) else bytes(source)
        return _prepare_data(data, name, source_label(name, "image bytes"), options)
    if isinstance(source, str | os.PathLike):
        path = os.fsdecode(source)
        source_name = name or path
        label = source_label(source_name, "empty path")
        return _prepare_data(read_path(path, label), source_name, label, options)
    if callable(getattr(source, "read", None)):
        file_name = getattr(source, "name", None)
        source_name = name or (
            os.fsdecode(file_name) if isinstance(file_name, str | bytes) else None
        )
        label = source_label(source_name, "file object")
        return _prepare_data(read_file(source, label), source_name, label, options)
    raise InvalidImageError(
        f"unsupported image source of type {type(source).__name__}: pass a path, bytes, a binary "
        "file, a PIL image or a numpy array"
    )


def sniff_format(data: bytes) -> str | None:
    """The image format of ``data`` from its leading bytes, ``None`` when it is not an image.

    Returns ``"PNG"``, ``"JPEG"`` (multi-picture JPEGs included), ``"WEBP"``, or another Pillow
    format name (``"TIFF"``, ``"GIF"``, ``"BMP"``, ...). Nothing is decoded; a format name does
    not promise that the rest of the file is intact.

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)), sniff_format(b"<html>")
        ('PNG', None)
    """
    return sniff(data)


# --- preparing --------------------------------------------------------------------------------


def _too_many_pixels(label: str, size: tuple[int, int], options: PrepareOptions) -> None:
    if options.strict and size[0] * size[1] > options.max_pixels:
        raise InvalidImageError(
            f"{label}: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is above the limit of "
            f"{options.max_pixels:,} pixels (strict mode forbids downscaling)"
        )


def _prepare_data(
    data: bytes, source_name: str | None, label: str, options: PrepareOptions
) -> PreparedImage:
    if not data:
        raise InvalidImageError(f"{label}: empty input (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    with pillow_errors(label):
        source = Source(data)
        image = open_image(
            source, label, bomb_limit=bomb_limit(options.bomb_pixels, options.max_pixels)
        )
        try:
            fmt = canonical_format(image.format) or "unknown"
            size = image.size
            _too_many_pixels(label, size, options)
            animated = fmt != "JPEG" and bool(getattr(image, "is_animated", False))
            target = fit(size, options.max_pixels)
            orientation = load(image, source, fmt, label, target=target)
            display = oriented_size(size, orientation)
            untouched = fmt in _CONTENT_TYPES and orientation == 1 and not animated
            if untouched and target is None:
                if len(data) <= options.max_bytes:
                    return PreparedImage(
                        data=data,
                        format=fmt,
                        content_type=_CONTENT_TYPES[fmt],
                        filename=_filename(source_name, fmt),
                        size=display,
                        display_size=display,
                        orientation=1,
                        source_sha256=digest,
                        source_name=source_name,
                        changes=(),
                    )
                if options.strict:
                    raise InvalidImageError(
                        f"{label}: the file is {len(data):,} bytes, above the limit of "
                        f"{options.max_bytes:,} bytes (strict mode forbids re-encoding)"
                    )
            changes = [] if fmt in _CONTENT_TYPES else [f"converted-from-{fmt}"]
            if animated:
                changes.append("first-frame")
            return _finish(
                image,
                label=label,
                source_name=source_name,
                options=options,
                display=display,
                orientation=orientation,
                target=target,
                changes=changes,
                digest=digest,
                size_only=untouched and target is None,
                from_jpeg=fmt == "JPEG",
                owned=True,
            )
        finally:
            image.close()


def _prepare_pixels(
    image: Image.Image,
    label: str,
    source_name: str | None,
    options: PrepareOptions,
    origin: str,
    *,
    is_file: bool,
    owned: bool,
) -> PreparedImage:
    with pillow_errors(label):
        image.load()
        if image.width == 0 or image.height == 0:
            raise InvalidImageError(
                f"{label}: the image has no pixels ({image.width}x{image.height})"
            )
        _too_many_pixels(label, image.size, options)
        orientation = exif_orientation(image) if is_file else 1
        return _finish(
            image,
            label=label,
            source_name=source_name,
            options=options,
            display=oriented_size(image.size, orientation),
            orientation=orientation,
            target=fit(image.size, options.max_pixels),
            changes=[origin],
            digest=None,
            size_only=False,
            from_jpeg=is_file and image.format in ("JPEG", "MPO"),
            owned=owned,
        )


def _finish(
    image: Image.Image,
    *,
    label: str,
    source_name: str | None,
    options: PrepareOptions,
    display: tuple[int, int],
    orientation: int,
    target: tuple[int, int] | None,
    changes: list[str],
    digest: str | None,
    size_only: bool,
    from_jpeg: bool,
    owned: bool,
) -> PreparedImage:
    data, fmt, size = reencode(
        image,
        changes,
        label=label,
        target=target,
        orientation=orientation,
        owned=owned,
        from_jpeg=from_jpeg,
        size_only=size_only,
        jpeg_as=options.reencode_jpeg_as,
        max_bytes=options.max_bytes,
        strict=options.strict,
    )
    return PreparedImage(
        data=data,
        format=fmt,
        content_type=_CONTENT_TYPES[fmt],
        filename=_filename(source_name, fmt),
        size=size,
        display_size=display,
        orientation=orientation,
        source_sha256=digest or hashlib.sha256(data).hexdigest(),
        source_name=source_name,
        changes=tuple(changes),
    )


def _filename(source_name: str | None, fmt: str) -> str:
    base = os.path.basename((source_name or "").replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable() and ch != '"')
    stem, extension = os.path.splitext(base)
    if stem and extension.lower() in _EXTENSIONS[fmt]:
        return base
    return (stem or "image") + _EXTENSIONS[fmt][0]
