"""Decoding that reports what Pillow lets pass: a strict tile loop, and decoders that must need
the end of their data.

**The tile loop.** Pillow's ``ImageFile.load`` feeds each tile of a file to a codec and, while
``ImageFile.LOAD_TRUNCATED_IMAGES`` is on, keeps whatever the codec made of a stream it found
broken: an LZW code out of range in a GIF, an error from openjpeg, a corrupt RLE run. So plugins
that decode through that loop (PNG, JPEG, GIF, BMP, PPM, QOI, PSD, JPEG 2000) are decoded here by
:func:`load_tiles`, the same loop over the same codecs (the plugin interface that Pillow's
"writing your own image plugin" guide documents: ``tile``, ``load_prepare``, ``load_read``,
``load_seek``, ``load_end``, and ``Image._getdecoder`` as ``ImageFile.Parser`` uses it), which
raises whenever a codec reports an error or the data runs out, whatever that setting says. The
setting is only read by Pillow, never written, so nothing changes for other threads. Plugins
with a ``load`` of their own (WEBP, AVIF, HEIF, TIFF, ICO, ICNS) are loaded through it.

**Decoders that must need the end of their data.** libwebp and dav1d (AVIF) decode garbage
without complaint when it happens to form a valid stream, which random bytes, a run of ``0xFF``
or a repeat of earlier data often do. What they cannot fake is the length: a codec decoding
garbage stops wherever the picture happens to be complete, almost never at the end of the data.
Files that encoders write need all their bytes (libwebp's leave at most a few bytes of the
image chunk unread, aom's AVIF none; ``tests/test_half_garbage.py`` checks whole files of
both at several settings and pictures). So
:func:`require_the_end` decodes a second copy whose image data is :data:`CUT` bytes shorter, the
container's sizes adjusted to match (an AV1 padding OBU takes the place of the bytes removed):
if that copy still decodes, the file's end is not part of its picture and it is refused. Files
whose second half was replaced by random bytes, ``0xFF`` or a repeat of the first half were all
caught by this where the full decode passed (``benchmarks/garbage.py``). It costs a
second decode of each WEBP and AVIF file. HEIF is not tested so: libde265 decodes a shortened
stream as calmly as a whole one (measured), so there the structure is all there is (``bmff``).
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable
from typing import Final, Protocol

from PIL import Image, ImageFile

from .._errors import InvalidImageError
from . import bmff
from .codestreams import Broken

__all__ = ["CUT", "load_tiles", "require_the_end", "uses_tile_loop"]

#: Bytes removed from the end of the image data in the copy that must not decode. libwebp's
#: files leave at most 3 bytes unread, aom's none: 32 leaves a margin for other encoders.
CUT: Final = 32
_WEBP_STILL = frozenset({b"VP8 ", b"VP8L"})
_AV1_TILE_OBUS = frozenset({bmff.OBU_TILE_GROUP, bmff.OBU_FRAME})


# --- the tile loop ----------------------------------------------------------------------------


def uses_tile_loop(image: ImageFile.ImageFile, fmt: str) -> bool:
    """Whether ``image`` decodes through ``ImageFile.load``'s tile loop (then :func:`load_tiles`
    decodes it).

    JPEG 2000's own ``load`` only scales the tile when ``reduce`` is set, which is never done
    here.
    """
    return fmt == "JPEG2000" or type(image).load is ImageFile.ImageFile.load


def load_tiles(image: ImageFile.ImageFile) -> None:
    """Decode every tile of ``image`` as ``ImageFile.load`` does, raising on any codec error.

    Raises:
        OSError: a codec reported an error, or the data ended before a codec was done.
    """
    if not image.tile:
        image.load()
        return
    image.load_prepare()
    fp = image.fp
    if fp is None:
        raise OSError("the image's file is closed")
    read = getattr(image, "load_read", fp.read)
    seek = getattr(image, "load_seek", fp.seek)
    # in file order, consecutive tiles that differ only by their offset decoded once (the last)
    ordered = sorted(image.tile, key=lambda tile: tile[2])
    tiles = [
        list(group)[-1]
        for _, group in itertools.groupby(ordered, lambda tile: (tile[0], tile[1], tile[3]))
    ]
    prefix = getattr(image, "tile_prefix", b"")
    for index, (name, extents, offset, args) in enumerate(tiles):
        seek(offset)
        decoder = Image._getdecoder(image.mode, name, args, image.decoderconfig)
        try:
            decoder.setimage(image.im, extents)
            if decoder.pulls_fd:
                decoder.setfd(fp)
                status = decoder.decode(b"")[1]
            else:
                following = tiles[index + 1][2] if index + 1 < len(tiles) else offset
                status = _feed(decoder, read, prefix, image.decodermaxblock, following - offset)
        finally:
            decoder.cleanup()
        if status < 0:
            reason = ImageFile.ERRORS.get(status, f"error {status}")
            raise OSError(f"the {name} decoder reports: {reason}")
    image.tile = []
    image.readonly = 0
    image.load_end()
    image.fp = None
    Image.Image.load(image)


class _Decoder(Protocol):
    def decode(self, buffer: bytes, /) -> tuple[int, int]: ...


def _feed(
    decoder: _Decoder,
    read: Callable[[int], bytes],
    prefix: bytes,
    block: int,
    span: int,
) -> int:
    """Feed one tile's data to ``decoder`` until it is done; its last status."""
    size = span if span > 0 else block
    buffer = prefix
    while True:
        try:
            chunk = read(size)
        except (IndexError, struct.error) as exc:  # how PNG's reader reports a cut chunk
            raise OSError("image file is truncated") from exc
        if not chunk:
            raise OSError(f"image file is truncated ({len(buffer)} bytes not processed)")
        buffer += chunk
        consumed, status = decoder.decode(buffer)
        if consumed < 0:
            return int(status)
        buffer = buffer[consumed:]


# --- decoders that must need the end of their data --------------------------------------------


def require_the_end(data: bytes, fmt: str, label: str) -> None:
    """Refuse ``data`` when its picture still decodes with the last :data:`CUT` bytes of its
    image data removed (WEBP still images and AVIF; other formats pass).

    Raises:
        InvalidImageError: the copy decoded: the end of the file is not part of the picture.
    """
    shortened = _shortened(data, fmt)
    if shortened is None or not _decodes(shortened, fmt):
        return
    raise InvalidImageError(
        f"{label}: truncated or corrupt {fmt} data (the picture is complete {CUT} bytes before "
        "the end of its data: the decoder did not need the rest, as when the end of the file "
        "holds something other than the picture, e.g. after a download that went wrong)"
    )


def _decodes(data: bytes, fmt: str) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            image.load()
    except MemoryError:
        raise
    except Exception:
        return False
    return True


def _shortened(data: bytes, fmt: str) -> bytes | None:
    if fmt == "WEBP":
        return _shortened_webp(data)
    if fmt == "AVIF":
        return _shortened_avif(data)
    return None


def _shortened_webp(data: bytes) -> bytes | None:
    """The file with its one VP8/VP8L chunk :data:`CUT` bytes shorter; ``None`` for animations
    (their first frame, the one uploaded, is not the end of the file)."""
    declared = min(len(data), int.from_bytes(data[4:8], "little") + 8)
    pos = 12
    found: tuple[bytes, int, int] | None = None
    while pos + 8 <= declared:
        kind = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if kind == b"ANMF":
            return None
        if kind in _WEBP_STILL:
            found = (kind, pos, length)
        pos += 8 + length + (length & 1)
    if found is None or found[2] <= 2 * CUT:
        return None
    kind, start, length = found
    kept = length - CUT
    chunk = kind + kept.to_bytes(4, "little") + data[start + 8 : start + 8 + kept]
    body = data[12:start] + chunk + b"\x00" * (kept & 1) + data[start + 8 + length + (length & 1) :]
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body


def _shortened_avif(data: bytes) -> bytes | None:
    """The file with the last tile OBU of the coded item stored last :data:`CUT` bytes shorter
    and a padding OBU in the bytes freed, so that every size around it stays true."""
    try:
        extent = bmff.last_coded_extent(data, b"av01")
        if extent is None:
            return None
        start, length = extent
        obus = bmff.av1_obus(data[start : start + length])
    except Broken:
        return None
    if not obus:
        return None
    last = obus[-1]
    if last.kind not in _AV1_TILE_OBUS or not last.sized or last.payload_size <= 2 * CUT:
        return None
    header = data[start + last.offset : start + last.offset + last.header_size]
    size_field = bmff.leb128(last.payload_size - CUT)
    payload_at = start + last.payload_offset
    kept = header + size_field + data[payload_at : payload_at + last.payload_size - CUT]
    freed = last.end - last.offset - len(kept)
    rebuilt = data[: start + last.offset] + kept + bmff.av1_padding(freed)
    return rebuilt + data[start + last.end :]
