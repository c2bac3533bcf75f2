"""EXIF orientation: the one table from the tag's value to what a viewer does to the pixels.

EXIF 2.32, tag 0x0112 ``Orientation``: 1 is upright; 2..8 say how the stored rows and columns
relate to what the camera saw. :data:`EXIF_TO_DISPLAY` gives, for each value, the Pillow
transpose that turns the stored pixels into what a viewer shows (the same table as
``PIL.ImageOps.exif_transpose``; ``ROTATE_90`` is counter-clockwise). Preparation turns images
upright with it before upload, the normal maps are turned back with it (``clipnormals._normals``
maps each transpose to the same move of a numpy array and of its vectors), and contact sheets
show photos with it. Values outside 1..8, and unreadable EXIF blocks, count as 1.
"""

from __future__ import annotations

from typing import Final

from PIL import Image

__all__ = [
    "EXIF_TO_DISPLAY",
    "ORIENTATION_TAG",
    "exif_orientation",
    "inverse",
    "oriented_size",
    "upright",
]

ORIENTATION_TAG: Final = 0x0112
#: EXIF orientation -> the transpose that turns the stored pixels into what a viewer shows.
EXIF_TO_DISPLAY: Final[dict[int, Image.Transpose | None]] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def inverse(transpose: Image.Transpose) -> Image.Transpose:
    """The transpose that undoes ``transpose`` (quarter turns swap; the rest undo themselves).

    Example:
        >>> inverse(Image.Transpose.ROTATE_90).name, inverse(Image.Transpose.TRANSPOSE).name
        ('ROTATE_270', 'TRANSPOSE')
    """
    if transpose is Image.Transpose.ROTATE_90:
        return Image.Transpose.ROTATE_270
    if transpose is Image.Transpose.ROTATE_270:
        return Image.Transpose.ROTATE_90
    return transpose


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) a viewer applies to ``image``; 1 when none or unreadable."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception:
        # an unreadable EXIF block cannot tell a viewer to rotate either
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The (width, height) a viewer shows for a stored ``size`` with this EXIF orientation.

    Example:
        >>> oriented_size((4000, 3000), 6), oriented_size((4000, 3000), 3)
        ((3000, 4000), (4000, 3000))
    """
    return (size[1], size[0]) if orientation >= 5 else size


def upright(image: Image.Image, orientation: int | None = None) -> Image.Image:
    """``image`` as a viewer shows it: ``orientation`` (read from its EXIF when ``None``)
    applied. An upright image is returned as it is, not copied."""
    value = exif_orientation(image) if orientation is None else orientation
    transpose = EXIF_TO_DISPLAY.get(value)
    return image if transpose is None else image.transpose(transpose)
