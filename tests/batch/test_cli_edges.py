"""The ``clipnormals`` command at the edges of its inputs and outputs, run for real: a
subprocess of ``python -m clipnormals`` against an emulator on a loopback port, with real files
(odd names, full disks, read-only files, ``/proc``).

Every test asserts a guarantee: what the user sees, the exit code, what was charged, what is on
disk afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipnormals import NormalMap
from clipnormals._normals import sheets
from clipnormals.emulator import RunningServer

from .corpus import noise_image
from .test_cli_e2e import Door, command, env, start_emulator
from .test_cli_trouble import (
    DEADLINE,
    batch,
    emulator,
    records,
    run,
    start,
    summary_counts,
    wait_until,
)

pytestmark = pytest.mark.loopback


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with emulator() as running:
        yield running


def _label_band(picture: Image.Image) -> np.ndarray:
    """The name's row of a one-entry sheet, in grey levels."""
    return np.asarray(picture.convert("L"), dtype=np.float32)[20:50]


# -- labels on previews and sheets --------------------------------------------------------------


def test_names_with_controls_and_bidi_overrides_are_drawn_escaped(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    long = "very long name " + "x" * 150 + ".png"
    names = ["new\nline.png", "invoice\u202egnp.exe", "bell\x07 and sep\u2029.png", long]
    for i, name in enumerate(names):
        (root / name).write_bytes(noise_image(10 + i, size=(96, 128)))
    out = tmp_path / "out"
    done = run(batch([str(root)], out, server.url, "--preview", "--contact-sheets"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list((out / "contact-sheets").glob("sheet-*.jpg"))
    for name in names:
        nm = NormalMap((out / f"{name}.normals.jpg").read_bytes())
        with Image.open(out / f"{name}.preview.jpg") as im:
            preview = _label_band(im)
        shown = name.encode("unicode_escape").decode("ascii")  # what the label must say
        escaped = sheets.contact_sheet([(root / name, nm)], names=[shown], tile=320)
        assert np.abs(preview - _label_band(escaped)).mean() < 2.0, name
    # The override is not obeyed: the name does not pass for "invoiceexe.png".
    name = names[1]
    nm = NormalMap((out / f"{name}.normals.jpg").read_bytes())
    with Image.open(out / f"{name}.preview.jpg") as im:
        preview = _label_band(im)
    forged = sheets.contact_sheet([(root / name, nm)], names=["invoiceexe.png"], tile=320)
    assert np.abs(preview - _label_band(forged)).mean() > 2.0
    # A long name stays inside the sheet: the margin right of the name's row is bare paper.
    with Image.open(out / f"{long}.preview.jpg") as im:
        margin = _label_band(im)[:, -6:]
    assert margin.min() > 235


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB tmpfs: a disk that fills up during a run."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "tiny"
    disk.mkdir()
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _outputs_on_disk(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.normals.jpg")}


def test_a_full_disk_stops_with_exit_73_and_loses_no_record(
    tmp_path: Path, tiny_disk: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(40):
        (root / f"img{i:03d}.png").write_bytes(noise_image(100 + i, size=(64, 64)))
    out = tiny_disk / "out"
    args = batch([str(root)], out, server.url, "--npz")
    first = run(args, tmp_path)
    text = first.stdout + first.stderr
    assert first.returncode == 73, text
    assert "internal error" not in text
    assert re.search(r"^stopping: cannot write .*No space left on device", text, re.M), text
    # The manifest holds whole records only, each naming an output that is there.
    lines = (out / "manifest.jsonl").read_bytes().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        if record["status"] == "done":
            assert (out / record["output"]).is_file()
    charged = server.emulator.stats.credits_charged
    kept = _outputs_on_disk(out)
    assert 0 < len(kept) < 40

    # Still full: refused before any request, one line, the documented code.
    second = run(args, tmp_path)
    assert second.returncode == 73, second.stdout + second.stderr
    assert re.fullmatch(r"error: cannot write in .*: No space left on device\n", second.stderr)
    assert server.emulator.stats.credits_charged == charged

    # Room made: the rest is sent, and nothing written before is paid for again.
    subprocess.run(["mount", "-o", "remount,size=20m", str(tiny_disk)], check=True)
    third = run(args, tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(_outputs_on_disk(out)) == 40
    assert server.emulator.stats.credits_charged == charged + 40 - len(kept)


# -- the manifest option --------------------------------------------------------------------------


def test_a_manifest_that_cannot_be_written_is_refused_before_any_upload(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        (root / f"img{i}.png").write_bytes(noise_image(200 + i))
    out = tmp_path / "out"
    first = run(batch([str(root)], out, server.url, "--max-credits", "2"), tmp_path, as_user=True)
    assert first.returncode == 3, first.stdout + first.stderr
    charged = server.emulator.stats.credits_charged
    manifest = out / "manifest.jsonl"
    before = manifest.read_bytes()
    manifest.chmod(0o444)
    second = run(batch([str(root)], out, server.url), tmp_path, as_user=True)
    assert second.returncode == 73, second.stdout + second.stderr
    assert second.stderr == f"error: cannot write the manifest {manifest}: Permission denied\n"
    assert server.emulator.stats.credits_charged == charged
    assert manifest.read_bytes() == before


def test_a_manifest_option_naming_something_else_is_refused_and_left_alone(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        (root / f"img{i}.png").write_bytes(noise_image(300 + i))
    folder = tmp_path / "adir"
    folder.mkdir()
    notes = tmp_path / "notes.md"
    notes.write_text("# My notes\nimportant line 1\n")
    image = root / "img0.png"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n")
    cases = {
        folder: [str(root)],
        notes: [str(root)],
        image: [str(root)],
        listing: [str(listing)],  # the list of inputs named as the manifest
    }
    for n, (manifest, inputs) in enumerate(cases.items()):
        kept = None if manifest.is_dir() else manifest.read_bytes()
        out = tmp_path / f"out{n}"
        done = run(batch(inputs, out, server.url, "--manifest", str(manifest)), tmp_path)
        assert done.returncode == 2, (manifest, done.stdout + done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert str(manifest) in done.stderr
        if kept is not None:
            assert manifest.read_bytes() == kept
        assert not out.exists()
    assert list(folder.iterdir()) == []
    assert server.emulator.stats.credits_charged == 0


# -- where `normals` writes -----------------------------------------------------------------------


def test_normals_refuses_an_output_it_cannot_or_must_not_write_before_the_upload(
    tmp_path: Path, server: RunningServer
) -> None:
    image = tmp_path / "face.png"
    image.write_bytes(noise_image(400, size=(64, 64)))
    original = image.read_bytes()
    folder = tmp_path / "adir"
    folder.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cases = [
        (["-o", str(folder)], 2, False),
        (["-o", "/proc/x.jpg"], 73, False),
        (["-o", str(locked / "x.jpg")], 73, True),
        (["-o", str(image)], 2, False),
        (["-o", str(tmp_path / "res.npz"), "--npz"], 2, False),
        (["-o", str(tmp_path / ("é" * 128 + ".jpg"))], 73, False),  # 260 bytes: no such name
    ]
    for extra, code, as_user in cases:
        args = command("normals", str(image), "--base-url", server.url, *extra)
        done = run(args, tmp_path, as_user=as_user)
        assert done.returncode == code, (extra, done.stdout + done.stderr)
        assert done.stderr.startswith("error: "), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    assert server.emulator.stats.credits_charged == 0
    assert image.read_bytes() == original
    assert list(folder.iterdir()) == []
    assert list(locked.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "face.png", "locked"]


def test_normals_refuses_a_default_output_name_over_the_limit_before_the_upload(
    tmp_path: Path, server: RunningServer
) -> None:
    image = tmp_path / ("写" * 78 + ".png")  # 238 bytes; with ".normals.jpg", 250: written
    image.write_bytes(noise_image(401, size=(64, 64)))
    done = run(command("normals", str(image), "--base-url", server.url), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / (image.name + ".normals.jpg")).is_file()
    longer = tmp_path / ("é" * 120 + ".png")  # 244 bytes; its map's name would be 256
    longer.write_bytes(noise_image(402, size=(64, 64)))
    charged = server.emulator.stats.credits_charged
    done = run(command("normals", str(longer), "--base-url", server.url), tmp_path)
    assert done.returncode == 73, done.stdout + done.stderr
    assert "256 bytes, above the file-name limit of 255 bytes" in done.stderr
    assert server.emulator.stats.credits_charged == charged


def test_a_batch_rejects_a_source_whose_outputs_names_would_be_too_long_and_runs_the_rest(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(noise_image(403))
    (root / ("b" * 243 + ".png")[:243]).write_bytes(noise_image(404))  # 255 with the suffix
    long_name = "c" * 240 + ".png"  # 244 bytes: 256 with ".normals.jpg"
    (root / long_name).write_bytes(noise_image(405))
    out = tmp_path / "out"
    dry = run(batch([str(root)], out, server.url, "--dry-run"), tmp_path)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "above the file-name limit of 255 bytes" in dry.stdout
    done = run(batch([str(root)], out, server.url), tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert summary_counts(done.stdout)["done"] == 2
    assert summary_counts(done.stdout)["invalid"] == 1
    assert server.emulator.stats.credits_charged == 2
    assert records(out)[long_name].error_type == "NameTooLong"


# -- Ctrl-C while the contact sheets are drawn ----------------------------------------------------


def test_ctrl_c_while_sheets_are_drawn_stops_with_130_and_no_partial_sheet(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    count = 200  # 25 sheets of 8
    for i in range(count):
        (root / f"img{i:04d}.png").write_bytes(noise_image(500 + i, size=(48, 48)))
    out = tmp_path / "out"
    with emulator(rate=(1000, 1.0)) as server:
        first = run(batch([str(root)], out, server.url, rate="1000/1"), tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        proc = start(batch([str(root)], out, server.url, "--contact-sheets"), tmp_path)
        sheets_dir = out / "contact-sheets"
        wait_until(lambda: any(sheets_dir.glob("sheet-*.jpg")), proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    drawn = sorted(sheets_dir.iterdir())
    assert all(p.name.startswith("sheet-") and p.suffix == ".jpg" for p in drawn), drawn
    assert 0 < len(drawn) < count // 8
    for sheet in drawn:
        with Image.open(sheet) as im:
            im.load()  # whole, not truncated


# -- answers charged, then timed out --------------------------------------------------------------


def test_timed_out_attempts_are_reported_as_possibly_charged(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        (root / f"img{i}.png").write_bytes(noise_image(600 + i))
    with emulator(latency=2.0) as server:
        args = batch([str(root)], tmp_path / "out", server.url, "--timeout", "0.5")
        done = run([*args, "--max-credits", "3"], tmp_path)
        wait_until(lambda: server.emulator.stats.credits_charged == 3)
    text = done.stdout
    assert done.returncode == 3, text + done.stderr
    assert re.search(r"^credits +0 +consumed, up to 3 more may have been charged", text, re.M), text
    assert re.search(
        r"^not sent +\d+ +\(the credit budget \(--max-credits\) was reached\)", text, re.M
    ), text


# -- one run per output folder --------------------------------------------------------------------


@pytest.mark.parametrize("first_manifest", [None, "mine.jsonl"])
def test_two_runs_into_one_output_folder_never_both_run_whatever_their_manifests(
    tmp_path: Path, first_manifest: str | None
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        (root / f"img{i}.png").write_bytes(noise_image(700 + i))
    out = tmp_path / "out"
    first_extra = [] if first_manifest is None else ["--manifest", str(tmp_path / first_manifest)]
    second_manifest = tmp_path / "other.jsonl"
    with start_emulator(credits=1000) as server:
        door = server.emulator
        assert isinstance(door, Door)
        door.admit(0)  # the first run's uploads wait at the door: it holds its locks meanwhile
        first = start(batch([str(root)], out, server.url, *first_extra), tmp_path)
        wait_until(lambda: door.held > 0, first)
        second = run(
            batch([str(root)], out, server.url, "--manifest", str(second_manifest)), tmp_path
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert re.fullmatch(r"error: another run is (writing into|using) .*\n", second.stderr)
        assert not second_manifest.exists()
        door.open()
        stdout, stderr = first.communicate(timeout=DEADLINE)
        assert first.returncode == 0, stdout + stderr
        assert server.emulator.stats.credits_charged == 6  # each image bought once


# -- the small things -----------------------------------------------------------------------------


def test_a_path_list_with_a_byte_order_mark_and_crlf_is_read(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(2):
        (root / f"img{i}.png").write_bytes(noise_image(800 + i))
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbfin/img0.png\r\nin/img1.png\r\n")
    out = tmp_path / "out"
    done = run(batch([str(listing)], out, server.url), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.rglob("*.normals.jpg")) == [
        "img0.png.normals.jpg",
        "img1.png.normals.jpg",
    ]


def test_a_short_refused_key_is_not_scrubbed_out_of_other_words(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "img0.png").write_bytes(noise_image(900))
    out = tmp_path / "out"
    done = run(
        batch([str(root)], out, server.url, "-v"), tmp_path, extra_env={"CLIPDROP_API_KEY": "i"}
    )
    assert done.returncode == 4, done.stdout + done.stderr
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    for text in (done.stdout, record["error"]):
        assert "***" not in text, text
        assert "Forbidden" in text, text


def test_normals_help_lists_its_own_exit_codes(tmp_path: Path) -> None:
    shown = subprocess.run(
        command("normals", "--help"),
        cwd=tmp_path,
        env={**env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    ).stdout
    codes = " ".join(shown[shown.index("Exit codes:") :].split())  # as one line, unwrapped
    assert "0 the normal map was written" in codes
    assert "73 the output cannot be written" in codes
    for batch_only in ("manifest", "not_sent", "every image", "--max-credits"):
        assert batch_only not in codes, batch_only


def _estimate(text: str) -> int:
    match = re.search(r"^time: +(?:about|at least) (?:(\d+)m)?(\d+)s", text, re.M)
    assert match is not None, text
    return int(match.group(1) or 0) * 60 + int(match.group(2))


def test_the_dry_run_estimate_counts_previews_npz_and_contact_sheets(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(60):
        picture = Image.new("RGB", (640, 640), (i * 4, 120, 200 - i * 3))
        picture.save(root / f"img{i:03d}.jpg", quality=85)
    out = tmp_path / "out"
    # The default quota (60/min) sets the plain estimate: the same however busy the machine.
    plain = run(batch([str(root)], out, server.url, "--dry-run", rate="60/60"), tmp_path)
    drawn = ["--dry-run", "--preview", "--npz", "--contact-sheets"]
    extras = run(batch([str(root)], out, server.url, *drawn, rate="60/60"), tmp_path)
    assert plain.returncode == extras.returncode == 0, plain.stdout + extras.stdout
    assert _estimate(extras.stdout) > _estimate(plain.stdout), (plain.stdout, extras.stdout)
    assert server.emulator.stats.credits_charged == 0
