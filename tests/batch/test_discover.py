"""Input discovery: images are found by their bytes, lists are read, keys are stable."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from clipnormals._batch.discover import InputFile, discover, hash_file, sniff_image_format
from clipnormals.batch import BatchInputError


def image_bytes(fmt: str, size: tuple[int, int] = (4, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "ICO"])
def test_sniff_recognises_what_pillow_writes(fmt: str) -> None:
    assert sniff_image_format(image_bytes(fmt)[:32]) == ("ICO" if fmt == "ICO" else fmt)


@pytest.mark.parametrize(
    "head", [b"", b"hello world", b"%PDF-1.7", b"PK\x03\x04", b"RIFF\0\0\0\0WAVE"]
)
def test_sniff_rejects_non_images(head: bytes) -> None:
    assert sniff_image_format(head) is None


def keys(found: tuple[InputFile, ...]) -> list[str]:
    return [f.key for f in found]


def test_folder_is_searched_by_content(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.png").write_bytes(image_bytes("PNG"))
    (root / "a" / "no_extension").write_bytes(image_bytes("JPEG"))
    (root / "a" / "b" / "photo.dat").write_bytes(image_bytes("WEBP"))
    (root / "a" / "broken.jpg").write_bytes(b"this is not a jpeg")  # named like one: reported later
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "data.bin").write_bytes(os.urandom(64))
    (root / ".hidden.png").write_bytes(image_bytes("PNG"))
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(image_bytes("PNG"))
    found = discover([root], cwd=tmp_path)
    assert keys(found.files) == ["a/b/photo.dat", "a/broken.jpg", "a/no_extension", "top.png"]
    assert found.ignored == 2
    assert found.hidden == 2  # .hidden.png and the .git folder: counted, not searched
    assert all(f.path.is_absolute() for f in found.files)


def test_earlier_normal_maps_in_a_folder_are_left_out_unless_named(tmp_path: Path) -> None:
    # `clipnormals normals IMAGE` writes IMAGE.normals.jpg next to the image: a later batch
    # over that folder must not pay for a normal map of the normal map.
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "me.png").write_bytes(image_bytes("PNG"))
    (root / "me.png.normals.jpg").write_bytes(image_bytes("JPEG"))
    (root / "sub" / "you.JPG.NORMALS.JPG").write_bytes(image_bytes("JPEG"))
    (root / ".normals.jpg").write_bytes(image_bytes("JPEG"))  # hidden, not an output
    (root / "normals.jpg").write_bytes(image_bytes("JPEG"))  # a portrait with an odd name
    # an earlier batch's output folder among the inputs: its previews and contact sheets too
    (root / "old" / "contact-sheets").mkdir(parents=True)
    (root / "old" / "me.png.preview.jpg").write_bytes(image_bytes("JPEG"))
    (root / "old" / "contact-sheets" / "sheet-001.jpg").write_bytes(image_bytes("JPEG"))
    (root / "sheet-002.jpg").write_bytes(image_bytes("JPEG"))  # not in a contact-sheets folder
    found = discover([root], cwd=tmp_path)
    assert keys(found.files) == ["me.png", "normals.jpg", "sheet-002.jpg"]
    assert (found.outputs, found.hidden, found.ignored) == (4, 1, 0)
    assert discover([root, root], cwd=tmp_path).outputs == 4  # a folder given twice
    named = discover([root / "me.png.normals.jpg"], cwd=tmp_path)
    assert keys(named.files) == ["me.png.normals.jpg"]
    assert named.outputs == 0
    # named directly beside the folder it is in: sent, so not counted as left out
    both = discover([root, root / "me.png.normals.jpg"], cwd=tmp_path)
    assert "me.png.normals.jpg" in keys(both.files)
    assert both.outputs == 3


def test_output_folder_inside_the_input_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "in" / "out").mkdir(parents=True)
    (tmp_path / "in" / "a.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "in" / "out" / "a.png.normals.jpg").write_bytes(image_bytes("JPEG"))
    found = discover(["in"], exclude=["in/out"], cwd=tmp_path)
    assert keys(found.files) == ["a.png"]


def test_file_input_is_keyed_by_its_name(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "face.jpg").write_bytes(image_bytes("JPEG"))
    found = discover(["x/face.jpg"], cwd=tmp_path)
    assert keys(found.files) == ["face.jpg"]
    assert found.files[0].path == tmp_path / "x" / "face.jpg"


def test_a_corrupt_file_given_directly_is_kept_for_reporting(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x00\x01\x02 binary, not text")
    found = discover(["junk"], cwd=tmp_path)
    assert keys(found.files) == ["junk"]


def test_path_list_is_read_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "p" / "q").mkdir(parents=True)
    (tmp_path / "p" / "one.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "p" / "q" / "two.jpg").write_bytes(image_bytes("JPEG"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "todo").write_text(
        "# portraits to do\n\np/one.png\n  p/q  \nmissing/three.png\n", encoding="utf-8"
    )
    found = discover(["lists/todo"], cwd=tmp_path)
    # A listed folder is walked (keys relative to it); listed files keep their path from cwd.
    assert keys(found.files) == ["p/one.png", "two.jpg"]
    assert found.invalid == (
        ("missing/three.png", "missing/three.png", "listed in todo but not found"),
    )


def test_list_entries_outside_cwd_keep_their_whole_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(image_bytes("PNG"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "list").write_text(f"{elsewhere / 'a.png'}\n")
    found = discover(["list"], cwd=work)
    assert keys(found.files) == [(elsewhere / "a.png").relative_to("/").as_posix()]


def test_same_file_through_two_inputs_is_taken_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(image_bytes("PNG"))
    found = discover(["d", "d/a.png", "d"], cwd=tmp_path)
    assert keys(found.files) == ["a.png"]


def test_colliding_keys_get_a_suffix_from_the_path(tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "face.png").write_bytes(image_bytes("PNG"))
    first = discover(["x", "y"], cwd=tmp_path)
    again = discover(["y", "x"], cwd=tmp_path)
    assert keys(first.files) == keys(again.files)
    assert first.files[0].key == "face.png"
    assert first.files[0].path == tmp_path / "x" / "face.png"
    suffixed = first.files[1].key
    assert suffixed.startswith("face~")
    assert suffixed.endswith(".png")
    assert len(set(keys(first.files))) == 2


def test_missing_input_raises(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="no such file or folder: nope"):
        discover(["nope"], cwd=tmp_path)


def test_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    found = discover(["in"], cwd=tmp_path)
    assert keys(found.files) == ["a.png"]


def test_hash_file_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert hash_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_list_naming_a_file_whose_name_is_not_utf8_keeps_every_entry(tmp_path: Path) -> None:
    # Before: one such line made the whole list "not an image: the data looks like text", and
    # every good entry in it was dropped.
    (tmp_path / "good.png").write_bytes(image_bytes("PNG"))
    odd = os.fsencode(tmp_path) + b"/\xff\xfe.png"
    with open(odd, "wb") as f:
        f.write(image_bytes("PNG"))
    (tmp_path / "list.txt").write_bytes(b"good.png\n\xff\xfe.png\nmissing.png\n")
    found = discover(["list.txt"], cwd=tmp_path)
    assert sorted(os.fsencode(f.path) for f in found.files) == sorted(
        [os.fsencode(tmp_path / "good.png"), odd]
    )
    assert [entry for entry, _key, _why in found.invalid] == ["missing.png"]


@pytest.mark.parametrize("given", ["in", "in/sub"])
def test_an_input_folder_that_is_the_output_folder_is_refused(tmp_path: Path, given: str) -> None:
    # Before: the folder was left out as the output folder, nothing was found, and the run
    # said every image was done (exit 0).
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.png").write_bytes(image_bytes("PNG"))
    with pytest.raises(BatchInputError, match="output folder"):
        discover([given], exclude=["in"], cwd=tmp_path)
    found = discover(["in"], exclude=["in/out"], cwd=tmp_path)  # an output folder inside: fine
    assert keys(found.files) == ["sub/a.png"]
