"""Reading sources: a size bound checked before reading, bytes that are a path, and error messages
that name the source and what is wrong, without Python object reprs."""

from __future__ import annotations

import io
import os
import random
import re
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import clipnormals
from clipnormals import InvalidImageError
from clipnormals._images.sources import pillow_errors
from clipnormals.images import PrepareOptions, prepare_image

SAMPLES = Path(clipnormals.__file__).parent / "samples"
LIMIT = PrepareOptions().max_source_bytes


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 20, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the size bound ---------------------------------------------------------------------------


def test_the_default_bound_is_documented_and_above_the_largest_plausible_source() -> None:
    # a 25 MP picture, uncompressed 16-bit RGBA: 8 bytes a pixel
    assert LIMIT == 256_000_000
    assert 8 * PrepareOptions().max_pixels < LIMIT


def test_a_file_far_larger_than_any_source_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "sparse.jpg"
    with path.open("wb") as file:  # a JPEG start, then a hole: no disk used
        file.write(png())
        file.truncate(3 * 10**9)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImageError) as caught:
            prepare_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(f"'{path}': the file is 3,000,000,000 bytes, more than the ")
    assert "PrepareOptions.max_source_bytes" in message
    assert "without reading it" in message
    assert peak < 1_000_000  # not read


@pytest.mark.parametrize("kind", ["path", "bytes", "file object"])
def test_both_sides_of_the_source_bound(kind: str, tmp_path: Path) -> None:
    data = png()
    path = tmp_path / "small.png"
    path.write_bytes(data)

    def source() -> Any:
        return {"path": path, "bytes": data, "file object": io.BytesIO(data)}[kind]

    assert prepare_image(source(), options=PrepareOptions(max_source_bytes=len(data))).data == data
    with pytest.raises(InvalidImageError, match=r"PrepareOptions\.max_source_bytes"):
        prepare_image(source(), options=PrepareOptions(max_source_bytes=len(data) - 1))


class Endless(io.RawIOBase):
    """A stream that never ends (a device, a socket that keeps sending)."""

    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        head = b"\x89PNG\r\n\x1a\n" if self.given == 0 else b""
        buffer[:size] = (head + bytes(size))[:size]
        self.given += size
        return size


def test_a_file_object_is_read_no_further_than_the_bound() -> None:
    stream = Endless()
    limit = 5_000_000
    with pytest.raises(InvalidImageError, match="holds more than 5,000,000 bytes"):
        prepare_image(stream, options=PrepareOptions(max_source_bytes=limit))
    assert limit < stream.given <= limit + 1


def test_a_file_object_that_reads_in_small_pieces_is_read_whole() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            piece, self.data = self.data[:7], self.data[7:]
            buffer[: len(piece)] = piece
            return len(piece)

    data = png((40, 30))
    assert prepare_image(Trickle(data)).data == data


def test_an_object_whose_read_takes_no_size_is_read_once_and_bounded() -> None:
    class Whole:
        def __init__(self, data: bytes) -> None:
            self.data = data
            self.reads = 0

        def read(self) -> bytes:
            self.reads += 1
            return self.data

    data = png((40, 30))
    source = Whole(data)
    assert prepare_image(source).data == data
    assert source.reads == 1
    with pytest.raises(InvalidImageError, match=r"holds more than 10 bytes"):
        prepare_image(Whole(data), options=PrepareOptions(max_source_bytes=10))


# --- bytes that are a path --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [b"/photos/\xff\xfe portrait.jpg", b"portrait.jpg", b"C:\\photos\\portrait.png"],
    ids=["non-utf8", "bare-name", "windows"],
)
def test_a_path_passed_as_bytes_is_explained(path: bytes) -> None:
    with pytest.raises(InvalidImageError) as caught:
        prepare_image(path)
    message = str(caught.value)
    assert message.startswith(
        f"bytes input ({len(path)} bytes): not an image: the bytes look like a file path ('"
    )
    assert "pass a path as a str or an os.PathLike" in message
    assert "looks like text" not in message


def test_text_that_is_not_a_path_still_reads_as_text() -> None:
    with pytest.raises(InvalidImageError, match="the data looks like text"):
        prepare_image(b"hello world\n" * 10)


def test_a_path_as_os_fsencode_gives_it_is_read_when_decoded(tmp_path: Path) -> None:
    path = tmp_path / "portrait.png"
    path.write_bytes(png())
    with pytest.raises(InvalidImageError, match="look like a file path"):
        prepare_image(os.fsencode(path))
    assert prepare_image(os.fsdecode(os.fsencode(path))).data == png()


# --- messages ---------------------------------------------------------------------------------

REPR = re.compile(r"object at 0x|<[\w.]+ object|<_io\.")


def test_pillow_reprs_of_file_objects_are_kept_out_of_messages() -> None:
    with (
        pytest.raises(InvalidImageError) as caught,
        pillow_errors("'x.ico'"),
    ):
        raise UnidentifiedImageError(
            "cannot identify image file <_io.BytesIO object at 0x7f3a2c1d9e40>"
        )
    assert str(caught.value) == (
        "'x.ico': truncated or corrupt image data (cannot identify image file the data)"
    )


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.open(SAMPLES / "astronaut.png").convert("RGB").resize((64, 64))
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "ICO", "PPM", "QOI", "JPEG2000"]
)
def test_every_refusal_names_the_source_and_holds_no_repr(fmt: str) -> None:
    data = encoded(fmt)
    rng = random.Random(fmt)
    refused = 0
    for trial in range(60):
        damaged = bytearray(data)
        if trial % 3 == 0:
            damaged = damaged[: rng.randrange(1, len(damaged))]
        else:
            at = rng.randrange(min(len(damaged), 120))
            damaged[at : at + 4] = rng.randbytes(4)
        sources = (
            (bytes(damaged), "broken.bin", "'broken.bin': "),
            (bytes(damaged), None, f"bytes input ({len(damaged):,} bytes): "),
            (io.BytesIO(damaged), None, "file object: "),
        )
        for source, name, label in sources:
            try:
                prepare_image(source, name=name)
            except InvalidImageError as exc:
                refused += 1
                message = str(exc)
                assert message.startswith(label), message
                assert not REPR.search(message), message
    assert refused > 0


def test_a_closed_pil_image_is_named_as_such() -> None:
    image = Image.open(io.BytesIO(png()))
    image.load()
    image.close()
    with pytest.raises(InvalidImageError, match=r"^PIL image: cannot load its pixels \(.*closed"):
        prepare_image(image)


def test_an_array_source_is_named() -> None:
    with pytest.raises(InvalidImageError, match=r"^numpy array: "):
        prepare_image(np.zeros((2, 2, 5), np.uint8))
