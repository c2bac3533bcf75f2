"""Contact sheets: one labelled row per portrait (input, normals, mask, relit).

Pillow only. This is what the command line's ``--preview`` and ``--contact-sheets`` write and
what the documentation shows.

Labels are file names, so they can be in any script. They are drawn with DejaVu Sans, bundled
with the package (``fonts/DejaVuSans.ttf``, its licence in ``fonts/LICENSE-DejaVu.txt``), which
covers Latin, Greek, Cyrillic, Armenian, Georgian, Hebrew, Arabic and many symbols and emoticons.
A character it lacks is never drawn as an empty box: its compatibility decomposition is drawn
when the font has that (``ﬁ`` as ``fi``), else its code point in a small framed box (``1F9D1``),
the way a last-resort font shows what it cannot draw.

A label never moves the pen by itself: control characters (C0, DEL, C1), line and paragraph
separators, the bidirectional marks, embeddings, overrides and isolates and lone surrogates are
drawn as Python escapes (``\\n``, ``\\x07``, ``\\u202e``), the way the command line prints them,
so ``invoice\\u202egnp.exe`` cannot pass for ``invoiceexe.png``. A label wider than its sheet
loses characters from its middle, marked by an ellipsis, and keeps its start and its extension.
"""

from __future__ import annotations

import functools
import io
import os
import unicodedata
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont

from .._atomic import atomic_write_bytes
from .._images.orientation import upright
from .._text import escape_controls
from .relight import DirectionalLight, LightSpec, relight_image
from .render import preview_image, shaded_image
from .vectors import resize_field

if TYPE_CHECKING:
    from .normalmap import NormalMap

__all__ = [
    "SheetEntry",
    "contact_sheet",
    "draw_label",
    "label_font",
    "label_text",
    "label_width",
]

#: The contact sheet's relit column: a warm key light from the right, so the change shows.
_SHEET_LIGHT = DirectionalLight((0.75, 0.35, 0.55), intensity=1.0, color=(1.0, 0.92, 0.8))
_SHEET_AMBIENT = 0.15
_PAPER = (255, 255, 255)
_INK = (40, 40, 40)
_CELL = (225, 225, 225)
_GAP = 8
_SYNTHETIC_NOTE = "synthetic map: clay"

PhotoLike: TypeAlias = "Image.Image | NDArray[np.generic] | str | os.PathLike[str]"
SheetEntry: TypeAlias = "NormalMap | tuple[PhotoLike, NormalMap]"


def contact_sheet(
    entries: Sequence[SheetEntry],
    *,
    names: Sequence[str] | None = None,
    tile: int = 256,
    light: LightSpec = _SHEET_LIGHT,
    ambient: float | ArrayLike = _SHEET_AMBIENT,
    mode: Literal["albedo", "ratio"] = "ratio",
    path: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """One row per portrait: input | normals | mask | relit, with labels; optionally saved as PNG.

    An entry is a ``NormalMap`` or a ``(photo, NormalMap)`` pair; the photo is a PIL image, an
    array or a path. Without a photo the input cell says so and the relit cell shows the clay
    render under the new light. So does the relit cell of a map known to be synthetic
    (:attr:`NormalMap.synthetic`, the emulator's), whose surface does not follow the photo; the
    cell says "synthetic map". Pictures are computed at tile size, so large maps cost little.

    Example:
        >>> from clipnormals import NormalMap, contact_sheet
        >>> nm = NormalMap.from_file("portrait_normals.jpg")
        >>> sheet = contact_sheet([("portrait.jpg", nm)], names=["portrait"], path="sheet.png")
        >>> sheet.size
        (1064, 318)
    """
    if tile < 32:
        raise ValueError(f"tile must be at least 32 pixels, got {tile}")
    if names is not None and len(names) != len(entries):
        raise ValueError(f"{len(names)} names for {len(entries)} entries")
    if not entries:
        raise ValueError("a contact sheet needs at least one entry")
    font = _font(max(11, tile // 16))
    line = _text_height(font) + 6
    columns = ("input", "normals", "mask", "relit")
    row_height = tile + (line if names is not None else 0)
    width = _GAP + len(columns) * (tile + _GAP)
    height = line + len(entries) * (row_height + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(columns):
        _centred_text(draw, label, _GAP + i * (tile + _GAP), tile, 3, font)
    top = line
    for row, entry in enumerate(entries):
        if names is not None:
            draw_label(draw, (_GAP, top + 3), _fitted(names[row], width - 2 * _GAP, font), font)
            top += line
        cells = _row_cells(entry, tile, light=light, ambient=ambient, mode=mode, font=font)
        for i, cell in enumerate(cells):
            sheet.paste(cell, (_GAP + i * (tile + _GAP), top))
        top += tile + _GAP
    if path is not None:
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        atomic_write_bytes(Path(path), buf.getvalue())
    return sheet


def _row_cells(
    entry: SheetEntry,
    tile: int,
    *,
    light: LightSpec,
    ambient: float | ArrayLike,
    mode: Literal["albedo", "ratio"],
    font: Font,
) -> list[Image.Image]:
    photo_like, nm = entry if isinstance(entry, tuple) else (None, entry)
    w, h = nm.size
    scale = tile / max(w, h)
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    normals, mask = resize_field(nm.normals, nm.mask, small)
    mask_picture = Image.fromarray(np.where(mask, np.uint8(255), np.uint8(20)))
    photo = None
    if photo_like is None:
        input_cell = _placeholder(tile, "no photo", font)
    else:
        photo = _load_photo(photo_like).resize(small, Image.Resampling.LANCZOS)
        input_cell = _cell(photo, tile)
    if photo is None or nm.synthetic:
        # A synthetic map does not follow the photo: lighting the photo with it would paint its
        # outline over whatever is there. Its own clay surface shows the light honestly.
        relit = shaded_image(normals, mask, light=light, ambient=ambient)
    else:
        relit = relight_image(photo, normals, mask, light=light, ambient=ambient, mode=mode)
    relit_cell = _cell(relit, tile)
    if nm.synthetic:
        _mark_synthetic(relit_cell, font)
    return [
        input_cell,
        _cell(preview_image(normals, mask), tile),
        _cell(mask_picture.convert("RGB"), tile),
        relit_cell,
    ]


def _mark_synthetic(cell: Image.Image, font: Font) -> None:
    """Say on a relit cell that it shows a synthetic map's clay, not the photo."""
    draw = ImageDraw.Draw(cell)
    height = _text_height(font)
    top = cell.height - height - 6
    draw.rectangle((0, top - 3, cell.width, cell.height), fill=_CELL)
    _centred_text(draw, _SYNTHETIC_NOTE, 0, cell.width, top, font)


def _load_photo(photo: PhotoLike) -> Image.Image:
    if isinstance(photo, Image.Image):
        image = photo
    elif isinstance(photo, np.ndarray):
        arr = photo
        if np.issubdtype(arr.dtype, np.floating):
            scaled = np.asarray(arr, dtype=np.float64) * 255.0
            arr = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        image = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    else:
        with Image.open(photo) as opened:
            return upright(opened).convert("RGB")
    # Show the photo the way viewers (and the upload preparation) orient it.
    return upright(image).convert("RGB")


def _cell(picture: Image.Image, tile: int) -> Image.Image:
    cell = Image.new("RGB", (tile, tile), _CELL)
    cell.paste(picture, ((tile - picture.width) // 2, (tile - picture.height) // 2))
    return cell


def _placeholder(tile: int, text: str, font: Font) -> Image.Image:
    cell = Image.new("RGB", (tile, tile), _CELL)
    draw = ImageDraw.Draw(cell)
    _centred_text(draw, text, 0, tile, tile // 2 - _text_height(font) // 2, font)
    return cell


Font: TypeAlias = "ImageFont.FreeTypeFont"
_FONT_FILE = "DejaVuSans.ttf"
_MISSING = "\U0010ffff"  # a noncharacter: every font draws its "no glyph" shape for it


@functools.cache
def _font_bytes() -> bytes:
    return resources.files(__package__).joinpath("fonts", _FONT_FILE).read_bytes()


@functools.cache
def label_font(size: int) -> Font:
    """The bundled DejaVu Sans at ``size`` pixels (cached)."""
    return ImageFont.truetype(io.BytesIO(_font_bytes()), size)


def _font(size: int) -> Font:
    return label_font(size)


@functools.cache
def _notdef(font: Font) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(_MISSING)
    return mask.size, bytes(mask)


@functools.cache
def _has_glyph(font: Font, ch: str) -> bool:
    if ch.isspace() or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return True  # blank or combining: nothing to compare, drawn as the font does
    mask = font.getmask(ch)
    return (mask.size, bytes(mask)) != _notdef(font)


_ELLIPSIS = "\u2026"


def label_text(text: str) -> str:
    """``text`` as a label shows it: every control, separator, bidirectional control and lone
    surrogate replaced by its Python escape, so that nothing in a file name can break a line,
    reorder the text drawn after it or make the text shaper fail.

    Example:
        >>> label_text("invoice\\u202egnp.exe")
        'invoice\\\\u202egnp.exe'
        >>> label_text("new\\nline.png")
        'new\\\\nline.png'
    """
    return escape_controls(text)


def _fitted(text: str, width: int, font: Font) -> str:
    """``text`` (made a :func:`label_text`) shortened in its middle to fit ``width`` pixels."""
    text = label_text(text)
    if label_width(text, font) <= width:
        return text
    low, high = 0, len(text) - 1  # characters kept around the ellipsis: low fits, high may not
    while low < high:
        keep = (low + high + 1) // 2
        if label_width(_shortened(text, keep), font) <= width:
            low = keep
        else:
            high = keep - 1
    return _shortened(text, low)


def _shortened(text: str, keep: int) -> str:
    head = (keep + 1) // 2
    return text[:head] + _ELLIPSIS + text[len(text) - (keep - head) :]


def _runs(text: str, font: Font) -> list[tuple[str, bool]]:
    """``text`` split into runs the font draws (``True``) and single characters it lacks."""
    runs: list[tuple[str, bool]] = []
    for ch in label_text(text):
        if _has_glyph(font, ch):
            if runs and runs[-1][1]:
                runs[-1] = (runs[-1][0] + ch, True)
            else:
                runs.append((ch, True))
            continue
        decomposed = unicodedata.normalize("NFKD", ch)
        if decomposed != ch and all(_has_glyph(font, c) for c in decomposed):
            runs.append((decomposed, True))
        else:
            runs.append((ch, False))
    return runs


def _box_font(font: Font) -> Font:
    return label_font(max(6, int(font.size * 0.45)))


def _box_size(ch: str, font: Font) -> tuple[int, int]:
    small = _box_font(font)
    code = f"{ord(ch):04X}"
    left, _top, right, _bottom = small.getbbox(code)
    return int(right - left) + 4, int(font.size)


def label_width(text: str, font: Font) -> int:
    """Width in pixels of :func:`draw_label`'s drawing of ``text``."""
    width = 0
    for run, drawable in _runs(text, font):
        width += int(font.getlength(run)) if drawable else _box_size(run, font)[0] + 1
    return width


def draw_label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    font: Font,
    fill: tuple[int, int, int] = _INK,
) -> None:
    """Draw ``text`` at ``xy``: with the font where it has the glyphs, else each missing
    character as its code point in a framed box."""
    x, y = xy
    for run, drawable in _runs(text, font):
        if drawable:
            draw.text((x, y), run, fill=fill, font=font)
            x += int(font.getlength(run))
            continue
        w, h = _box_size(run, font)
        small = _box_font(font)
        draw.rectangle((x, y + 1, x + w - 1, y + h - 1), outline=fill)
        draw.text((x + 2, y + (h - small.size) // 2), f"{ord(run):04X}", fill=fill, font=small)
        x += w + 1


def _text_height(font: Font) -> int:
    _left, top, _right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 2


def _centred_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    left: int,
    width: int,
    top: int,
    font: Font,
) -> None:
    draw_label(draw, (left + (width - label_width(text, font)) // 2, top), text, font)
