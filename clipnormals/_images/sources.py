"""Reading image sources: paths, file objects, arrays, and decoding bytes with Pillow.

Everything here either returns what it read or raises :class:`InvalidImageError` naming the
source (``label``), never a Python object's repr. A source larger than the bound
(``PrepareOptions.max_source_bytes``) is refused before it is read: a path by its size on disk,
a file object after at most one byte past the bound. Decoding refuses truncated data whatever
``ImageFile.LOAD_TRUNCATED_IMAGES`` says: :class:`Source` notes an empty read while Pillow
decodes, which is the same fact Pillow reports only while that setting is off, and
``decode.load_tiles`` raises every error a codec reports (``integrity`` checks, after the
decode, what neither can show: files of full length whose end is missing or garbage). No Pillow
global is written (but for the one plugin registration ``formats`` describes) and no warnings
filter is touched, so these functions are safe to call from several threads at once.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, UnidentifiedImageError

from .._errors import InvalidImageError
from .decode import load_tiles, uses_tile_loop
from .formats import require_reader
from .orientation import exif_orientation

__all__ = [
    "Source",
    "array_to_image",
    "bomb_limit",
    "load",
    "open_image",
    "path_in_bytes",
    "pillow_errors",
    "read_file",
    "read_path",
    "require_size",
    "source_label",
    "without_reprs",
]

# Formats whose decoders read the file through Pillow's tile loop, where an empty read means the
# data ended early. JPEG 2000 reads past the end of complete files; ICO decodes a nested copy.
_EOF_CHECKED = frozenset({"PNG", "JPEG", "GIF", "TIFF", "BMP", "PPM", "QOI"})
_READ_PIECE = 16 * 1024 * 1024
_QOI_END_MARKER = 8
# Pillow names a file object by its repr ("<_io.BytesIO object at 0x7f...>"): not a name a
# user knows, so messages say "the data" there (the label names the source).
_REPR = re.compile(r"<[\w.]+ (?:object|name=[^>]*) at 0x[0-9a-fA-F]+>|<_io\.[^>]*>")
_PATH_LIKE = re.compile(r"[^/\\]+\.[A-Za-z0-9]{2,5}")
_NOT_IN_PATHS = re.compile(r'[<>|"*?{}]')


# --- paths, files, arrays ---------------------------------------------------------------------


def source_label(source_name: str | None, fallback: str) -> str:
    """How error messages name a source: its quoted name, else ``fallback``."""
    return f"'{source_name}'" if source_name else fallback


def read_path(path: str, label: str, *, limit: int) -> bytes:
    """The whole content of the regular file at ``path``, refused unread above ``limit`` bytes.

    The size is asked of the file system first, so a huge file costs one ``stat``; a file that
    grows while it is read is still read no further than ``limit`` + 1 bytes.
    """
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidImageError(f"{label}: is a directory, not an image file")
        # a FIFO or a device would block or never end
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImageError(f"{label}: not a regular file")
        if info.st_size > limit:
            raise InvalidImageError(
                f"{label}: the file is {info.st_size:,} bytes, more than the limit of "
                f"{limit:,} bytes (PrepareOptions.max_source_bytes); refused without reading it"
            )
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError as exc:
        hint = " (URLs are not fetched: download the image first)" if "://" in path else ""
        raise InvalidImageError(f"{label}: no such file{hint}") from exc
    except PermissionError as exc:
        raise InvalidImageError(f"{label}: permission denied") from exc
    except OSError as exc:
        raise InvalidImageError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc
    require_size(len(data), label, limit)
    return data


def require_size(size: int, label: str, limit: int) -> None:
    """Refuse a source of more than ``limit`` bytes (``PrepareOptions.max_source_bytes``)."""
    if size > limit:
        raise InvalidImageError(
            f"{label}: holds more than {limit:,} bytes, the limit for a source "
            "(PrepareOptions.max_source_bytes)"
        )


def read_file(file: Any, label: str, *, limit: int) -> bytes:
    """Everything left in a binary file object, from its current position, refused above
    ``limit`` bytes: it is read in pieces, never more than ``limit`` + 1 bytes in all.

    An object whose ``read()`` takes no size (any object with a ``read`` method is accepted)
    is read whole, once, and its result refused when too long.
    """
    if isinstance(file, io.TextIOBase):
        raise InvalidImageError(f"{label}: opened in text mode; open it with 'rb'")
    sized = _takes_a_size(file.read)
    pieces: list[bytes] = []
    total = 0
    while total <= limit:
        try:
            raw = file.read(min(limit + 1 - total, _READ_PIECE)) if sized else file.read()
        except (OSError, ValueError) as exc:
            raise InvalidImageError(f"{label}: cannot read the file object ({exc})") from exc
        if isinstance(raw, str):
            raise InvalidImageError(f"{label}: opened in text mode; open it with 'rb'")
        if raw is None:  # a non-blocking stream with nothing ready
            raise InvalidImageError(f"{label}: the file object has no data ready (non-blocking)")
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise InvalidImageError(f"{label}: read() returned {type(raw).__name__}, not bytes")
        if not raw:
            break
        piece = raw.tobytes() if isinstance(raw, memoryview) else bytes(raw)
        pieces.append(piece)
        total += len(piece)
        if not sized:
            break
    require_size(total, label, limit)
    return b"".join(pieces)


def _takes_a_size(read: Any) -> bool:
    """Whether ``read`` can be called with a size (file objects' can; a duck-typed ``read()``
    may take nothing)."""
    try:
        signature = inspect.signature(read)
    except (TypeError, ValueError):  # a builtin without a signature: a real file's
        return True
    try:
        signature.bind(1)
    except TypeError:
        return False
    return True


def array_to_image(array: npt.NDArray[Any], label: str) -> Image.Image:
    """A PIL image of a uint8, bool or [0, 1] float array shaped (H, W), (H, W, 1|3|4)."""
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


@contextmanager
def pillow_errors(label: str) -> Iterator[None]:
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
        reason = without_reprs(str(exc)) or type(exc).__name__
        raise InvalidImageError(f"{label}: truncated or corrupt image data ({reason})") from exc


def without_reprs(text: str) -> str:
    """``text`` with Python object reprs (``<_io.BytesIO object at 0x...>``) put as "the data".

    Example:
        >>> without_reprs("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d9e40>")
        'cannot identify image file the data'
    """
    return _REPR.sub("the data", text)


def path_in_bytes(data: bytes) -> str | None:
    """The path ``data`` spells, when the bytes are one short line that reads as a file path (a
    name with an extension, or with a directory separator), else ``None``.

    Example:
        >>> path_in_bytes(b"photos/portrait.jpg"), path_in_bytes(b"<p>hello</p>")
        ('photos/portrait.jpg', None)
    """
    if len(data) > 1024 or any(byte < 0x20 for byte in data):
        return None
    text = data.decode("utf-8", "backslashreplace").strip()
    if not text or _NOT_IN_PATHS.search(text):
        return None
    return text if "/" in text or "\\" in text or _PATH_LIKE.fullmatch(text) else None


class Source(io.BytesIO):
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


def bomb_limit(bomb_pixels: int | None, max_pixels: int) -> int:
    """The pixel count above which an image is refused unread (see ``PrepareOptions``)."""
    if bomb_pixels is not None:
        return bomb_pixels
    # read at call time: the application may change or disable Pillow's limit
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return pillow_limit if pillow_limit is not None else 4 * max_pixels


def open_image(source: Source, label: str, *, fmt: str, bomb_limit: int) -> ImageFile.ImageFile:
    """Pillow's lazy image over ``source``, opened as ``fmt`` (what ``formats.sniff`` said).

    An image declaring more than ``bomb_limit`` pixels is refused here, before any decoding.
    """
    require_reader(fmt, label)
    try:
        image = Image.open(source, formats=[fmt])
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"{label}: starts like {fmt} but its header cannot be read (truncated or corrupt)"
        ) from exc
    width, height = image.size
    if width * height > bomb_limit:
        image.close()
        raise InvalidImageError(
            f"{label}: declares {width}x{height} = {width * height:,} pixels, above the "
            f"decompression-bomb limit of {bomb_limit:,}; refused before decoding"
        )
    return image


def load(
    image: ImageFile.ImageFile,
    source: Source,
    fmt: str,
    label: str,
    *,
    target: tuple[int, int] | None,
) -> int:
    """Decode ``image`` completely and return its EXIF orientation (1 when none).

    ``target`` is the size the image will be resampled to, if any: a JPEG is then decoded by
    libjpeg at 1/2, 1/4 or 1/8 scale when that still leaves at least ``target`` pixels, which
    saves most of the decoding of a big photo.
    """
    # PNG may keep its EXIF after the pixels, so only JPEG is asked before load()
    orientation = exif_orientation(image) if fmt == "JPEG" else 1
    if target is not None and fmt == "JPEG":
        image.draft(image.mode, target)
    source.ran_out = False
    if uses_tile_loop(image, fmt):
        load_tiles(image)  # a codec's error is raised whatever LOAD_TRUNCATED_IMAGES says
    else:
        image.load()
    if source.ran_out and fmt in _EOF_CHECKED:
        raise InvalidImageError(f"{label}: truncated image data (the file ends early)")
    if fmt == "QOI":
        _require_qoi_end(source, label)
    return orientation if fmt == "JPEG" else exif_orientation(image)


def _require_qoi_end(source: Source, label: str) -> None:
    """QOI's decoder reads the file itself and stops at the last pixel, which must be right
    before the 8-byte end marker (``integrity`` checks the marker is there): garbage that
    happens to decode (a run op where a pixel op was) ends the picture elsewhere."""
    left = len(source.getbuffer()) - source.tell() - _QOI_END_MARKER
    if left:
        where = "before" if left > 0 else "after"
        raise InvalidImageError(
            f"{label}: truncated or corrupt QOI data (the picture ends {abs(left):,} bytes "
            f"{where} its end marker)"
        )
