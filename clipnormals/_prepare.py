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
import io
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, UnidentifiedImageError

from ._exceptions import InvalidImageError

__all__ = ["ImageSource", "PrepareOptions", "PreparedImage", "prepare_image", "sniff_format"]

_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_EXTENSIONS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "WEBP": (".webp",)}
# Only formats with an unambiguous signature: Pillow also reads formats recognised by weak or no
# magic (TGA, PCX, DIB, XBM, ...), which would let random bytes or a C header pass as an image.
_READABLE = (
    "PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "ICO", "ICNS", "PPM", "QOI", "PSD",
    "JPEG2000", "AVIF", "HEIF",
)  # fmt: skip
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Formats whose decoders read the file through Pillow's tile loop, where an empty read means the
# data ended early. JPEG 2000 reads past the end of complete files; ICO decodes a nested copy.
_EOF_CHECKED = frozenset({"PNG", "JPEG", "GIF", "TIFF", "BMP", "PPM", "QOI"})
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_JPEG_QUALITIES = (95, 90, 85, 80)
# On a 24 MP photo zlib level 1 takes ~1 s, level 6 ~4 s and optimize=True ~30 s, for files of
# 16.5, 13.0 and 12.2 MB: the fast level is tried first, and optimize only when it may fit.
_PNG_FAST_LEVEL = 1
_OPTIMIZE_MARGIN = 1.4
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    """How :func:`prepare_image` treats images the API would refuse as they are.

    Attributes:
        strict: raise :class:`InvalidImageError` instead of downscaling or of re-encoding lossily
            to meet the limits. Lossless changes (EXIF orientation, conversion to PNG) still
            happen; a JPEG that must be rotated may become a JPEG at quality 95.
        max_pixels: the API's limit on width * height.
        max_bytes: the API's limit on the file size.
        reencode_jpeg_as: the format for a JPEG that must be re-encoded (rotated, downscaled):
            ``"PNG"`` is lossless; ``"JPEG"`` (quality 95) makes uploads about 5 times smaller
            and encodes far faster, at a small generation loss on a source that was lossy
            already.
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
    reencode_jpeg_as: Literal["PNG", "JPEG"] = "PNG"
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
        label = _label(source_name, "PIL image")
        is_file = isinstance(source, ImageFile.ImageFile)
        return _prepare_pixels(
            source, label, source_name, options, "encoded-from-PIL", is_file=is_file, owned=False
        )
    if isinstance(source, np.ndarray):
        label = _label(name, "numpy array")
        image = _array_to_image(source, label)
        return _prepare_pixels(
            image, label, name, options, "encoded-from-array", is_file=False, owned=True
        )
    if isinstance(source, bytes | bytearray | memoryview):
        data = source.tobytes() if isinstance(source, memoryview) else bytes(source)
        return _prepare_data(data, name, _label(name, "image bytes"), options)
    if isinstance(source, str | os.PathLike):
        path = os.fsdecode(source)
        source_name = name or path
        label = _label(source_name, "empty path")
        return _prepare_data(_read_path(path, label), source_name, label, options)
    if callable(getattr(source, "read", None)):
        file_name = getattr(source, "name", None)
        source_name = name or (
            os.fsdecode(file_name) if isinstance(file_name, str | bytes) else None
        )
        label = _label(source_name, "file object")
        return _prepare_data(_read_file(source, label), source_name, label, options)
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
    head = bytes(data[:16])
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if not head:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=_readable_formats()) as image:
            return _canonical(image.format)
    except MemoryError:
        raise
    except Exception:
        return None


# --- sources ----------------------------------------------------------------------------------


def _label(source_name: str | None, fallback: str) -> str:
    return f"'{source_name}'" if source_name else fallback


def _read_path(path: str, label: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidImageError(f"{label}: is a directory, not an image file")
        # a FIFO or a device would block or never end
        if not stat.S_ISREG(mode):
            raise InvalidImageError(f"{label}: not a regular file")
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError as exc:
        hint = " (URLs are not fetched: download the image first)" if "://" in path else ""
        raise InvalidImageError(f"{label}: no such file{hint}") from exc
    except PermissionError as exc:
        raise InvalidImageError(f"{label}: permission denied") from exc
    except OSError as exc:
        raise InvalidImageError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc


def _read_file(file: Any, label: str) -> bytes:
    if isinstance(file, io.TextIOBase):
        raise InvalidImageError(f"{label}: opened in text mode; open it with 'rb'")
    try:
        raw = file.read()
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"{label}: cannot read the file object ({exc})") from exc
    if isinstance(raw, str):
        raise InvalidImageError(f"{label}: opened in text mode; open it with 'rb'")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidImageError(f"{label}: read() returned {type(raw).__name__}, not bytes")
    return raw.tobytes() if isinstance(raw, memoryview) else bytes(raw)


def _array_to_image(array: npt.NDArray[Any], label: str) -> Image.Image:
    shape = array.shape
    if array.size == 0:
        raise InvalidImageError(f"{label}: the array is empty (shape {shape})")
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (3, 4))):
        raise InvalidImageError(
            f"{label}: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {shape}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InvalidImageError(f"{label}: the float array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InvalidImageError(
                f"{label}: float arrays must hold values in [0, 1], got [{low:g}, {high:g}]"
            )
        array = np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InvalidImageError(
            f"{label}: unsupported dtype {array.dtype}: use uint8, bool, or float in [0, 1]"
        )
    return Image.fromarray(np.ascontiguousarray(array))


# --- decoding ---------------------------------------------------------------------------------


def _readable_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format no plugin opens (AVIF without libavif, HEIF until
    # the application registers pillow-heif), so the list is filtered on every call
    Image.init()
    return tuple(fmt for fmt in _READABLE if fmt in Image.OPEN)


def _canonical(fmt: str | None) -> str | None:
    # a JPEG carrying extra pictures (MPF, common from phones) is still a plain JPEG upload
    return "JPEG" if fmt == "MPO" else fmt


def _bomb_limit(options: PrepareOptions) -> int:
    if options.bomb_pixels is not None:
        return options.bomb_pixels
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return pillow_limit if pillow_limit is not None else 4 * options.max_pixels


@contextmanager
def _pillow_errors(label: str) -> Iterator[None]:
    """Map whatever Pillow raises while reading an image to InvalidImageError."""
    try:
        yield
    except (InvalidImageError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(
            f"{label}: refused as a possible decompression bomb ({exc})"
        ) from exc
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidImageError(f"{label}: truncated or corrupt image data ({reason})") from exc


class _Source(io.BytesIO):
    """The bytes Pillow decodes, noting any read that found nothing left.

    Pillow reports a truncated file only while ``ImageFile.LOAD_TRUNCATED_IMAGES`` is off, and
    applications often turn it on: an empty read while decoding is the same fact, seen
    whatever that setting is.
    """

    ran_out = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size != 0 and not chunk:
            self.ran_out = True
        return chunk


def _open(source: _Source, label: str) -> ImageFile.ImageFile:
    try:
        return Image.open(source, formats=_readable_formats())
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{label}: {_unrecognised(source.getvalue())}") from exc


def _unrecognised(data: bytes) -> str:
    head = data[:512].lstrip()
    others = ", ".join(fmt for fmt in _readable_formats() if fmt not in _CONTENT_TYPES)
    supported = f"PNG, JPEG, WEBP, or a format converted to PNG: {others}"
    if head.startswith(b"<"):
        return f"not an image: the data looks like HTML or XML (supported: {supported})"
    text = head.decode("utf-8", errors="replace")
    if sum(ch.isprintable() or ch.isspace() for ch in text) >= 0.95 * len(text):
        return f"not an image: the data looks like text (supported: {supported})"
    return f"not a recognised image format (supported: {supported})"


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception:
        # an unreadable EXIF block cannot tell a viewer to rotate either
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation >= 5 else size


def _fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int] | None:
    """The largest size of the same aspect within max_pixels, None when size already fits."""
    width, height = size
    if width * height <= max_pixels:
        return None
    ratio = math.sqrt(max_pixels / (width * height))
    new_width = max(1, int(width * ratio))
    new_height = max(1, min(int(height * ratio), max_pixels // new_width))
    return min(new_width, max(1, max_pixels // new_height)), new_height


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
    with _pillow_errors(label):
        source = _Source(data)
        image = _open(source, label)
        try:
            fmt = _canonical(image.format) or "unknown"
            size = image.size
            limit = _bomb_limit(options)
            if size[0] * size[1] > limit:
                raise InvalidImageError(
                    f"{label}: declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, above "
                    f"the decompression-bomb limit of {limit:,}; refused before decoding"
                )
            _too_many_pixels(label, size, options)
            animated = fmt != "JPEG" and bool(getattr(image, "is_animated", False))
            target = _fit(size, options.max_pixels)
            # PNG may keep its EXIF after the pixels, so only JPEG is asked before load()
            orientation = _orientation(image) if fmt == "JPEG" else 1
            if target is not None and fmt == "JPEG":
                # let libjpeg decode at 1/2, 1/4 or 1/8 scale rather than the full image
                image.draft(image.mode, target)
            source.ran_out = False
            image.load()
            if source.ran_out and fmt in _EOF_CHECKED:
                raise InvalidImageError(f"{label}: truncated image data (the file ends early)")
            if fmt != "JPEG":
                orientation = _orientation(image)
            display = _oriented(size, orientation)
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
    with _pillow_errors(label):
        image.load()
        if image.width == 0 or image.height == 0:
            raise InvalidImageError(
                f"{label}: the image has no pixels ({image.width}x{image.height})"
            )
        _too_many_pixels(label, image.size, options)
        orientation = _orientation(image) if is_file else 1
        return _finish(
            image,
            label=label,
            source_name=source_name,
            options=options,
            display=_oriented(image.size, orientation),
            orientation=orientation,
            target=_fit(image.size, options.max_pixels),
            changes=[origin],
            digest=None,
            size_only=False,
            from_jpeg=is_file and image.format in ("JPEG", "MPO"),
            owned=owned,
        )


# --- transforming and encoding ----------------------------------------------------------------


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
    pixels, icc = _normalise_mode(image, changes, resizing=target is not None)
    if target is not None:
        pixels = pixels.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        changes.append("downscaled")
    if orientation != 1:
        pixels = pixels.transpose(_TRANSPOSE[orientation])
        changes.append("exif-orientation")
    if pixels is image and not owned:
        # saving sets attributes on the image, which must not happen to the caller's object
        pixels = image.copy()
    if size_only:
        changes.append("re-encoded")
    # a JPEG that is only too big never shrinks by becoming a PNG
    lossless = not from_jpeg or (options.reencode_jpeg_as == "PNG" and not size_only)
    data, fmt = _encode(
        pixels, icc, changes, label, options, lossless=lossless, jpeg_in_strict=from_jpeg
    )
    return PreparedImage(
        data=data,
        format=fmt,
        content_type=_CONTENT_TYPES[fmt],
        filename=_filename(source_name, fmt),
        size=pixels.size,
        display_size=display,
        orientation=orientation,
        source_sha256=digest or hashlib.sha256(data).hexdigest(),
        source_name=source_name,
        changes=tuple(changes),
    )


def _normalise_mode(
    image: Image.Image, changes: list[str], *, resizing: bool
) -> tuple[Image.Image, bytes | None]:
    """Bring any mode to one PNG stores and the API reads: 1, P, L, LA, RGB or RGBA.

    Returns the image and the ICC profile still valid for it. 16-bit and 32-bit integer data
    is taken as 16-bit and scaled to 8 bits; float data in [0, 1] is scaled, other values
    clipped to [0, 255].
    """
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    transparent = image.has_transparency_data
    if mode in ("LA", "RGBA") or (mode in ("L", "RGB") and not (resizing and transparent)):
        return image, icc
    # bilevel and palette images only need widening when they are resampled
    if mode in ("1", "P") and not resizing and not transparent:
        return image, icc
    family = "grey" if mode in _GREY_MODES or mode.startswith("I;16") else "rgb"
    if mode.startswith("I"):
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        converted = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        converted = Image.fromarray(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))
    elif transparent:
        converted = image.convert("LA" if mode in ("LA", "La") else "RGBA")
    else:
        converted = image.convert("L" if family == "grey" else "RGB")
    if family == "rgb" and mode not in _RGB_MODES:
        icc = None  # a CMYK or Lab profile does not describe RGB pixels
    changes.append(f"converted-mode-{mode}")
    return converted, icc


def _encode(
    image: Image.Image,
    icc: bytes | None,
    changes: list[str],
    label: str,
    options: PrepareOptions,
    *,
    lossless: bool,
    jpeg_in_strict: bool,
) -> tuple[bytes, str]:
    """PNG when it fits max_bytes, else JPEG at falling quality; strict mode stops earlier."""
    limit = options.max_bytes
    data = b""
    if lossless:
        data = _save(image, "PNG", icc_profile=icc, compress_level=_PNG_FAST_LEVEL)
        if len(data) <= limit:
            return data, "PNG"
        if len(data) <= limit * _OPTIMIZE_MARGIN:
            data = _save(image, "PNG", icc_profile=icc, optimize=True)
            if len(data) <= limit:
                _note(changes, "re-encoded")
                return data, "PNG"
        if options.strict and not jpeg_in_strict:
            raise InvalidImageError(
                f"{label}: {len(data):,} bytes as PNG, above the limit of {limit:,} bytes "
                "(strict mode forbids lossy re-encoding)"
            )
    flat = _flatten_for_jpeg(image, changes)
    qualities = _JPEG_QUALITIES[:1] if options.strict else _JPEG_QUALITIES
    for quality in qualities:
        data = _save(flat, "JPEG", icc_profile=icc, quality=quality)
        if len(data) <= limit:
            _note(changes, "re-encoded")
            return data, "JPEG"
    raise InvalidImageError(
        f"{label}: cannot fit under the limit of {limit:,} bytes: {len(data):,} bytes even as "
        f"JPEG quality {qualities[-1]}"
        + (" (strict mode forbids lower quality)" if options.strict else "")
    )


def _note(changes: list[str], change: str) -> None:
    if change not in changes:
        changes.append(change)


def _flatten_for_jpeg(image: Image.Image, changes: list[str]) -> Image.Image:
    if image.mode in ("L", "RGB") and not image.has_transparency_data:
        return image
    if image.has_transparency_data:
        grey = image.mode in ("L", "LA")
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(backdrop, image.convert("RGBA"))
        changes.append("alpha-flattened")
        return flat.convert("L" if grey else "RGB")
    return image.convert("L" if image.mode == "1" else "RGB")


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    # no exif= is passed: the output carries no orientation tag (nor any other EXIF)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _filename(source_name: str | None, fmt: str) -> str:
    base = os.path.basename((source_name or "").replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable() and ch != '"')
    stem, extension = os.path.splitext(base)
    if stem and extension.lower() in _EXTENSIONS[fmt]:
        return base
    return (stem or "image") + _EXTENSIONS[fmt][0]
