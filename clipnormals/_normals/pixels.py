"""An RGB picture's pixels as a numpy array, without the copies ``np.asarray`` makes."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["rgb_array"]


def rgb_array(image: Image.Image) -> NDArray[np.uint8]:
    """An RGB image's pixels as a new uint8 (H, W, 3) array, unpacked straight into it.

    ``np.asarray(image)`` goes through ``tobytes()``, which keeps every unpacked chunk and
    then joins them: two more copies of the array at the peak, and the join writes into fresh
    pages. Here Pillow's raw encoder (what ``tobytes`` runs) hands over one chunk at a time,
    copied into place; the same bytes, in less memory and time.

    Example:
        >>> rgb_array(Image.new("RGB", (3, 2), (1, 2, 3))).shape
        (2, 3, 3)
    """
    width, height = image.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    flat = out.reshape(-1)
    try:
        encoder = Image._getencoder("RGB", "raw", "RGB")
    except AttributeError:  # pragma: no cover - a Pillow without it: the plain way
        return np.asarray(image, dtype=np.uint8)
    errcode = 0
    filled = 0
    try:
        encoder.setimage(image.im, (0, 0, width, height))
        chunk_size = max(1 << 16, width * 4)  # as tobytes asks (see Pillow's RawEncode.c)
        while not errcode:
            _, errcode, chunk = encoder.encode(chunk_size)
            flat[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
    finally:
        encoder.cleanup()
    if errcode < 0 or filled != flat.size:
        raise ValueError(f"unpacking the pixels failed (encoder error {errcode})")
    return out
