"""The decisions of preparation, made once per image: what will be done and what it reports.

:class:`PrepareOptions` (public as ``clipnormals.PrepareOptions``) are the user's rules;
:func:`plan_upload` turns them and what is known of a decoded source (its size, EXIF
orientation, whether it came through a lossy codec, whether it is only too big) into a frozen
:class:`Plan`: the :class:`~clipnormals._images.reencode.EncodePlan` that ``reencode`` follows,
and the facts the :class:`~clipnormals.PreparedImage` reports (display size, orientation,
source digest, the changes made before re-encoding). No flag travels further than this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from .orientation import oriented_size
from .reencode import JPEG_QUALITIES, EncodePlan, fit

__all__ = ["LOSSY_SOURCES", "Plan", "PrepareOptions", "plan_upload"]


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    """How :func:`~clipnormals.images.prepare_image` treats images the API would refuse as they are.

    Attributes:
        strict: raise :class:`InvalidImageError` instead of downscaling or of re-encoding lossily
            to meet the limits. Lossless changes (EXIF orientation, conversion to PNG) still
            happen; a JPEG that must be rotated may become a JPEG at quality 95.
        max_pixels: the API's limit on width * height, inclusive (api-contract: "at most 25
            megapixels (width x height <= 25,000,000)").
        max_bytes: the API's limit on the file size in bytes, inclusive (api-contract: "at
            most 30 MB"; decimal, the smaller of the byte readings of "30 MB": see
            docs/reference/limits.md).
        reencode_jpeg_as: the format for a JPEG that must be re-encoded (rotated, downscaled,
            or passed as a PIL image), and for HEIF and AVIF sources, which are lossy photos
            too. ``"JPEG"``, the default, encodes at quality 95 (lower
            only to fit ``max_bytes``): an EXIF-rotated 24 MP phone photo becomes about 2.4 MB
            in 0.05 s, where a PNG is about 16 MB and takes 1.3 s. At the quota's one request
            a second, keeping pace takes a 2.4 MB/s uplink rather than 16 MB/s, for a small
            generation loss on a source that was lossy already. ``"PNG"`` is lossless.
        bomb_pixels: images declaring more pixels are refused before decoding. ``None`` means
            Pillow's ``Image.MAX_IMAGE_PIXELS`` read at call time (89,478,485 unless the
            application changed it), or 4 * ``max_pixels`` when the application disabled it.
            Pillow's own check in ``Image.open`` applies as well.
        max_source_bytes: a source of more bytes than this is refused with
            :class:`InvalidImageError` before it is decoded: a path by the size the file system
            gives, before it is read; a file object once it has given one byte more; bytes by their
            length. The default, 256,000,000 bytes, is above the largest plausible source of a
            25-megapixel picture: an uncompressed 16-bit RGBA TIFF, 8 bytes a pixel, 200,000,000
            bytes, with room for its metadata and previews. Pictures above 25 megapixels are
            downscaled, so an application that sends uncompressed scans of more pixels raises it, as
            it would raise Pillow's ``MAX_IMAGE_PIXELS``.

    Example:
        >>> PrepareOptions(strict=True, max_pixels=16_000_000).max_bytes
        30000000
    """

    strict: bool = False
    max_pixels: int = 25_000_000
    max_bytes: int = 30_000_000
    reencode_jpeg_as: Literal["PNG", "JPEG"] = "JPEG"
    bomb_pixels: int | None = None
    max_source_bytes: int = 256_000_000

    def __post_init__(self) -> None:
        if self.reencode_jpeg_as not in ("PNG", "JPEG"):
            raise ValueError(
                f"reencode_jpeg_as must be 'PNG' or 'JPEG', got {self.reencode_jpeg_as!r}"
            )
        for name in ("max_pixels", "max_bytes", "bomb_pixels", "max_source_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")


#: Sources whose pixels went through a lossy codec already: re-encoding them follows
#: ``reencode_jpeg_as``, and strict mode allows them one JPEG at the first quality.
LOSSY_SOURCES: Final = frozenset({"JPEG", "HEIF", "AVIF"})


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything decided about one source before its pixels are re-encoded.

    Attributes:
        source_name: the path or file name when known.
        digest: hex SHA-256 of the source bytes; ``None``: of the upload.
        display: (width, height) as a viewer shows the source.
        orientation: the EXIF orientation applied (1..8).
        origin: the changes made before re-encoding (conversion, first frame, PIL/array).
        encoding: what ``reencode`` does.
    """

    source_name: str | None
    digest: str | None
    display: tuple[int, int]
    orientation: int
    origin: tuple[str, ...]
    encoding: EncodePlan


def plan_upload(
    options: PrepareOptions,
    *,
    label: str,
    source_name: str | None,
    digest: str | None,
    size: tuple[int, int],
    orientation: int,
    origin: tuple[str, ...],
    lossy_source: bool,
    recompress: bool,
    owned: bool,
) -> Plan:
    """Decide, from the options and what the source is, how it will be re-encoded."""
    qualities: tuple[int, ...] = JPEG_QUALITIES
    if options.strict:
        # strict mode allows no lossy step except turning a lossy source into one JPEG at
        # the first quality (a rotated JPEG must be re-encoded; PNG may not fit)
        qualities = JPEG_QUALITIES[:1] if lossy_source else ()
    # a JPEG that is only too big never shrinks by becoming a PNG
    lossless_first = not lossy_source or (options.reencode_jpeg_as == "PNG" and not recompress)
    return Plan(
        source_name=source_name,
        digest=digest,
        display=oriented_size(size, orientation),
        orientation=orientation,
        origin=origin,
        encoding=EncodePlan(
            label=label,
            target=fit(size, options.max_pixels),
            orientation=orientation,
            owned=owned,
            lossless_first=lossless_first,
            jpeg_qualities=qualities,
            max_bytes=options.max_bytes,
            recompress=recompress,
            strict=options.strict,
        ),
    )
