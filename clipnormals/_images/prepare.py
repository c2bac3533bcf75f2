"""Image preparation: turn what the user passes into bytes the API accepts, before any upload.

The API takes PNG, JPEG or WEBP, at most 25 megapixels and 30 MB. :func:`prepare_image` accepts
a path, bytes, a binary file, a PIL image or a numpy array and returns a :class:`PreparedImage`:

- the format is sniffed from the bytes, never from a file name (``formats``);
- a PNG, JPEG or WEBP that needs no change is uploaded byte for byte (``changes == ()``);
- EXIF orientation is applied, so the normals line up with what the user sees, and the uploaded
  bytes carry no orientation tag (a server must not rotate a second time);
- other formats Pillow reads (TIFF, BMP, GIF, ICO, PPM, ...) and the first frame of animations
  are converted to PNG; lossy photo formats (HEIF/HEIC with the ``heif`` extra, AVIF) follow
  the rule of JPEG sources and become JPEG at quality 95 by default;
- above ``max_pixels`` the image is downscaled and above ``max_bytes`` it is re-encoded, unless
  ``strict`` is set, which refuses instead;
- the image must be whole and decode completely: empty, foreign, truncated and zero-filled data
  are refused (``integrity``), whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` says; so are
  decompression bombs, before decoding.

A plain PNG (8-bit grey, RGB or RGBA, not interlaced, no metadata that could turn or animate
it) is proved whole from its own structure without Pillow (``plainpng``), and sent as it is;
anything else is decoded by Pillow. Each source is decoded once; what happens next is decided
once, in a frozen plan (``plan``: an ``EncodePlan`` inside a ``Plan`` that keeps what the
result reports), and ``reencode`` returns the steps it took.

These are blocking functions: the async client runs them in a worker thread, or on its event
loop for image bytes whose header declares a small image (``header``).

Thread safety: calls share no state. Pillow's globals are read (``MAX_IMAGE_PIXELS``), never
written (but for registering ``pillow-heif`` once, at the first HEIF file: see ``formats``), and
the warnings filters are left alone: ``warnings.catch_warnings`` swaps process-wide state and is
not safe while other threads run. So Pillow's own decompression-bomb check still happens inside
``Image.open``: its ``DecompressionBombError``, and its ``DecompressionBombWarning`` when the
application turns warnings into errors, become :class:`InvalidImageError`; under default filters
Pillow prints the warning and the bomb limit here refuses the image right after. A PIL image
passed in must not be used by another thread while it is prepared (loading it reads its file).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

from .._errors import InvalidImageError
from .decode import require_the_end
from .formats import CONTENT_TYPES, canonical_format, describe_unrecognised, sniff
from .integrity import check_whole, download_hint
from .orientation import exif_orientation
from .plainpng import plain_png_size
from .plan import LOSSY_SOURCES, Plan, PrepareOptions, plan_upload
from .reencode import fit, reencode
from .sources import (
    Source,
    array_to_image,
    bomb_limit,
    load,
    open_image,
    path_in_bytes,
    pillow_errors,
    read_file,
    read_path,
    require_size,
    source_label,
)

__all__ = ["ImageSource", "PrepareOptions", "PreparedImage", "prepare_image", "sniff_format"]

_EXTENSIONS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "WEBP": (".webp",)}


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
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        label = source_label(name, f"bytes input ({size:,} bytes)")
        require_size(size, label, options.max_source_bytes)
        data = source.tobytes() if isinstance(source, memoryview) else bytes(source)
        return _prepare_data(data, name, label, options)
    if isinstance(source, str | os.PathLike):
        path = os.fsdecode(source)
        source_name = name or path
        label = source_label(source_name, "empty path")
        data = read_path(path, label, limit=options.max_source_bytes)
        return _prepare_data(data, source_name, label, options)
    if callable(getattr(source, "read", None)):
        file_name = getattr(source, "name", None)
        source_name = name or (
            os.fsdecode(file_name) if isinstance(file_name, str | bytes) else None
        )
        label = source_label(source_name, "file object")
        data = read_file(source, label, limit=options.max_source_bytes)
        return _prepare_data(data, source_name, label, options)
    raise InvalidImageError(
        f"unsupported image source of type {type(source).__name__}: pass a path, bytes, a binary "
        "file, a PIL image or a numpy array"
    )


def sniff_format(data: bytes) -> str | None:
    """The image format of ``data`` from its leading bytes, ``None`` when it is not an image.

    Returns ``"PNG"``, ``"JPEG"`` (multi-picture JPEGs included), ``"WEBP"``, or another Pillow
    format name (``"TIFF"``, ``"GIF"``, ``"BMP"``, ..., ``"AVIF"``, and ``"HEIF"`` whether or not
    the ``heif`` extra is installed). A RIFF file that is not WEBP (WAVE, AVI) is ``None``.
    Nothing is decoded; a format name does not promise that the rest of the file is intact.

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
    sniffed = sniff(data)
    if sniffed is None:
        path = path_in_bytes(data)
        if path is not None:
            raise InvalidImageError(
                f"{label}: not an image: the bytes look like a file path ('{path}'); pass a "
                "path as a str or an os.PathLike to read the file"
            )
        raise InvalidImageError(f"{label}: {describe_unrecognised(data)}")
    digest = hashlib.sha256(data).hexdigest()
    if sniffed == "PNG" and len(data) <= options.max_bytes:
        size = plain_png_size(data, _plain_limit(options))
        if size is not None:
            return _untouched(data, "PNG", size, digest, source_name)
    try:
        return _prepare_decoded(data, sniffed, digest, source_name, label, options)
    except InvalidImageError as exc:
        hint = "" if "zero bytes" in str(exc) else download_hint(data)
        if not hint:
            raise
        raise InvalidImageError(str(exc) + hint) from exc.__cause__


def _untouched(
    data: bytes, fmt: str, size: tuple[int, int], digest: str, source_name: str | None
) -> PreparedImage:
    """``data`` to be uploaded as it is."""
    return PreparedImage(
        data=data,
        format=fmt,
        content_type=CONTENT_TYPES[fmt],
        filename=_filename(source_name, fmt),
        size=size,
        display_size=size,
        orientation=1,
        source_sha256=digest,
        source_name=source_name,
        changes=(),
    )


def _plain_limit(options: PrepareOptions) -> int:
    """The most pixels a plain PNG may have to skip Pillow: above any limit that would make
    the full path downscale, refuse or warn, the full path decides."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return min(
        options.max_pixels,
        bomb_limit(options.bomb_pixels, options.max_pixels),
        options.max_pixels if pillow_limit is None else pillow_limit,
    )


def _prepare_decoded(
    data: bytes,
    sniffed: str,
    digest: str,
    source_name: str | None,
    label: str,
    options: PrepareOptions,
) -> PreparedImage:
    with pillow_errors(label):
        source = Source(data)
        image = open_image(
            source,
            label,
            fmt=sniffed,
            bomb_limit=bomb_limit(options.bomb_pixels, options.max_pixels),
        )
        try:
            fmt = canonical_format(image.format) or sniffed
            size = image.size
            _too_many_pixels(label, size, options)
            animated = fmt != "JPEG" and bool(getattr(image, "is_animated", False))
            target = fit(size, options.max_pixels)
            orientation = load(image, source, fmt, label, target=target)
            # after the decode, so that a short file keeps the decoder's own complaint
            check_whole(data, fmt, image, label)
            require_the_end(data, fmt, label)
            untouched = fmt in CONTENT_TYPES and orientation == 1 and not animated
            if untouched and target is None:
                if len(data) <= options.max_bytes:
                    return _untouched(data, fmt, size, digest, source_name)
                if options.strict:
                    raise InvalidImageError(
                        f"{label}: the file is {len(data):,} bytes, above the limit of "
                        f"{options.max_bytes:,} bytes (strict mode forbids re-encoding)"
                    )
            origin = () if fmt in CONTENT_TYPES else (f"converted-from-{fmt}",)
            plan = plan_upload(
                options,
                label=label,
                source_name=source_name,
                digest=digest,
                size=size,
                orientation=orientation,
                origin=(*origin, "first-frame") if animated else origin,
                lossy_source=fmt in LOSSY_SOURCES,
                recompress=untouched and target is None,
                owned=True,
            )
            return _finish(image, plan)
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
        try:
            image.load()
        except ValueError as exc:  # Pillow's "Operation on closed image"
            raise InvalidImageError(f"{label}: cannot load its pixels ({exc})") from exc
        if image.width == 0 or image.height == 0:
            raise InvalidImageError(
                f"{label}: the image has no pixels ({image.width}x{image.height})"
            )
        _too_many_pixels(label, image.size, options)
        plan = plan_upload(
            options,
            label=label,
            source_name=source_name,
            digest=None,
            size=image.size,
            orientation=exif_orientation(image) if is_file else 1,
            origin=(origin,),
            lossy_source=is_file and canonical_format(image.format) in LOSSY_SOURCES,
            recompress=False,
            owned=owned,
        )
        return _finish(image, plan)


def _finish(image: Image.Image, plan: Plan) -> PreparedImage:
    encoded = reencode(image, plan.encoding)
    return PreparedImage(
        data=encoded.data,
        format=encoded.format,
        content_type=CONTENT_TYPES[encoded.format],
        filename=_filename(plan.source_name, encoded.format),
        size=encoded.size,
        display_size=plan.display,
        orientation=plan.orientation,
        source_sha256=plan.digest or hashlib.sha256(encoded.data).hexdigest(),
        source_name=plan.source_name,
        changes=plan.origin + encoded.changes,
    )


def _filename(source_name: str | None, fmt: str) -> str:
    base = os.path.basename((source_name or "").replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable() and ch != '"')
    stem, extension = os.path.splitext(base)
    if stem and extension.lower() in _EXTENSIONS[fmt]:
        return base
    return (stem or "image") + _EXTENSIONS[fmt][0]
