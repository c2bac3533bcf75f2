"""A plain PNG is proved whole without Pillow, and never accepted where Pillow's path refuses.

``clipnormals/_images/plainpng.py`` answers for the commonest upload; everything it does not
answer for goes through Pillow. The property that matters is one way: whatever it accepts,
the full path accepts too, with the same result. So each damaged or unusual file below is
given to both.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from clipnormals import InvalidImageError, PrepareOptions
from clipnormals._images import prepare as prepare_module
from clipnormals._images.plainpng import PIECE, plain_png_size
from clipnormals.images import prepare_image

LIMIT = 25_000_000


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(kind, payload) for kind, payload in chunks)


def _ihdr(width: int, height: int, colour: int, depth: int = 8, interlace: int = 0) -> bytes:
    return struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)


def _rows(width: int, height: int, channels: int, seed: int = 0, filters: bytes = b"\x00") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width * channels), dtype=np.uint8)
    return b"".join(
        filters[y % len(filters) : y % len(filters) + 1] + pixels[y].tobytes()
        for y in range(height)
    )


def _png(mode: str, size: tuple[int, int] = (37, 23), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    bands = len(mode)
    shape = (size[1], size[0]) if bands == 1 else (size[1], size[0], bands)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _full_path(data: bytes, **options: object) -> object:
    """What ``prepare_image`` does with the plain-PNG check switched off, or the error."""
    saved = prepare_module.plain_png_size
    prepare_module.plain_png_size = lambda data, limit: None  # type: ignore[assignment]
    try:
        return prepare_image(data, options=PrepareOptions(**options), name="p.png")  # type: ignore[arg-type]
    except InvalidImageError as exc:
        return exc
    finally:
        prepare_module.plain_png_size = saved


def _agree(data: bytes) -> tuple[bool, bool]:
    """(plain check accepts, full path accepts); asserts the one-way property."""
    size = plain_png_size(data, LIMIT)
    full = _full_path(data)
    if size is not None:
        assert not isinstance(full, InvalidImageError), (
            f"plain check accepted what Pillow refuses: {full}"
        )
        assert full.size == size
        assert full.data == data
        assert full.changes == ()
        assert prepare_image(data, name="p.png") == full
    return size is not None, not isinstance(full, InvalidImageError)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_plain_pngs_of_every_mode_skip_pillow_and_match_its_result(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _png(mode)
    expected = _full_path(data)
    assert not isinstance(expected, InvalidImageError)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow was asked to open a plain PNG")

    monkeypatch.setattr(Image, "open", refuse)
    assert prepare_image(data, name="p.png") == expected
    assert plain_png_size(data, LIMIT) == (37, 23)


def test_harmless_chunks_and_split_idat_runs_are_plain() -> None:
    chunks = _chunks(_png("RGB", (64, 40)))
    head, idat, end = chunks[0], chunks[1][1], chunks[-1]
    thirds = [
        idat[: len(idat) // 3],
        idat[len(idat) // 3 : 2 * len(idat) // 3],
        idat[2 * len(idat) // 3 :],
    ]
    data = _build(
        [
            head,
            (b"gAMA", bytes(4)),
            (b"sRGB", b"\x00"),
            *((b"IDAT", part) for part in thirds),
            (b"tIME", bytes(7)),
            end,
        ]
    )
    assert _agree(data) == (True, True)


# --- what is not plain goes to Pillow, which still accepts it ---------------------------------


def _not_plain() -> Iterator[tuple[str, bytes]]:
    yield "palette", _palette()
    yield "16-bit grey", _encode(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30)))
    yield "interlaced", _adam7(30, 20)
    chunks = _chunks(_png("RGB"))
    yield "IHDR not first", _build([(b"gAMA", bytes(4)), *chunks])
    yield "unknown critical chunk", _build([chunks[0], (b"ABCD", b"x"), *chunks[1:]])
    yield "text chunk", _build([chunks[0], (b"tEXt", b"Comment\x00hi"), *chunks[1:]])
    yield (
        "eXIf chunk",
        _build([chunks[0], (b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00"), *chunks[1:]]),
    )
    yield "bytes after IEND", _png("RGB") + b"trailer"
    yield "1-bit grey", _encode(Image.new("1", (30, 20)))


def _encode(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _adam7(width: int, height: int) -> bytes:
    """An interlaced RGB PNG (Pillow writes none): Adam7's seven passes, each row filter 0."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    raw = b""
    for x0, y0, dx, dy in [*passes, (0, 1, 1, 2)]:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            raw += (b"\x00" + bytes(columns * 3)) * rows
    header = _ihdr(width, height, 2, interlace=1)
    return _build([(b"IHDR", header), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])


def _palette() -> bytes:
    return _encode(Image.new("RGB", (30, 20), (200, 10, 10)).convert("P"))


@pytest.mark.parametrize(
    ("what", "data"), list(_not_plain()), ids=[name for name, _ in _not_plain()]
)
def test_files_that_are_not_plain_take_the_full_path(what: str, data: bytes) -> None:
    assert plain_png_size(data, LIMIT) is None
    assert _agree(data) == (False, True)


# --- damage: the plain check never accepts what Pillow refuses --------------------------------


def _with_idat(data: bytes, change: Callable[[bytes], bytes]) -> bytes:
    chunks = _chunks(data)
    return _build(
        [(kind, change(payload) if kind == b"IDAT" else payload) for kind, payload in chunks]
    )


def _stream(raw: bytes, level: int = 6) -> bytes:
    return zlib.compress(raw, level)


WIDTH, HEIGHT = 37, 23


def _damaged() -> Iterator[tuple[str, bytes]]:
    good = _build(
        [
            (b"IHDR", _ihdr(WIDTH, HEIGHT, 2)),
            (b"IDAT", _stream(_rows(WIDTH, HEIGHT, 3))),
            (b"IEND", b""),
        ]
    )
    raw = _rows(WIDTH, HEIGHT, 3)
    yield (
        "a filter type of 5",
        _with_idat(good, lambda _: _stream(raw[: -1 - WIDTH * 3] + b"\x05" + raw[-WIDTH * 3 :])),
    )
    yield "a row short", _with_idat(good, lambda _: _stream(raw[:-1]))
    yield "a row too many", _with_idat(good, lambda _: _stream(raw + raw[: 1 + WIDTH * 3]))
    yield "zlib stream cut", _with_idat(good, lambda s: s[:-9])
    yield "no Adler-32", _with_idat(good, lambda s: s[:-4])
    yield "bad Adler-32", _with_idat(good, lambda s: s[:-1] + bytes([s[-1] ^ 1]))
    yield "bytes after the zlib stream", _with_idat(good, lambda s: s + b"\x00\x00")
    yield "zero-filled IDAT", _with_idat(good, lambda s: bytes(len(s)))
    chunks = _chunks(good)
    idat = chunks[1][1]
    yield (
        "IDAT runs split by a chunk",
        _build(
            [chunks[0], (b"IDAT", idat[:40]), (b"tIME", bytes(7)), (b"IDAT", idat[40:]), chunks[2]]
        ),
    )
    yield "no IDAT", _build([chunks[0], chunks[2]])
    yield "no IEND", good[:-12]
    yield "zero width", _build([(b"IHDR", _ihdr(0, HEIGHT, 2)), *chunks[1:]])
    yield "bad CRC", good[:-20] + bytes([good[-20] ^ 0x40]) + good[-19:]
    yield "zero tail", good[: len(good) // 2] + bytes(len(good) - len(good) // 2)
    yield (
        "harmless chunk of the wrong length",
        _build([chunks[0], (b"gAMA", bytes(3)), *chunks[1:]]),
    )


@pytest.mark.parametrize(("what", "data"), list(_damaged()), ids=[name for name, _ in _damaged()])
def test_damaged_plain_pngs_are_never_accepted_unless_pillow_accepts_them(
    what: str, data: bytes
) -> None:
    plain, full = _agree(data)
    assert not plain
    if what not in {"no Adler-32", "bad Adler-32", "bytes after the zlib stream", "a row too many"}:
        assert not full  # Pillow stops once it has its rows, so it misses damage past them


def test_every_prefix_and_many_flipped_bits_agree_with_the_full_path() -> None:
    data = _png("RGBA", (19, 11), seed=3)
    for cut in range(len(data)):
        assert _agree(data[:cut])[0] is False
    rng = random.Random(7)
    for _ in range(300):  # a bit flipped in a chunk, its CRC fixed: only the decode can tell
        chunks = _chunks(data)
        index = rng.randrange(len(chunks))
        kind, payload = chunks[index]
        if payload:
            chunks[index] = (kind, _flip(payload, rng))
            _agree(_build(chunks))
    # a bit flipped in the rows before compression: the stream is sound, a filter type may not be
    raw = _rows(WIDTH, HEIGHT, 3, seed=5)
    stride = 1 + WIDTH * 3
    outcomes = set()
    for _ in range(120):
        at = rng.randrange(HEIGHT) * stride  # a row's filter type
        flipped = raw[:at] + bytes([raw[at] ^ (1 << rng.randrange(8))]) + raw[at + 1 :]
        header = (b"IHDR", _ihdr(WIDTH, HEIGHT, 2))
        outcomes.add(_agree(_build([header, (b"IDAT", _stream(flipped)), (b"IEND", b"")])))
    assert outcomes == {(True, True), (False, False)}


def _flip(payload: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(payload))
    return payload[:at] + bytes([payload[at] ^ (1 << rng.randrange(8))]) + payload[at + 1 :]


def test_limits_send_the_file_to_the_full_path() -> None:
    data = _png("RGB", (40, 30))
    assert plain_png_size(data, 1200) == (40, 30)
    assert plain_png_size(data, 1199) is None
    downscaled = prepare_image(data, options=PrepareOptions(max_pixels=600))
    assert downscaled.changes == ("downscaled",)
    assert downscaled.size[0] * downscaled.size[1] <= 600
    with pytest.raises(InvalidImageError, match="strict"):
        prepare_image(data, options=PrepareOptions(max_pixels=600, strict=True))
    with pytest.raises(InvalidImageError, match="decompression-bomb"):
        prepare_image(data, options=PrepareOptions(bomb_pixels=1000))
    with pytest.raises(InvalidImageError, match="strict"):
        prepare_image(data, options=PrepareOptions(max_bytes=len(data) - 1, strict=True))


def test_a_stream_longer_than_a_piece_is_checked_piece_by_piece() -> None:
    width, height = 1024, (3 * PIECE) // (1 + 1024 * 3) + 5
    raw = bytearray(_rows(width, height, 3, seed=1))
    good = _build(
        [(b"IHDR", _ihdr(width, height, 2)), (b"IDAT", _stream(bytes(raw), 1)), (b"IEND", b"")]
    )
    assert plain_png_size(good, LIMIT) == (width, height)
    # a bad filter type in a row that starts beyond the first pieces
    stride = 1 + width * 3
    row = (2 * PIECE) // stride + 1
    raw[row * stride] = 9
    bad = _build(
        [(b"IHDR", _ihdr(width, height, 2)), (b"IDAT", _stream(bytes(raw), 1)), (b"IEND", b"")]
    )
    assert plain_png_size(bad, LIMIT) is None
    assert isinstance(_full_path(bad), InvalidImageError)
