"""The ``clipnormals`` command when things go wrong, run for real: a subprocess of
``python -m clipnormals`` against an emulator on a loopback port, with real signals (SIGINT,
SIGTERM, SIGKILL) and real files (FIFOs, symlinks, loops, read-only folders, ``/proc``).

Every test asserts a guarantee, never a speed; a test that interrupts a run waits for evidence
(a manifest line, the emulator's counters, a line the run printed) before it acts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipnormals import NormalMap
from clipnormals._batch.manifest import ManifestRecord, RecordStatus, read_manifest
from clipnormals._normals import sheets
from clipnormals.emulator import (
    Emulator,
    EmulatorConfig,
    Latency,
    RunningServer,
    ServerLimit,
    start_in_thread,
)

from .corpus import make_corpus, noise_image
from .test_cli_e2e import KEY, command, env

pytestmark = pytest.mark.loopback

DEADLINE = 120.0


def emulator(
    credits: int = 1000, *, rate: tuple[int, float] = (50, 1.0), latency: float = 0.0
) -> RunningServer:
    requests, per = rate
    config = EmulatorConfig(
        keys={KEY: credits},
        limit=ServerLimit(requests=requests, per=per, policy="sliding", retry_after="precise"),
        latency=Latency.constant(latency),
    )
    return start_in_thread(Emulator(config))


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with emulator() as running:
        yield running


def batch(inputs: list[str], out: Path, url: str, *extra: str, rate: str = "50/1") -> list[str]:
    return command(
        "batch", *inputs, "-o", str(out), "--base-url", url, "--rate", rate, "--plain", *extra
    )


def run(
    args: list[str], cwd: Path, *, as_user: bool = False, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    e = env()
    e.update(extra_env or {})
    if as_user:
        args = unprivileged(args)
    done = subprocess.run(
        args, cwd=cwd, env=e, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    assert KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def records(out: Path) -> dict[str, ManifestRecord]:
    return read_manifest(out / "manifest.jsonl").records


def wait_until(predicate: object, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():  # type: ignore[operator]
        if proc is not None:
            assert proc.poll() is None, "the run ended before the test could act"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def done_records(out: Path) -> int:
    try:
        return sum(1 for r in records(out).values() if r.status is RecordStatus.DONE)
    except FileNotFoundError:
        return 0


def summary_counts(text: str) -> dict[str, int]:
    counts = {}
    for name in ("done", "skipped", "failed", "invalid", "not sent"):
        match = re.search(rf"^{name}\s+(\d+)", text, re.M)
        assert match is not None, text
        counts[name] = int(match.group(1))
    return counts


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unprivileged(args: list[str]) -> list[str]:
    """``args`` run without the capabilities that let root ignore file permissions."""
    if os.geteuid() != 0:
        return args
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *args]


# -- 1. one clear line, never a traceback or a hang --------------------------------------------


def test_a_fifo_given_as_input_is_refused_at_once(tmp_path: Path, server: RunningServer) -> None:
    fifo = tmp_path / "portraits"
    os.mkfifo(fifo)
    done = run(batch([str(fifo)], tmp_path / "out", server.url), tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == f"error: {fifo} is a FIFO, not a file or a folder"
    assert server.emulator.stats.requests == 0
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.parametrize("kind", ["missing", "broken link", "link loop"])
def test_an_input_that_cannot_be_read_is_one_line_and_exit_2(
    tmp_path: Path, server: RunningServer, kind: str
) -> None:
    bad = tmp_path / "input"
    if kind == "broken link":
        bad.symlink_to(tmp_path / "gone")
    elif kind == "link loop":
        bad.symlink_to(tmp_path / "input")
    done = run(batch([str(bad)], tmp_path / "out", server.url), tmp_path)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert str(bad) in line
    assert {"missing": "no such file", "broken link": "broken", "link loop": "loop"}[kind] in line
    assert server.emulator.stats.requests == 0


def _output_cases(tmp_path: Path) -> dict[str, Path]:
    as_file = tmp_path / "a-file"
    as_file.write_text("not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    return {"a file": as_file, "read-only": read_only / "out", "under /proc": Path("/proc/out")}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry run"])
@pytest.mark.parametrize("case", ["a file", "read-only", "under /proc"])
def test_an_output_folder_that_cannot_be_written_stops_before_the_first_request(
    tmp_path: Path, server: RunningServer, case: str, dry: bool
) -> None:
    corpus = make_corpus(tmp_path / "in", 3)
    out = _output_cases(tmp_path)[case]
    if case == "under /proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    args = batch([str(corpus.root)], out, server.url, *(["--dry-run"] if dry else []))
    # Root ignores permission bits: the read-only case runs without that privilege.
    done = run(args, tmp_path, as_user=case == "read-only")
    assert done.returncode == 73, done.stdout + done.stderr
    line = one_line(done.stderr)
    assert line.startswith("error: ")
    assert str(out.parent if case == "read-only" else out) in line
    assert server.emulator.stats.requests == 0
    if case == "read-only":
        assert list((tmp_path / "read-only").iterdir()) == []


def test_a_second_run_on_a_locked_output_folder_is_one_line(
    tmp_path: Path, server: RunningServer
) -> None:
    from clipnormals._batch.manifest import ManifestWriter

    corpus = make_corpus(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    with ManifestWriter(out / "manifest.jsonl"):
        done = run(batch([str(corpus.root)], out, server.url), tmp_path)
    assert done.returncode == 2
    assert "another run" in one_line(done.stderr)
    assert server.emulator.stats.requests == 0


def test_odd_entries_inside_a_folder_are_recorded_invalid_with_a_reason(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 2)
    root = corpus.root
    (root / "broken.png").symlink_to(root / "gone.png")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "pipe-without-image-name")
    (root / "album.jpg").mkdir()
    (root / "album.jpg" / "inside.png").write_bytes(noise_image(7))
    done = run(batch([str(root)], tmp_path / "out", server.url), tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    latest = records(tmp_path / "out")
    reasons = {
        "broken.png": "broken symbolic link",
        "loop.jpg": "link loop",
        "pipe.jpg": "FIFO",
        "pipe-without-image-name": "FIFO",
        "album.jpg": "folder, though named like an image",
    }
    for key, reason in reasons.items():
        assert latest[key].status is RecordStatus.INVALID, key
        assert reason in (latest[key].error or ""), latest[key]
    assert sum(1 for r in latest.values() if r.status is RecordStatus.DONE) == 2
    assert summary_counts(done.stdout)["invalid"] == len(reasons)


def test_an_internal_error_is_one_line_naming_the_traceback_file(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 1)
    # A bug planted in the real command: the plan step raises something nobody expects.
    planted = (
        "import runpy, sys, clipnormals._batch.runner as r\n"
        "async def broken(*a, **k):\n"
        "    raise ZeroDivisionError('planted bug')\n"
        "r.make_plan = broken\n"
        "sys.argv = ['clipnormals', *sys.argv[1:]]\n"
        "runpy.run_module('clipnormals', run_name='__main__')\n"
    )
    args = [
        sys.executable,
        "-c",
        planted,
        *batch([str(corpus.root)], tmp_path / "o", server.url)[3:],
    ]
    done = run(args, tmp_path)
    assert done.returncode == 70
    line = one_line(done.stderr)
    assert "internal error (ZeroDivisionError)" in line
    path = Path(line.rsplit(" ", 1)[1])
    try:
        text = path.read_text()
        assert "planted bug" in text
        assert "Traceback" in text
        assert KEY not in text
    finally:
        path.unlink()


# -- 2. one Ctrl-C stops sending; every image in exactly one count ------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_after_the_first_signal_no_request_starts(tmp_path: Path, sig: signal.Signals) -> None:
    # A slow quota and eight images handed over at once: most of them wait for a token.
    corpus = make_corpus(tmp_path / "in", 40)
    out = tmp_path / "out"
    with emulator(rate=(120, 60.0)) as server:
        args = batch([str(corpus.root)], out, server.url, "--concurrency", "8", "--rate", "120/60")
        proc = start(args, tmp_path)
        try:
            wait_until(lambda: done_records(out) >= 3, proc)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, stdout + stderr
        # The run said how many requests it had sent when it stopped; none started after.
        stopping = re.search(r"stopping: no new request starts \((\d+) requests? sent\)", stdout)
        assert stopping is not None, stdout
        sent = int(stopping.group(1))
        assert f"requests {sent:>5}" in stdout
        assert server.emulator.stats.requests == sent
        # Those in flight finished and were recorded; the rest are not_sent, never sent.
        assert server.emulator.stats.credits_charged == done_records(out)
        latest = records(out)
        not_sent = [r for r in latest.values() if r.status is RecordStatus.NOT_SENT]
        assert not_sent
        assert all(r.attempts == 0 and r.error_type == "Interrupted" for r in not_sent)
        counts = summary_counts(stdout)
        assert sum(counts.values()) == 40
        assert counts["done"] + counts["not sent"] == 40


def test_a_second_ctrl_c_aborts_and_every_image_is_still_counted_once(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 31)
    out = tmp_path / "out"
    with emulator(rate=(120, 60.0), latency=0.5) as server:
        args = batch([str(corpus.root)], out, server.url, "--concurrency", "8", "--rate", "120/60")
        proc = start(args, tmp_path)
        try:
            wait_until(lambda: done_records(out) >= 2, proc)
            proc.send_signal(signal.SIGINT)
            assert proc.stdout is not None
            wait_until(lambda: "stopping" in (proc.stdout.readline() or "stopping"), proc)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, stderr
        counts = summary_counts(stdout)
        assert sum(counts.values()) == 31, stdout
        latest = records(out)
        assert len(latest) == 31  # every image has a record, even after an abort
        resumed = run(args, tmp_path)
        assert resumed.returncode == 0, resumed.stdout
        assert (
            summary_counts(resumed.stdout)["skipped"] + summary_counts(resumed.stdout)["done"] == 31
        )


# -- 3. kill -9 loses at most --concurrency credits ---------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "extra"),
    [
        # Slow writes (previews, .npz, one thread): answers come faster than they are written.
        (4, ("--preview", "--npz", "--threads", "1")),
        # Fast writes in many threads: answers are committed to the manifest in groups.
        (8, ("--threads", "2")),
    ],
    ids=["slow-writes", "group-commits"],
)
def test_sigkill_at_random_moments_loses_at_most_concurrency_credits_each_time(
    tmp_path: Path, concurrency: int, extra: tuple[str, ...]
) -> None:
    """A fast server. Each answer is written and recorded before its slot takes a new request
    (with group commits: once the commit that carried its record is done), so whatever the
    instant of a kill, at most --concurrency answers the server charged are unrecorded."""
    kills = int(os.environ.get("CLIPNORMALS_TEST_KILLS", "5"))  # more for the figures
    rng = random.Random(20260)
    corpus = make_corpus(tmp_path / "in", 14 * kills + 10)  # more than the kills use up
    out = tmp_path / "out"
    lost_per_kill: list[int] = []
    with emulator(rate=(200, 1.0)) as server:
        stats = server.emulator.stats
        args = batch(
            [str(corpus.root)], out, server.url, "--concurrency", str(concurrency),
            "--rate", "200/1", *extra,
        )  # fmt: skip
        for _ in range(kills):
            charged_before = stats.credits_charged
            started = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            proc = start(args, tmp_path)
            target = done_records(out) + rng.randint(1, 8)
            try:
                wait_until(lambda t=target: done_records(out) >= t, proc)  # type: ignore[misc]
                proc.kill()
            finally:
                proc.communicate()
            last = -1
            while stats.credits_charged != last:  # the server finishes what it had
                last = stats.credits_charged
                time.sleep(0.2)
            recorded = sum(
                r.credits
                for r in records(out).values()
                if r.status is RecordStatus.DONE and r.attempts and r.time >= started
            )
            lost_per_kill.append(stats.credits_charged - charged_before - recorded)
        final = run(args, tmp_path)
        assert final.returncode == 0, final.stdout
    print(f"credits lost per kill -9 (concurrency {concurrency}): {lost_per_kill}")
    assert all(0 <= lost <= concurrency for lost in lost_per_kill), lost_per_kill
    # Outputs written but not recorded when killed were adopted, not bought again.
    assert stats.credits_charged - corpus.distinct <= sum(lost_per_kill)


# -- 4. one line with the right advice ----------------------------------------------------------


def test_a_refused_key_is_one_line_of_advice(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 12)
    with emulator() as server:
        server.emulator.revoke(KEY)
        done = run(batch([str(corpus.root)], tmp_path / "out", server.url), tmp_path)
    assert done.returncode == 4
    out = done.stdout
    assert out.count("check the API key") == 1
    assert out.strip().splitlines()[-1].startswith("check the API key")
    assert "not_sent" not in out  # the images not sent are counted, not listed one by one
    assert "run the same command again" not in out
    assert summary_counts(out)["not sent"] == 11


def test_running_out_of_credits_says_top_up_and_no_word_of_a_reserve(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 10)
    with emulator(credits=3) as server:
        done = run(batch([str(corpus.root)], tmp_path / "out", server.url), tmp_path)
        assert server.emulator.stats.statuses.get(402, 0) == 0
    assert done.returncode == 3
    assert "reserve" not in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("top up the account")
    assert summary_counts(done.stdout)["not sent"] == 7


# -- 5. estimates from what is measured, a dry run that tells what the budget does -----------


def test_the_dry_run_says_what_max_credits_will_do_and_exits_as_the_run(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 31)
    out = tmp_path / "out"
    dry = run(
        batch([str(corpus.root)], out, server.url, "--dry-run", "--max-credits", "5"), tmp_path
    )
    real = run(batch([str(corpus.root)], out, server.url, "--max-credits", "5"), tmp_path)
    assert dry.returncode == real.returncode == 3
    assert "would send 5 of 31 uploads" in dry.stdout
    assert "26 images recorded not_sent" in dry.stdout
    assert summary_counts(real.stdout)["not sent"] == 26


def _pty_run(args: list[str], cwd: Path, columns: int) -> str:
    """Run ``args`` on a pseudo-terminal ``columns`` wide; return what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    e = env()
    e.pop("COLUMNS", None)
    e["TERM"] = "xterm-256color"
    proc = subprocess.Popen(args, cwd=cwd, env=e, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # the other end closed
                if exc.errno == errno.EIO:
                    break
                raise
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=DEADLINE)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r|\n")
_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def _frames(shown: str) -> list[str]:
    """What the terminal drew, one piece per line drawn (colours dropped, cursor moves cut)."""
    return [piece for piece in _ANSI.split(_STYLE.sub("", shown)) if piece.strip()]


def test_the_bar_stays_readable_at_80_columns(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 30)
    with emulator(rate=(20, 1.0)) as server:
        args = batch([str(corpus.root)], tmp_path / "out", server.url, rate="20/1")
        args.remove("--plain")
        shown = _pty_run(args, tmp_path, columns=80)
    screen = _frames(shown)
    bars = [line for line in screen if "━" in line and "ETA" in line]
    assert bars, shown
    for line in bars:
        assert len(line.rstrip()) <= 80, line
        assert "…" not in line  # fields are dropped whole, never cut
        assert re.search(r"\d+/30", line)
    assert any(line.startswith("done        30") for line in screen)


# -- 6. reruns append only what changed; lost records are adopted, not re-bought --------------


def test_a_noop_rerun_writes_nothing_and_redraws_no_sheet(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 9)
    out = tmp_path / "out"
    args = batch([str(corpus.root)], out, server.url, "--contact-sheets")
    assert run(args, tmp_path).returncode == 0
    manifest = (out / "manifest.jsonl").read_bytes()
    sheets_before = {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("contact-sheets/*")
    }
    assert len(sheets_before) == 2
    again = run(args, tmp_path)
    assert again.returncode == 0
    assert (out / "manifest.jsonl").read_bytes() == manifest  # not one line appended
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("contact-sheets/*")}
    assert after == sheets_before
    assert "contact sheets: 0 drawn, 2 unchanged" in again.stdout
    assert summary_counts(again.stdout)["skipped"] == 9


def test_outputs_whose_records_were_lost_are_adopted_not_bought_again(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 40, duplicates=3)
    out = tmp_path / "out"
    args = batch([str(corpus.root)], out, server.url)
    assert run(args, tmp_path).returncode == 0
    paid = server.emulator.stats.credits_charged
    assert paid == corpus.distinct
    # the run's receipts: one log, a line per upload (not a file each)
    (log,) = (out / ".clipnormals" / "receipts").iterdir()
    assert len(log.read_bytes().splitlines()) == paid
    manifest = out / "manifest.jsonl"
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) * 3 // 10])  # cut at 30%, mid-line

    again = run(args, tmp_path)

    assert again.returncode == 0, again.stdout
    assert server.emulator.stats.credits_charged == paid  # nothing bought again
    assert "adopted" in again.stdout
    latest = records(out)
    assert {k for k, r in latest.items() if r.status is RecordStatus.DONE} == set(corpus.good)
    assert sum(r.credits for r in latest.values()) == paid


def test_an_output_whose_receipt_names_other_content_is_not_adopted(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    a, b = "a.png", "b.png"
    (root / a).write_bytes(noise_image(1, size=(32, 24)))
    (root / b).write_bytes(noise_image(2, size=(40, 30)))  # another size: another map
    out = tmp_path / "out"
    args = batch([str(root)], out, server.url)
    assert run(args, tmp_path).returncode == 0
    # b's output put in a's place, and a's record lost: b's receipt is for b, not a.
    (out / f"{a}.normals.jpg").write_bytes((out / f"{b}.normals.jpg").read_bytes())
    (out / "manifest.jsonl").unlink()
    paid = server.emulator.stats.credits_charged
    again = run(args, tmp_path)
    assert again.returncode == 0
    assert server.emulator.stats.credits_charged == paid + 1  # a, sent again
    assert (out / f"{a}.normals.jpg").read_bytes() != (out / f"{b}.normals.jpg").read_bytes()


# -- 7. file names cannot drive the terminal ----------------------------------------------------


def test_control_characters_in_names_are_escaped_everywhere(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    evil = "evil\x1b[31mred\nline\r.png"
    (root / evil).write_bytes(noise_image(1))
    (root / "broken\x1b]0;title\x07.jpg").write_bytes(b"not an image")
    plain = run(batch([str(root)], tmp_path / "out", server.url, "-v"), tmp_path)
    dry = run(batch([str(root)], tmp_path / "out2", server.url, "--dry-run", "-v"), tmp_path)
    for text in (plain.stdout + plain.stderr, dry.stdout + dry.stderr):
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\r" not in text
        assert "evil\\x1b[31mred\\nline\\r.png" in text
    assert not any(line.startswith("line") for line in plain.stdout.splitlines())
    on_terminal = batch([str(root)], tmp_path / "out3", server.url, "-v")
    on_terminal.remove("--plain")
    shown = _pty_run(on_terminal, tmp_path, 100)
    assert "\x1b[31mred" not in shown
    assert "\x1b]0;title" not in shown
    assert "evil\\x1b[31mred\\nline\\r.png" in shown
    assert "broken\\x1b]0;title\\x07.jpg" in shown


# -- 8. names in any script on previews and sheets -----------------------------------------------


def test_unicode_names_are_drawn_with_the_bundled_font(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    name = "Zoë Ünïcode portrait 😀 中.png"
    (root / name).write_bytes(noise_image(3, size=(96, 128)))
    out = tmp_path / "out"
    done = run(batch([str(root)], out, server.url, "--preview", "--contact-sheets"), tmp_path)
    assert done.returncode == 0, done.stdout
    nm = NormalMap((out / f"{name}.normals.jpg").read_bytes())
    with Image.open(out / f"{name}.preview.jpg") as im:
        preview = np.asarray(im.convert("L"), dtype=np.float32)
    good = sheets.contact_sheet([(root / name, nm)], names=[name], tile=320)
    with pytest.MonkeyPatch.context() as mp:  # the old way: Pillow's default font, boxes
        mp.setattr(sheets, "_runs", lambda text, font: [(text, True)])
        mp.setattr(sheets, "label_font", lambda size: sheets.ImageFont.load_default(size=size))
        tofu = sheets.contact_sheet([(root / name, nm)], names=[name], tile=320)
    # The name's row: the preview matches the bundled font's drawing, not the default's.
    band = slice(20, 50)
    ours = np.abs(preview[band] - np.asarray(good.convert("L"), np.float32)[band]).mean()
    theirs = np.abs(preview[band] - np.asarray(tofu.convert("L"), np.float32)[band]).mean()
    assert ours < theirs / 2, (ours, theirs)
    font = sheets.label_font(20)
    assert all(sheets._has_glyph(font, ch) for ch in "ZoëÜnïcode😀")
    assert not sheets._has_glyph(font, "中")  # drawn as its code point in a box instead
    assert list((out / "contact-sheets").glob("sheet-*.jpg"))


# -- 9. the small things ---------------------------------------------------------------------


def test_normals_without_o_writes_next_to_the_image(tmp_path: Path, server: RunningServer) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    (images / "face.png").write_bytes(noise_image(5))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run(command("normals", str(images / "face.png"), "--base-url", server.url), elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (images / "face.png.normals.jpg").exists()
    assert list(elsewhere.iterdir()) == []


def test_the_emulator_command_names_its_own_flag(tmp_path: Path) -> None:
    # Refused before binding anything: no socket is opened on a non-loopback address.
    done = run(command("emulator", "--host", "0.0.0.0", "--port", "0"), tmp_path)  # noqa: S104
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "--allow-public" in line
    assert "allow_public=True" not in line
    helped = run(command("emulator", "--help"), tmp_path)
    assert "--allow-public" in helped.stdout


def test_usage_lines_name_the_arguments_plainly(tmp_path: Path) -> None:
    done = run(command("batch"), tmp_path)
    assert done.returncode == 2
    assert "Usage: clipnormals batch [OPTIONS] INPUT..." in done.stderr
    helped = run(command("batch", "--help"), tmp_path)
    assert "{INPUT" not in helped.stdout
    assert "<list[Path]>" not in helped.stdout
    assert re.search(r"^\s+INPUT\.\.\.\s+Image files", helped.stdout, re.M)


def test_counts_are_in_good_english_and_hidden_files_are_counted(
    tmp_path: Path, server: RunningServer
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(noise_image(1))
    (root / "copy-of-a.png").write_bytes(noise_image(1))
    (root / "notes.txt").write_text("a note")
    (root / ".hidden.png").write_bytes(noise_image(2))
    (root / ".cache").mkdir()
    (root / "a.png.normals.jpg").write_bytes(noise_image(3))
    dry = run(batch([str(root)], tmp_path / "out", server.url, "--dry-run", "-v"), tmp_path)
    assert "(1 other file ignored, 2 hidden, 1 earlier output left out)" in dry.stdout
    assert "to upload: 1 credit" in dry.stdout
    # -v lists every image's plan.
    assert re.search(r"upload\s+a\.png", dry.stdout)
    assert re.search(r"copy\s+copy-of-a\.png", dry.stdout)
    done = run(batch([str(root)], tmp_path / "out", server.url), tmp_path)
    assert "(1 uploaded, 1 copy of identical images)" in done.stdout
    assert "1 copies" not in done.stdout


def test_a_fifo_given_to_normals_is_refused(tmp_path: Path, server: RunningServer) -> None:
    fifo = tmp_path / "face.png"
    os.mkfifo(fifo)
    done = run(command("normals", str(fifo), "--base-url", server.url), tmp_path)
    assert done.returncode == 2
    assert "FIFO" in one_line(done.stderr)
    assert server.emulator.stats.requests == 0


# -- an unreachable server (issue 9, item 9, batch side) ----------------------------------------


def test_an_unreachable_server_is_one_reason_and_exit_69(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 10)
    url = f"http://127.0.0.1:{closed_port()}"
    # The real command, with only the client's retry budget shortened (the client's own
    # fail-fast for a server it never reached makes this unnecessary once it lands).
    shortened = (
        "import functools, runpy, sys\n"
        "import clipnormals._core.client as c\n"
        "c.RetryPolicy = functools.partial(c.RetryPolicy, total=1.0, initial=0.05,"
        " max_backoff=0.2)\n"
        "sys.argv = ['clipnormals', *sys.argv[1:]]\n"
        "runpy.run_module('clipnormals', run_name='__main__')\n"
    )
    args = [sys.executable, "-c", shortened, *batch([str(corpus.root)], tmp_path / "out", url)[3:]]
    done = run(args, tmp_path)
    assert done.returncode == 69, done.stdout + done.stderr
    assert done.stdout.count("stopping: cannot reach the server") == 1
    assert done.stdout.strip().splitlines()[-1].startswith("check --base-url")
    counts = summary_counts(done.stdout)
    assert sum(counts.values()) == 10
    assert counts["done"] == 0
