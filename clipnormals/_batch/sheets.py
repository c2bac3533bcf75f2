"""Contact sheets over a batch's finished images, redrawn only when what they show changed.

``contact-sheets/sheet-NNN.jpg`` shows eight portraits each (photo, normal map, mask, relit),
in the order of their output names. Each sheet carries, in its JPEG comment, a fingerprint of
what it shows: the names, the outputs' hashes, the sources' hashes and the options that change
the drawing. A rerun that would draw the same sheet finds the same fingerprint and leaves the
file alone, so a resume with nothing to do redraws nothing. Sheets left from an earlier, longer
run are removed.

Drawing stops between two sheets when the run is interrupted: every sheet is written whole
(atomically) or not at all, and the sheets not yet drawn are drawn by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .._atomic import atomic_write_bytes
from .._errors import ClipnormalsError
from .._normals.normalmap import NormalMap
from .._normals.sheets import contact_sheet
from .config import BatchConfig
from .jobs import SHEETS_DIR, Member
from .writing import jpeg_bytes

__all__ = ["SheetEntry", "sheet_row_bytes", "write_contact_sheets"]

_SHEET_ROWS = 8
_SHEET_TILE = 256
_FORMAT = 1  # bump when the drawing changes, so that every sheet is drawn again
_COMMENT_PREFIX = b"clipnormals-sheet:"


@dataclass(frozen=True, slots=True, order=True)
class SheetEntry:
    """One finished image on a sheet.

    Attributes:
        output: the normal map's path relative to the output folder (the sort key).
        source: the source's path.
        output_sha256, source_sha256: what the sheet shows, for its fingerprint.
    """

    output: str
    source: str
    output_sha256: str
    source_sha256: str

    @property
    def name(self) -> str:
        """The label drawn on the sheet."""
        return self.output.removesuffix(".normals.jpg")


def sheet_row_bytes(nm: NormalMap, member: Member) -> bytes:
    """One image's row of a contact sheet, drawn and encoded as a sheet's are (what a sheet
    costs per image, for estimates)."""
    sheet = contact_sheet([(member.file.path, nm)], names=[member.key], tile=_SHEET_TILE)
    return jpeg_bytes(sheet)


def _fingerprint(config: BatchConfig, entries: Sequence[SheetEntry]) -> bytes:
    data = {
        "format": _FORMAT,
        "tile": _SHEET_TILE,
        "flip": [config.flip_x, config.flip_y],
        "entries": [[e.name, e.output_sha256, e.source_sha256] for e in entries],
    }
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return _COMMENT_PREFIX + hashlib.sha256(text).hexdigest().encode()


def _drawn_fingerprint(path: Path) -> bytes | None:
    with contextlib.suppress(OSError, ValueError), Image.open(path) as im:
        comment = im.info.get("comment")
        return comment if isinstance(comment, bytes) else None
    return None


def write_contact_sheets(
    config: BatchConfig,
    finished: Sequence[SheetEntry],
    *,
    rows: int = _SHEET_ROWS,
    stop: Callable[[], bool] | None = None,
) -> tuple[int, int]:
    """Draw the sheets whose content changed; return ``(drawn, unchanged)``. Blocking.

    ``stop`` is asked before each sheet: when it says true, drawing ends there (and no stale
    sheet is removed)."""
    folder = config.output_dir / SHEETS_DIR
    ordered = sorted(set(finished))
    drawn = unchanged = 0
    keep: set[str] = set()
    for number, start in enumerate(range(0, len(ordered), rows), start=1):
        if stop is not None and stop():
            return drawn, unchanged
        chunk = ordered[start : start + rows]
        path = folder / f"sheet-{number:03d}.jpg"
        keep.add(path.name)
        fingerprint = _fingerprint(config, chunk)
        if _drawn_fingerprint(path) == fingerprint:
            unchanged += 1
            continue
        entries: list[tuple[Path, NormalMap]] = []
        names: list[str] = []
        for entry in chunk:
            try:
                nm = NormalMap(
                    (config.output_dir / entry.output).read_bytes(),
                    flip_x=config.flip_x,
                    flip_y=config.flip_y,
                )
            except (OSError, ClipnormalsError):
                continue  # changed or removed since: the sheet shows the rest
            entries.append((Path(entry.source), nm))
            names.append(entry.name)
        if entries:
            sheet = contact_sheet(entries, names=names, tile=_SHEET_TILE)
            atomic_write_bytes(path, jpeg_bytes(sheet, comment=fingerprint))
            drawn += 1
    if folder.is_dir():
        for stale in folder.glob("sheet-*.jpg"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
    return drawn, unchanged
