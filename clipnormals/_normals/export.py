"""Serialising normal maps: numpy files and 16-bit PNG normal maps.

Pillow reads 16-bit RGB PNGs but cannot write them, so :func:`png16_bytes` writes the few PNG
chunks itself (IHDR, IDAT, IEND) with zlib and numpy.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["ExportFormat", "format_for_path", "npy_bytes", "npz_bytes", "png16_bytes"]

ExportFormat = Literal["jpeg", "npy", "npz", "png16"]
_SUFFIX_FORMATS: dict[str, ExportFormat] = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".npy": "npy",
    ".npz": "npz",
    ".png": "png16",
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BYTES_PER_PIXEL = 6  # RGB, 16 bits per channel


def format_for_path(path: Path) -> ExportFormat:
    """The export format a file name asks for: .jpg/.jpeg, .npy, .npz or .png (16-bit)."""
    try:
        return _SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot tell the format from {path.name!r}; use .jpg, .npy, .npz or .png, or pass"
            " format="
        ) from None


def npy_bytes(array: NDArray[np.generic]) -> bytes:
    """An array as the bytes of a ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(**arrays: NDArray[np.generic]) -> bytes:
    """Named arrays as the bytes of a compressed ``.npz`` file."""
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def png16_bytes(rgb16: NDArray[np.uint16], *, level: int = 6) -> bytes:
    """A (H, W, 3) uint16 image as a 16-bit-per-channel RGB PNG.

    Every row uses the "Sub" filter (difference to the pixel on the left), which suits smooth
    normal maps and is computed for the whole image at once.

    Example:
        >>> data = png16_bytes(np.zeros((2, 3, 3), np.uint16))
        >>> data[:8] == _PNG_SIGNATURE, data[12:16]
        (True, b'IHDR')
    """
    if rgb16.ndim != 3 or rgb16.shape[2] != 3:
        raise ValueError(f"expected a (H, W, 3) array, got shape {rgb16.shape}")
    height, width = rgb16.shape[:2]
    raw = np.ascontiguousarray(rgb16, dtype=">u2").view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, raw.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub
    filtered[:, 1 : 1 + _BYTES_PER_PIXEL] = raw[:, :_BYTES_PER_PIXEL]
    # uint8 arithmetic wraps modulo 256, exactly as the PNG filter requires.
    np.subtract(
        raw[:, _BYTES_PER_PIXEL:],
        raw[:, :-_BYTES_PER_PIXEL],
        out=filtered[:, 1 + _BYTES_PER_PIXEL :],
    )
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
