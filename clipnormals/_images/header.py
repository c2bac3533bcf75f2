"""The pixel count an image's header declares, read without Pillow, to size the work ahead.

The async client prepares an upload on its event loop when the work is known to be small (a few
kilobytes of bytes whose header declares a few tens of thousands of pixels), and in a worker
thread otherwise: handing a 400-byte PNG to a thread costs more than checking it. The size must
come from the header, not the byte count, because a small file may declare a huge image
(a 5,000 x 5,000 PNG of one colour compresses to a few kilobytes).

Only PNG (the ``IHDR`` chunk, which must come first) and JPEG (the first start-of-frame marker)
are read here; anything else, and any header this reader does not follow, gives ``None``, and
the caller takes the thread. Nothing here validates the image: :func:`prepare_image` does that
wherever it runs, and a header that lies about its size is refused there.
"""

from __future__ import annotations

__all__ = ["declared_pixels", "small_enough_inline"]

#: Byte and pixel bounds under which preparing costs well under a millisecond of CPU (a full
#: decode of 65,536 pixels, the integrity checks, a hash): cheaper on the loop than a thread hop.
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_PIXELS = 256 * 256

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers: 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length: TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def declared_pixels(data: bytes | bytearray | memoryview) -> int | None:
    """Width times height as the PNG or JPEG header declares it; ``None`` when ``data`` is
    neither, or its header cannot be followed.

    Example:
        >>> declared_pixels(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR\\x00\\x00\\x00\\x60"
        ...                 b"\\x00\\x00\\x00\\x78")
        11520
        >>> declared_pixels(b"GIF89a") is None
        True
    """
    head = bytes(data[:8])
    if head == _PNG_SIGNATURE:
        if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if head[:2] == b"\xff\xd8":
        return _jpeg_pixels(data)
    return None


def _jpeg_pixels(data: bytes | bytearray | memoryview) -> int | None:
    end = len(data)
    pos = 2
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        if marker in _SOF:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width * height
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def small_enough_inline(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` is at most :data:`INLINE_MAX_BYTES` and its header declares at most
    :data:`INLINE_MAX_PIXELS`: preparing it is cheap enough to do without a worker thread."""
    if len(data) > INLINE_MAX_BYTES:
        return False
    pixels = declared_pixels(data)
    return pixels is not None and 0 < pixels <= INLINE_MAX_PIXELS
