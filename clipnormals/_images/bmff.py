"""ISO-BMFF (HEIF, AVIF): the boxes, the picture's items, and what their coded data must look like.

A HEIF or AVIF file is a list of boxes; the ``meta`` box says which item is the picture
(``pitm``), of what type (``iinf``: ``hvc1`` HEVC, ``av01`` AV1, ``grid`` tiles of either,
referenced through ``iref``/``dimg``), and where its bytes lie (``iloc``, usually in ``mdat``).
:func:`check_picture` reads that far and walks the coded data of the picture's items:

- **HEVC** (ISO/IEC 14496-15): the data is NAL units, each after a length field of the size
  ``hvcC`` gives. The lengths must tile the item's data exactly; every NAL unit header must be
  valid; and no NAL unit may hold the byte sequences ``00 00 00``, ``00 00 01`` or ``00 00 02``
  (H.265 7.4.2: encoders insert emulation-prevention bytes so that they never occur) nor end in
  a zero byte. Zero bytes, and a copy of the file's beginning (whose box sizes start with three
  zero bytes), cannot hide there; random bytes can (about one 3-byte pattern per 5.6 MB).
- **AV1** (AV1 5.3, AVIF 2.1): the data is OBUs, each header valid (forbidden bit clear, a type
  that is not reserved) and its size within the item's data, the sizes tiling it exactly.
- In the entropy-coded payload of both (HEVC slice data, AV1 tile data), a run of
  :data:`SAME_BYTE_RUN` equal bytes ``0x00`` or ``0xFF`` is refused: CABAC and AV1's coder
  output is close to random bytes, in which such a run has a chance of 2^-504 at a position
  (``tests/test_half_garbage.py`` passes files from x265 and aom of flat, black and noisy
  pictures), while a file filled with either byte after a failure is a common sight.

:func:`last_coded_extent` and :func:`av1_obus` give ``decode`` what it needs to shorten an AV1
picture's data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .codestreams import Broken

__all__ = [
    "OBU_FRAME",
    "OBU_TILE_GROUP",
    "SAME_BYTE_RUN",
    "Box",
    "Item",
    "Obu",
    "av1_obus",
    "av1_padding",
    "boxes",
    "check_picture",
    "last_coded_extent",
    "leb128",
    "picture_items",
]

#: Equal bytes (0x00 or 0xFF) in a row that no entropy-coded HEVC or AV1 payload holds.
SAME_BYTE_RUN: Final = 64
OBU_TILE_GROUP: Final = 4
OBU_FRAME: Final = 6
_OBU_PADDING = 15
_OBU_RESERVED = frozenset({0, 9, 10, 11, 12, 13, 14})
_FOURCC = re.compile(rb"[\x20-\x7e]{4}")
_EMULATION = re.compile(rb"\x00\x00[\x00-\x02]")
_RUNS = (b"\x00" * SAME_BYTE_RUN, b"\xff" * SAME_BYTE_RUN)


@dataclass(frozen=True, slots=True)
class Box:
    """A box: its type, where it starts, where its body starts, where it ends (byte offsets)."""

    kind: bytes
    start: int
    body: int
    end: int


@dataclass(frozen=True, slots=True)
class Item:
    """An item of the ``meta`` box: id, type, and its extents (offset, length) in the file."""

    id: int
    kind: bytes
    extents: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Obu:
    """One AV1 OBU inside an item's data (offsets relative to the data's start)."""

    kind: int
    offset: int
    header_size: int
    sized: bool
    payload_offset: int
    payload_size: int

    @property
    def end(self) -> int:
        return self.payload_offset + self.payload_size


def boxes(data: bytes, start: int, end: int) -> list[Box]:
    """The boxes that tile ``data[start:end]``, in order.

    Raises:
        Broken: a box header is cut off or invalid, or a box runs past ``end``.
    """
    found = []
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise Broken(f"a box header at byte {pos:,} is cut off")
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if not _FOURCC.fullmatch(kind):
            raise Broken(f"no valid box at byte {pos:,}")
        body = pos + 8
        if size == 1:
            if pos + 16 > end:
                raise Broken(f"a box header at byte {pos:,} is cut off")
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            body = pos + 16
        elif size == 0:  # "to the end of the file"
            size = end - pos
        if size < body - pos or pos + size > end:
            raise Broken(f"the {kind.decode()!r} box at byte {pos:,} runs past the end")
        found.append(Box(kind, pos, body, pos + size))
        pos += size
    return found


# --- items ------------------------------------------------------------------------------------


class _Reader:
    """Big-endian fields of one box body, refusing to read past it."""

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data, self.pos, self.end, self.what = data, pos, end, what

    def uint(self, size: int) -> int:
        if self.pos + size > self.end:
            raise Broken(f"the {self.what} box is cut short")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return value


def picture_items(data: bytes) -> list[Item]:
    """The items a reader decodes for the picture: the primary item, or the tiles of a primary
    ``grid``. Items stored outside the file's bytes (``idat``, other files) are left out; all
    coded items when the file names no primary item.

    Raises:
        Broken: the ``meta`` box or one it holds is broken.
    """
    return _picture_items(data, _meta(data))


def _meta(data: bytes) -> dict[bytes, Box]:
    """The boxes inside the top-level ``meta`` box, by type (empty without one)."""
    meta = next((box for box in boxes(data, 0, len(data)) if box.kind == b"meta"), None)
    if meta is None:
        return {}
    return {box.kind: box for box in boxes(data, meta.body + 4, meta.end)}


def _picture_items(data: bytes, inside: dict[bytes, Box]) -> list[Item]:
    kinds = _item_types(data, inside.get(b"iinf"))
    located = _locations(data, inside.get(b"iloc"))
    primary = _primary(data, inside.get(b"pitm"))
    if primary is None:
        wanted = [item for item in kinds if kinds[item] in (b"hvc1", b"av01")]
    elif kinds.get(primary) == b"grid":
        wanted = _references(data, inside.get(b"iref")).get((b"dimg", primary), [])
    else:
        wanted = [primary]
    return [
        Item(id=item, kind=kinds.get(item, b""), extents=located[item])
        for item in wanted
        if item in located
    ]


def _item_types(data: bytes, iinf: Box | None) -> dict[int, bytes]:
    if iinf is None:
        return {}
    version = data[iinf.body]
    first = iinf.body + 4 + (2 if version == 0 else 4)
    kinds = {}
    for entry in boxes(data, first, iinf.end):
        if entry.kind != b"infe" or data[entry.body] < 2:
            continue
        reader = _Reader(data, entry.body + 4, entry.end, "infe")
        item = reader.uint(2 if data[entry.body] == 2 else 4)
        reader.uint(2)  # protection index
        kinds[item] = bytes(data[reader.pos : reader.pos + 4])
    return kinds


def _locations(data: bytes, iloc: Box | None) -> dict[int, tuple[tuple[int, int], ...]]:
    """Item id -> extents in the file, for items stored in the file itself (method 0)."""
    if iloc is None:
        return {}
    reader = _Reader(data, iloc.body, iloc.end, "iloc")
    version = reader.uint(1)
    reader.uint(3)
    sizes = reader.uint(1)
    more = reader.uint(1)
    offset_size, length_size, base_size = sizes >> 4, sizes & 15, more >> 4
    index_size = more & 15 if version in (1, 2) else 0
    count = reader.uint(2 if version < 2 else 4)
    located = {}
    for _ in range(count):
        item = reader.uint(2 if version < 2 else 4)
        method = reader.uint(2) & 15 if version in (1, 2) else 0
        reader.uint(2)  # data reference index
        base = reader.uint(base_size)
        extents = []
        for _ in range(reader.uint(2)):
            reader.uint(index_size)
            offset = base + reader.uint(offset_size)
            length = reader.uint(length_size)
            # a length of 0 means "to the end of the file"
            extents.append((offset, length or max(0, len(data) - offset)))
        if method == 0:
            located[item] = tuple(extents)
    return located


def _primary(data: bytes, pitm: Box | None) -> int | None:
    if pitm is None:
        return None
    reader = _Reader(data, pitm.body, pitm.end, "pitm")
    version = reader.uint(4) >> 24
    return reader.uint(2 if version == 0 else 4)


def _references(data: bytes, iref: Box | None) -> dict[tuple[bytes, int], list[int]]:
    if iref is None:
        return {}
    wide = data[iref.body] != 0
    found: dict[tuple[bytes, int], list[int]] = {}
    for ref in boxes(data, iref.body + 4, iref.end):
        reader = _Reader(data, ref.body, ref.end, "iref")
        source = reader.uint(4 if wide else 2)
        targets = [reader.uint(4 if wide else 2) for _ in range(reader.uint(2))]
        found.setdefault((ref.kind, source), []).extend(targets)
    return found


def last_coded_extent(data: bytes, kind: bytes) -> tuple[int, int] | None:
    """(offset, length) of the picture item of type ``kind`` stored last in the file, when it
    is one extent; ``None`` otherwise."""
    extents = [
        item.extents[0]
        for item in picture_items(data)
        if item.kind == kind and len(item.extents) == 1
    ]
    if not extents:
        return None
    return max(extents, key=lambda extent: extent[0] + extent[1])


# --- coded data -------------------------------------------------------------------------------


def check_picture(data: bytes) -> None:
    """Walk the coded data of the picture's items (see the module docstring).

    Raises:
        Broken: the reason the data is not what an encoder writes.
    """
    inside = _meta(data)
    items = _picture_items(data, inside)
    if not items:
        return
    length_size = _nal_length_size(data, inside.get(b"iprp"))
    for item in items:
        for offset, length in item.extents:
            if offset + length > len(data):
                raise Broken(f"the data of item {item.id} runs past the end of the file")
        coded = b"".join(data[offset : offset + length] for offset, length in item.extents)
        if item.kind == b"hvc1":
            _check_hevc(coded, length_size, item.id)
        elif item.kind == b"av01":
            for obu in av1_obus(coded, item.id):
                if obu.kind in (OBU_TILE_GROUP, OBU_FRAME):
                    _check_runs(coded, obu.payload_offset, obu.end, item.id)


def _nal_length_size(data: bytes, iprp: Box | None) -> int:
    """The NAL unit length size the ``hvcC`` properties give (4, the usual, when they do not
    say or do not agree)."""
    sizes = set()
    for properties in boxes(data, iprp.body, iprp.end) if iprp is not None else ():
        if properties.kind != b"ipco":
            continue
        for box in boxes(data, properties.body, properties.end):
            if box.kind == b"hvcC" and box.body + 22 <= box.end:
                sizes.add((data[box.body + 21] & 3) + 1)
    return sizes.pop() if len(sizes) == 1 else 4


def _check_hevc(coded: bytes, length_size: int, item: int) -> None:
    pos = 0
    while pos < len(coded):
        start = pos + length_size
        size = int.from_bytes(coded[pos:start], "big")
        end = start + size
        if start > len(coded) or size < 2 or end > len(coded):
            raise Broken(f"a NAL unit of item {item} does not fit its data (at byte {pos:,})")
        first, second = coded[start], coded[start + 1]
        if first & 0x80 or not second & 0x07:
            raise Broken(f"an invalid NAL unit header in item {item} (at byte {pos:,})")
        found = _EMULATION.search(coded, start, end)
        if found is not None:
            raise Broken(
                f"item {item} holds bytes no HEVC stream holds "
                f"({coded[found.start() : found.end()].hex(' ')}, at byte {found.start():,} "
                "of its data)"
            )
        if coded[end - 1] == 0:
            raise Broken(f"a NAL unit of item {item} ends in a zero byte")
        if (first >> 1) & 0x3F < 32:  # slice data, entropy-coded
            _check_runs(coded, start, end, item)
        pos = end


def _check_runs(coded: bytes, start: int, end: int, item: int) -> None:
    for run in _RUNS:
        found = coded.find(run, start, end)
        if found != -1:
            raise Broken(
                f"a run of {SAME_BYTE_RUN} or more 0x{run[0]:02X} bytes inside the compressed "
                f"data of item {item} (at byte {found:,} of its data)"
            )


def av1_obus(coded: bytes, item: int = 0) -> list[Obu]:
    """The OBUs that tile an AV1 item's data.

    Raises:
        Broken: an invalid OBU header, or OBU sizes that do not tile the data.
    """
    found = []
    pos = 0
    while pos < len(coded):
        header = coded[pos]
        kind = (header >> 3) & 15
        if header & 0x80 or kind in _OBU_RESERVED:
            raise Broken(f"an invalid OBU header in item {item} (at byte {pos:,})")
        header_size = 2 if header & 0x04 else 1
        sized = bool(header & 0x02)
        if sized:
            size, field = _read_leb128(coded, pos + header_size)
            payload = pos + header_size + field
        else:  # the last OBU may fill the rest
            payload = pos + header_size
            size = len(coded) - payload
        if payload + size > len(coded):
            raise Broken(f"an OBU of item {item} runs past its data (at byte {pos:,})")
        found.append(Obu(kind, pos, header_size, sized, payload, size))
        pos = payload + size
    return found


def _read_leb128(coded: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for index in range(8):
        if pos + index >= len(coded):
            break
        byte = coded[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, index + 1
    raise Broken("an OBU size field is cut off or too long")


def leb128(value: int) -> bytes:
    """``value`` (>= 0) as AV1's leb128: 7 bits a byte, low first, high bit for "more".

    Example:
        >>> leb128(5), leb128(300)
        (b'\\x05', b'\\xac\\x02')
    """
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def av1_padding(size: int) -> bytes:
    """An AV1 padding OBU of exactly ``size`` bytes (at least 2), which decoders skip."""
    for field in range(1, 9):
        payload = size - 1 - field
        if payload >= 0 and len(leb128(payload)) == field:
            return bytes([_OBU_PADDING << 3 | 0x02]) + leb128(payload) + bytes(payload)
    raise ValueError(f"no padding OBU of {size} bytes")
