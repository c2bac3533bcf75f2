"""The real ``clipnormals`` command in a subprocess, against the emulator on a loopback port.

A kill -9 can land while a request is in flight: the server has charged for an answer the
client never reads, and no client can get that credit back. The resume test therefore kills
at an instant when every credit charged so far has its output recorded, and then asserts exact
payment; a second test kills at an arbitrary instant and asserts the bound: at most one lost
credit per request in flight.

A test that must act "midway" does not race the run: the emulator sits behind a door
(:class:`Door`) that lets a given number of uploads through and holds the next ones, unseen by
the emulator (neither counted nor charged). The run cannot finish before the test acts, however
slow the test process is on a busy machine, and "nothing is owed" is a fact the test waits for
(no upload inside the emulator, every charged credit recorded) instead of an instant it hunts.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from clipnormals._atomic import TEMP_SUFFIX
from clipnormals._batch.manifest import ManifestRecord, RecordStatus, read_manifest
from clipnormals.emulator import (
    ENDPOINT,
    Emulator,
    EmulatorConfig,
    RunningServer,
    ServerLimit,
    start_in_thread,
)

from .corpus import Corpus, make_corpus

pytestmark = pytest.mark.loopback

REPO = Path(__file__).resolve().parents[2]
KEY = "e2e-secret-key-4b9c1d"
RATE = (50, 1.0)
CONCURRENCY = 4
DEADLINE = 60.0


class Door(Emulator):
    """The emulator behind a door: ``admit(n)`` lets ``n`` more uploads in and holds the next
    ones at the door, where the emulator never sees them (not counted, not charged);
    ``turn_away()`` answers the held ones 503 without letting them in; ``open()`` lets every
    upload in again. ``inside`` counts uploads the emulator is handling."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__(config)
        self._lock = threading.Lock()
        self._allowance: int | None = None  # None: open
        self._turning_away = False
        self.held = 0
        self.inside = 0

    def admit(self, count: int) -> None:
        with self._lock:
            self._allowance = count

    def open(self) -> None:
        with self._lock:
            self._allowance = None
            self._turning_away = False

    def turn_away(self) -> None:
        with self._lock:
            self._turning_away = True

    def _enter(self) -> str:
        with self._lock:
            if self._turning_away:
                return "away"
            if self._allowance is None:
                self.inside += 1
                return "in"
            if self._allowance > 0:
                self._allowance -= 1
                self.inside += 1
                return "in"
            return "wait"

    @property
    def app(self) -> Any:
        inner = super().app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] != ENDPOINT:
                await inner(scope, receive, send)
                return
            state = self._enter()
            if state == "wait":
                with self._lock:
                    self.held += 1
                try:
                    # the door is opened from the test's thread: polled, not awaited
                    while (state := self._enter()) == "wait":  # noqa: ASYNC110
                        await anyio.sleep(0.005)
                finally:
                    with self._lock:
                        self.held -= 1
            if state == "away":
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            try:
                await inner(scope, receive, send)
            finally:
                with self._lock:
                    self.inside -= 1

        return app


def start_emulator(credits: int) -> RunningServer:
    requests, per = RATE
    config = EmulatorConfig(
        keys={KEY: credits},
        limit=ServerLimit(requests=requests, per=per, policy="sliding", retry_after="precise"),
    )
    return start_in_thread(Door(config))


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with start_emulator(credits=1000) as running:
        yield running


def door(server: RunningServer) -> Door:
    assert isinstance(server.emulator, Door)
    return server.emulator


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipnormals", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e["CLIPDROP_API_KEY"] = KEY
    e.pop("CLIPDROP_BASE_URL", None)
    return e


def batch_args(corpus: Corpus, out: Path, server: RunningServer, *extra: str) -> list[str]:
    requests, per = RATE
    return command(
        "batch", str(corpus.root), "-o", str(out), "--base-url", server.url,
        "--rate", f"{requests}/{per:g}", "--concurrency", str(CONCURRENCY), "--plain", *extra,
    )  # fmt: skip


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    assert KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def records(out: Path) -> dict[str, ManifestRecord]:
    return read_manifest(out / "manifest.jsonl").records


def uploads_recorded(out: Path) -> int:
    """Credits the manifest accounts for: one per output that came from a request."""
    return sum(r.credits for r in records(out).values() if r.status is RecordStatus.DONE)


def wait_until(what: str, predicate: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    """Poll for evidence (a manifest line, the emulator's counters); never a fixed sleep."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE:.0f} s"
        time.sleep(0.01)


def wait_for_records(out: Path, proc: subprocess.Popen[str], at_least: int) -> None:
    wait_until(f"{at_least} uploads were recorded", lambda: uploads_recorded(out) >= at_least, proc)


def kill_when_nothing_is_owed(
    proc: subprocess.Popen[str], server: RunningServer, out: Path
) -> None:
    """SIGKILL ``proc`` once every credit charged has its output recorded. The door holds
    every new upload, so once no upload is inside the emulator, nothing more is charged."""
    gate, stats = door(server), server.emulator.stats
    wait_until(
        "every charged credit was recorded, with the next uploads held at the door",
        lambda: (
            gate.held > 0 and gate.inside == 0 and stats.credits_charged == uploads_recorded(out)
        ),
        proc,
    )
    proc.kill()
    proc.wait(timeout=DEADLINE)


def reopen(server: RunningServer) -> None:
    """After a kill: answer the uploads held for the dead client 503, then open the door."""
    gate = door(server)
    gate.turn_away()
    deadline = time.monotonic() + DEADLINE
    while gate.held:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate.open()


def output_files(out: Path) -> dict[str, Path]:
    return {
        p.relative_to(out).as_posix().removesuffix(".normals.jpg"): p
        for p in out.rglob("*.normals.jpg")
    }


def assert_whole_jpegs(paths: Iterator[Path] | list[Path]) -> None:
    for path in paths:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            assert im.format == "JPEG", path
            im.load()  # a truncated file raises here


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_sigkill_midway_then_resume_pays_exactly_once_per_distinct_image(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 190, duplicates=8, corrupt=True)
    out = tmp_path / "out"
    args = batch_args(corpus, out, server)
    door(server).admit(80)  # the run cannot get further than 80 uploads before the kill

    proc = start(args, tmp_path)
    try:
        wait_for_records(out, proc, at_least=60)
        kill_when_nothing_is_owed(proc, server, out)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    reopen(server)
    partial = output_files(out)
    assert 60 <= len(partial) < len(corpus.good)
    assert server.emulator.stats.credits_charged == uploads_recorded(out) == 80
    assert_whole_jpegs(list(partial.values()))  # atomic: whole files or none

    resumed = run(args, tmp_path)
    assert resumed.returncode == 1, resumed.stdout  # the corrupt files
    assert "invalid      4" in resumed.stdout

    final = output_files(out)
    assert set(final) == set(corpus.good)  # exactly one output per good image
    assert_whole_jpegs(list(final.values()))
    assert temporaries(out) == []
    stats = server.emulator.stats
    assert stats.credits_charged == corpus.distinct
    assert server.emulator.credits(KEY) == 1000 - corpus.distinct
    assert stats.rate_limited == 0
    assert 429 not in stats.statuses
    latest = records(out)
    for key in corpus.corrupt:
        assert latest[key].status is RecordStatus.INVALID
        assert latest[key].error_type == "InvalidImageError"
        assert key in (latest[key].error or "")
    assert all(latest[k].status in (RecordStatus.DONE, RecordStatus.SKIPPED) for k in corpus.good)

    again = run(args, tmp_path)
    assert again.returncode == 1
    assert f"skipped    {len(corpus.good)}" in again.stdout
    assert server.emulator.stats.credits_charged == corpus.distinct


def test_sigkill_at_any_instant_loses_at_most_the_requests_in_flight(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 80, duplicates=4)
    out = tmp_path / "out"
    args = batch_args(corpus, out, server)
    door(server).admit(50)  # the kill lands before the run can finish, whatever the load
    proc = start(args, tmp_path)
    try:
        wait_for_records(out, proc, at_least=25)
        proc.kill()
    finally:
        proc.communicate()
    reopen(server)
    assert_whole_jpegs(list(output_files(out).values()))

    resumed = run(args, tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    assert set(output_files(out)) == set(corpus.good)
    assert temporaries(out) == []
    lost = server.emulator.stats.credits_charged - corpus.distinct
    assert 0 <= lost <= CONCURRENCY
    assert server.emulator.stats.rate_limited == 0


def test_credit_limited_run_stops_cleanly_and_finishes_with_more_credits(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 60)
    out = tmp_path / "out"
    with start_emulator(credits=40) as server:
        args = batch_args(corpus, out, server)
        first = run(args, tmp_path)
        assert first.returncode == 3, first.stdout
        stats = server.emulator.stats
        assert stats.statuses.get(402, 0) == 0
        assert stats.credits_charged == 40
        latest = records(out)
        not_sent = {k for k, r in latest.items() if r.status is RecordStatus.NOT_SENT}
        assert len(not_sent) == 20
        assert not_sent == set(corpus.good) - set(output_files(out))
        assert all(latest[k].error_type == "CreditBudgetError" for k in not_sent)
        assert "not sent    20" in first.stdout

        server.emulator.set_credits(KEY, 100)
        second = run(args, tmp_path)
        assert second.returncode == 0, second.stdout
        assert stats.credits_charged == 60
        assert stats.statuses.get(402, 0) == 0
        assert set(output_files(out)) == set(corpus.good)


def test_ctrl_c_stops_sending_and_records_everything_paid_for(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 120)
    out = tmp_path / "out"
    args = batch_args(corpus, out, server)
    gate = door(server)
    gate.admit(30)
    proc = start(args, tmp_path)
    try:
        wait_for_records(out, proc, at_least=20)
        # Ctrl-C while uploads are in flight: held at the door, so there surely are some.
        wait_until("uploads were held at the door", lambda: gate.held > 0, proc)
        proc.send_signal(signal.SIGINT)
        gate.open()  # the uploads in flight are answered; a graceful stop waits for them
        _, stderr = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    # Graceful: requests in flight were answered and recorded; nothing paid is lost.
    assert server.emulator.stats.credits_charged == uploads_recorded(out) > 30
    latest = records(out)
    not_sent = [r for r in latest.values() if r.status is RecordStatus.NOT_SENT]
    assert not_sent
    assert all(r.error_type == "Interrupted" for r in not_sent)

    resumed = run(args, tmp_path)
    assert resumed.returncode == 0
    assert server.emulator.stats.credits_charged == corpus.distinct


def test_dry_run_reports_rejections_and_cost_and_sends_nothing(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 10, duplicates=2, corrupt=True)
    out = tmp_path / "out"
    done = run(batch_args(corpus, out, server, "--dry-run"), tmp_path)
    assert done.returncode == 1
    assert "would be rejected" in done.stdout
    for key in corpus.corrupt:
        assert key in done.stdout
    assert f"to upload: {corpus.distinct} credits" in done.stdout
    assert server.emulator.stats.requests == 0
    assert not out.exists()


def test_missing_key_and_plain_http_are_usage_errors(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 1)
    e = env()
    e.pop("CLIPDROP_API_KEY")
    no_key = subprocess.run(
        command("batch", str(corpus.root), "-o", str(tmp_path / "out"), "--plain",
                "--base-url", "http://127.0.0.1:9"),
        cwd=tmp_path, env=e, capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert no_key.returncode == 2
    assert "CLIPDROP_API_KEY" in no_key.stderr
    assert "Traceback" not in no_key.stderr
    insecure = run(
        command("batch", str(corpus.root), "-o", str(tmp_path / "out"),
                "--base-url", "http://proxy.example.com"),
        tmp_path,
    )  # fmt: skip
    assert insecure.returncode == 2
    assert "plain http" in insecure.stderr


def test_emulator_flag_runs_without_key_or_network(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "in", 6)
    e = env()
    e.pop("CLIPDROP_API_KEY")
    done = subprocess.run(
        command("batch", str(corpus.root), "-o", str(tmp_path / "out"), "--emulator",
                "--rate", "100/1", "--plain", "--npz"),
        cwd=tmp_path, env=e, capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(output_files(tmp_path / "out")) == set(corpus.good)
    assert len(list((tmp_path / "out").rglob("*.normals.npz"))) == len(corpus.good)


def test_normals_command_writes_one_map_with_the_key_from_a_named_variable(
    tmp_path: Path, server: RunningServer
) -> None:
    corpus = make_corpus(tmp_path / "in", 1)
    key = next(iter(corpus.good))
    target = tmp_path / "one.jpg"
    e = env()
    e["TEAM_CLIPDROP_KEY"] = e.pop("CLIPDROP_API_KEY")
    done = subprocess.run(
        command("normals", str(corpus.root / key), "-o", str(target), "--base-url", server.url,
                "--api-key-env", "TEAM_CLIPDROP_KEY", "--npz"),
        cwd=tmp_path, env=e, capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert_whole_jpegs([target])
    assert target.with_suffix(".npz").exists()
    assert "999 credits left" in done.stdout
    assert KEY not in done.stdout + done.stderr


def test_demo_runs_in_under_a_minute_and_says_what_it_did(tmp_path: Path) -> None:
    e = env()
    e.pop("CLIPDROP_API_KEY")
    started = time.monotonic()
    done = subprocess.run(
        command("demo", "--plain"), cwd=tmp_path, env=e, capture_output=True, text=True,
        timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < DEADLINE
    demo = tmp_path / "clipnormals-demo"
    maps = list((demo / "normals").rglob("*.normals.jpg"))
    assert len(maps) == 8
    assert_whole_jpegs(maps)
    assert list((demo / "normals" / "contact-sheets").glob("sheet-*.jpg"))
    assert (demo / "normals" / "manifest.jsonl").exists()
    text = done.stdout
    assert "synthetic" in text
    assert "scaled" in text
    assert "0 credits spent" in text
    # Running it again starts over in the folder it made.
    again = subprocess.run(
        command("demo", "--plain"), cwd=tmp_path, env=e, capture_output=True, text=True,
        timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert again.returncode == 0


def test_emulator_command_serves_the_api_on_loopback(tmp_path: Path) -> None:
    import httpx

    from .corpus import noise_image

    proc = subprocess.Popen(
        command("emulator", "--port", "0", "--keys", "k-1:3", "--rate", "100/1",
                "--log-level", "warning"),
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("emulator listening on http://127.0.0.1:"), first
        url = first.split()[3].rstrip(":")
        response = httpx.post(
            f"{url}/portrait-surface-normals/v1",
            headers={"x-api-key": "k-1"},
            files={"image_file": ("a.png", noise_image(1), "image/png")},
            timeout=DEADLINE,
        )
        assert response.status_code == 200
        assert response.headers["x-remaining-credits"] == "2"
        assert response.headers["content-type"] == "image/jpeg"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=DEADLINE)
    assert "k-1" not in first
