"""Image formats: recognising them from their first bytes, and the plugins that read them.

This is the package's one sniffer: the upload's preparation and the batch's discovery both ask
it. It leans on Pillow: a format is recognised by the signature test that Pillow's own plugin
for it registers (``Image.OPEN[fmt][1]``, given the first 16 bytes as ``Image.open`` gives
them), limited to the formats in :data:`READABLE`, which have unambiguous signatures (Pillow
also reads formats recognised by weak or no magic, TGA, PCX, XBM..., which would let random
bytes or a C header pass as an image). Two things are added to what Pillow says:

- HEIF/HEIC and AVIF are ISO-BMFF files recognised by the brands of their ``ftyp`` box, here,
  whether or not something to read them is installed (Pillow reads AVIF from 11.2 on when built
  with libavif; HEIF needs ``pillow-heif``), so that an error can say what to install; the
  generic ``mif1``/``msf1`` brands go to AVIF when ``avif`` is among the compatible brands;
- a RIFF file that is not WEBP (WAVE audio, AVI video) is named for what it is.

``pillow-heif`` is optional (the ``heif`` extra). It is imported and registered with Pillow only
the first time a HEIF file must be opened (:func:`require_reader`): registering writes Pillow's
plugin registry, once, under a lock, which is the one Pillow global this package changes (an
application that installed the extra can then open HEIC files with Pillow too).

The emulator keeps a sniffer of its own on purpose: it is an independent oracle of the API.
"""

from __future__ import annotations

import threading
from typing import Final

from PIL import Image, features

from .._errors import InvalidImageError

__all__ = [
    "CONTENT_TYPES",
    "HEIF_EXTRA",
    "READABLE",
    "UPLOADED_AS_IS",
    "canonical_format",
    "describe_unrecognised",
    "require_reader",
    "riff_form",
    "sniff",
]

#: The formats the API takes (api-contract: "input: PNG, JPEG or WEBP"), uploaded untouched.
UPLOADED_AS_IS: Final = ("PNG", "JPEG", "WEBP")
CONTENT_TYPES: Final = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
#: Every format accepted as input, in the order signatures are tried; the others are converted.
READABLE: Final = (
    "PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "ICO", "ICNS", "PPM", "QOI", "PSD",
    "JPEG2000", "AVIF", "HEIF",
)  # fmt: skip
HEIF_EXTRA: Final = "pip install 'clipnormals[heif]'"

_PREFIX = 16  # what Image.open hands to the plugins' signature tests
_HEVC_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
)
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_GENERIC_BRANDS: Final = frozenset({b"mif1", b"msf1"})
_RIFF_FORMS: Final = {
    b"WAVE": "WAVE audio",
    b"AVI ": "AVI video",
    b"RMID": "MIDI audio",
    b"ACON": "an animated cursor",
    b"CDXA": "CD video",
}
_heif_lock = threading.Lock()
_heif_state: list[bool] = []  # [] until the first attempt, then [registered]


def sniff(data: bytes) -> str | None:
    """The format ``data`` starts like, a name in :data:`READABLE`; ``None`` when none.

    Only the first bytes are read (64 are enough for every format here); nothing is decoded,
    and no plugin is loaded beyond Pillow's own.

    Example:
        >>> sniff(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)), sniff(b"RIFF\\0\\0\\0\\0WAVEfmt ")
        ('PNG', None)
        >>> sniff(b"\\0\\0\\0\\x18ftypheic\\0\\0\\0\\0mif1heic")
        'HEIF'
    """
    head = bytes(data[:64])
    if len(head) < 2:
        return None
    if head[4:8] == b"ftyp":
        return _bmff_format(head)
    Image.init()
    prefix = head[:_PREFIX]
    for fmt in READABLE:
        entry = Image.OPEN.get(fmt)
        # accept() may answer a string: "recognised, but this Pillow cannot read it"
        if entry is not None and entry[1] is not None and entry[1](prefix) is True:
            # Pillow takes "P" and any of nine characters for PPM; a Netpbm magic number is
            # always followed by whitespace, which keeps text such as "P1 notes" out
            if fmt == "PPM" and not head[2:3].isspace():
                continue
            return fmt
    return None


def _bmff_format(head: bytes) -> str | None:
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    end = min(len(head), size) if size >= 16 else 16
    brands = {major} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if major in _HEVC_BRANDS or major in _GENERIC_BRANDS or brands & _HEVC_BRANDS:
        return "HEIF"
    return None


def riff_form(data: bytes) -> str | None:
    """What a RIFF container holds when it is not a WEBP image, ``None`` otherwise.

    Example:
        >>> riff_form(b"RIFF\\x24\\0\\0\\0WAVEfmt "), riff_form(b"RIFF\\0\\0\\0\\0WEBPVP8 ")
        ('WAVE audio', None)
    """
    if data[:4] != b"RIFF" or data[8:12] == b"WEBP" or len(data) < 12:
        return None
    form = bytes(data[8:12])
    return _RIFF_FORMS.get(form) or f"a RIFF container of form {form.decode('latin-1')!r}"


def canonical_format(fmt: str | None) -> str | None:
    """Pillow's format name as the upload sees it."""
    # a JPEG carrying extra pictures (MPF, common from phones) is still a plain JPEG upload
    return "JPEG" if fmt == "MPO" else fmt


def require_reader(fmt: str, label: str) -> None:
    """Make sure Pillow can open ``fmt``, registering ``pillow-heif`` at first need.

    Raises:
        InvalidImageError: nothing installed reads this format; the message says what to
            install.
    """
    if fmt == "HEIF" and not _register_heif():
        raise InvalidImageError(
            f"{label}: a HEIF/HEIC image (the format of iPhone photos); reading it needs the "
            f"optional 'heif' extra: {HEIF_EXTRA}"
        )
    if fmt == "AVIF" and not _avif_available():
        raise InvalidImageError(
            f"{label}: an AVIF image; this Pillow {_pillow_version()} cannot read AVIF: Pillow "
            "11.2 or later, built with libavif (the PyPI wheels are), reads it: "
            "pip install -U pillow"
        )


def describe_unrecognised(data: bytes) -> str:
    """Why ``data``, which :func:`sniff` does not recognise, is refused; names what it is."""
    form = riff_form(data)
    head = data[:512].lstrip()
    others = ", ".join(fmt for fmt in READABLE if fmt not in UPLOADED_AS_IS)
    supported = f"{', '.join(UPLOADED_AS_IS)}, or a format converted first: {others}"
    if form is not None:
        return f"not an image: a RIFF file holding {form}, not WEBP (supported: {supported})"
    if head.startswith(b"<"):
        return f"not an image: the data looks like HTML or XML (supported: {supported})"
    text = head.decode("utf-8", errors="replace")
    if sum(ch.isprintable() or ch.isspace() for ch in text) >= 0.95 * len(text):
        return f"not an image: the data looks like text (supported: {supported})"
    return f"not a recognised image format (supported: {supported})"


# --- optional readers -------------------------------------------------------------------------


def _avif_available() -> bool:
    Image.init()
    if "AVIF" not in Image.OPEN:
        return False  # Pillow before 11.2
    try:
        return bool(features.check_module("avif"))
    except ValueError:  # a Pillow that does not know the module
        return False


def _register_heif() -> bool:
    with _heif_lock:
        if not _heif_state:
            _heif_state.append(_import_and_register_heif())
        return _heif_state[0]


def _import_and_register_heif() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    # the plugin hands over pixels already turned by the file's own transformations and
    # resets the EXIF orientation to 1, so preparation never turns them twice
    pillow_heif.register_heif_opener()
    return True


def _pillow_version() -> str:
    import PIL

    return PIL.__version__
