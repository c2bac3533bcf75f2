"""The ``clipnormals`` command scaled out: ``--redis-url``, ``--shard K/N`` and ``status``.

The commands run for real, as subprocesses, against the emulator in a process of its own on a
loopback port (``tests/emulator_process.py``: admin stats and an arrival log) and a real
``redis-server``. Every command runs with ``ResourceWarning`` as an error and must print none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from clipnormals._atomic import TEMP_SUFFIX
from clipnormals._batch.config import BatchConfig
from clipnormals._batch.folder import tidy_output_folder
from clipnormals._batch.manifest import ManifestState, ManifestWriter, RecordStatus, read_manifest
from clipnormals._batch.plan import make_plan
from clipnormals._batch.shard import Shard, manifest_paths

from .conftest import connections_to, own_database
from .emulator_process import EmulatorProcess
from .fakeapi import KEY, png_bytes

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 240.0  # seconds: a bound for a stuck command, never reached by a working one


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipnormals", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e["PYTHONWARNINGS"] = "error::ResourceWarning"
    e["CLIPDROP_API_KEY"] = KEY
    e.pop("CLIPDROP_BASE_URL", None)
    e.pop("CLIPNORMALS_REDIS_URL", None)
    e["COLUMNS"] = "200"
    return e


def checked(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Nothing a user must not see: no key, no traceback, no unclosed resource."""
    text = done.stdout + done.stderr
    assert KEY not in text
    assert "Traceback" not in text, done.stderr
    assert "ResourceWarning" not in text, done.stderr
    assert "unclosed" not in text, done.stderr
    return done


def run(args: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    e = env()
    e.update(extra_env)
    done = subprocess.run(
        args, cwd=cwd, env=e, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    return checked(done)


def portraits(folder: Path, n: int, *, first: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + n):
        path = folder / f"p{i:03d}.png"
        path.write_bytes(png_bytes(24 + i % 17, 20 + i // 17, seed=i))
        paths.append(path)
    return paths


def digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


# -- Shard: the split itself ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "1/0", "-1/3", "1/", "/3", "1.5/3", ""])
def test_a_bad_shard_is_a_value_error_that_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"K/N|K must be 1 to|at least one shard"):
        Shard.parse(text)


def test_shards_are_disjoint_and_cover_every_content_for_any_n() -> None:
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(2000)]
    for n in (1, 2, 3, 7):
        owners = [[k for k in range(1, n + 1) if Shard(k, n).owns_digest(d)] for d in digests]
        assert all(len(o) == 1 for o in owners), n
        sizes = Counter(o[0] for o in owners)
        assert min(sizes.values()) > len(digests) / n * 0.8  # an even split, roughly


def test_the_split_is_the_documented_one_and_stable() -> None:
    # First 8 bytes of the SHA-256 as a big-endian integer, modulo N, plus one. These values
    # pin it: a change of rule would split a job differently on machines of two versions.
    d = hashlib.sha256(b"").digest()  # e3b0c44298fc1c14...
    assert int.from_bytes(d[:8], "big") % 3 == 0x_E3B0_C442_98FC_1C14 % 3
    assert [k for k in (1, 2, 3) if Shard(k, 3).owns_digest(d)] == [0xE3B0C44298FC1C14 % 3 + 1]
    assert Shard(2, 3).owns_key("a.png") == Shard(2, 3).owns_digest(
        hashlib.sha256(b"a.png").digest()
    )


@pytest.mark.anyio
async def test_plans_of_the_shards_split_one_input_set(tmp_path: Path) -> None:
    src = tmp_path / "in"
    paths = portraits(src, 30)
    (src / "copy.png").write_bytes(paths[4].read_bytes())  # identical to p004.png
    (src / "notes.png").write_bytes(b"not an image at all")
    (src / "sub").mkdir()
    (src / "sub" / "copy2.png").write_bytes(paths[4].read_bytes())
    whole = await make_plan([str(src)], output_dir=tmp_path / "out", manifest=tmp_path / "m")
    everything = {m.key for j in whole.jobs for m in j.members} | {
        r.source for r in whole.unreadable
    }
    assert len(everything) == 33
    seen: list[set[str]] = []
    for k in (1, 2, 3):
        plan = await make_plan(
            [str(src)], output_dir=tmp_path / "out", manifest=tmp_path / "m", shard=Shard(k, 3)
        )
        keys = {m.key for j in plan.jobs for m in j.members} | {r.source for r in plan.unreadable}
        for job in plan.jobs:
            assert Shard(k, 3).owns_digest(job.digest)
        seen.append(keys)
        if "p004.png" in keys:  # identical images fall in one shard, as one job
            assert {"copy.png", "sub/copy2.png"} <= keys
            [job] = [j for j in plan.jobs if "p004.png" in {m.key for m in j.members}]
            assert len(job.members) == 3
    assert set().union(*seen) == everything
    assert sum(len(s) for s in seen) == len(everything)  # disjoint


def test_manifest_paths_finds_the_whole_job_and_every_shard(tmp_path: Path) -> None:
    for name in (
        "manifest.shard-2-of-3.jsonl",
        "manifest.shard-1-of-3.jsonl",
        "manifest.jsonl",
        "manifest.shard-x-of-3.jsonl",
        "other.jsonl",
    ):
        (tmp_path / name).write_text("")
    found = [p.name for p in manifest_paths(tmp_path, default="manifest.jsonl")]
    assert found == [
        "manifest.jsonl",
        "manifest.shard-1-of-3.jsonl",
        "manifest.shard-2-of-3.jsonl",
    ]


# -- the command line: bad values ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "1/0"])
def test_a_bad_shard_is_one_usage_error(tmp_path: Path, value: str) -> None:
    portraits(tmp_path / "in", 1)
    done = run(
        command("batch", "in", "-o", "out", "--emulator", "--plain", f"--shard={value}"), tmp_path
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "--shard" in line]
    assert len(errors) == 1, done.stderr
    assert "Invalid value" in errors[0]
    assert not (tmp_path / "out").exists()  # nothing written, nothing sent


def test_contact_sheets_need_the_whole_job(tmp_path: Path) -> None:
    portraits(tmp_path / "in", 1)
    done = run(
        command("batch", "in", "-o", "out", "--emulator", "--shard=1/2", "--contact-sheets"),
        tmp_path,
    )
    assert done.returncode == 2
    assert "contact sheets need the whole job" in done.stderr


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("http://:hunter2@127.0.0.1:1/0", 2, "invalid Redis URL"),
        ("redis://:hunter2@127.0.0.1:notaport/0", 2, "invalid Redis URL"),
        ("redis://:hunter2@127.0.0.1:1/0", 69, "Redis at 127.0.0.1:1/0"),
    ],
)
@pytest.mark.parametrize("via", ["option", "environment"])
def test_a_bad_or_unreachable_redis_url_is_one_line_without_the_password(
    tmp_path: Path, url: str, code: int, words: str, via: str
) -> None:
    portraits(tmp_path / "in", 2)
    args = command("batch", "in", "-o", "out", "--emulator", "--plain")
    if via == "option":
        done = run([*args, "--redis-url", url], tmp_path)
    else:
        done = run(args, tmp_path, CLIPNORMALS_REDIS_URL=url)
    assert done.returncode == code, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert words in done.stderr
    if code == 69:
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
        assert not list((tmp_path / "out").glob("*.normals.jpg"))  # nothing sent


# -- the command line, for real -----------------------------------------------------------------


@pytest.mark.loopback
@pytest.mark.slow
def test_shards_share_one_folder_and_status_sums_them(tmp_path: Path) -> None:
    paths = portraits(tmp_path / "in", 24)
    copies = [tmp_path / "in" / f"copy{i}.png" for i in range(4)]
    for i, copy in enumerate(copies):
        copy.write_bytes(paths[5 * i].read_bytes())
    spec = {"key": KEY, "credits": 100, "requests": 200, "per": 1.0, "latency": [0.0, 0.01]}
    with EmulatorProcess(spec) as server:
        runs = [
            run(
                command(
                    "batch",
                    "in",
                    "-o",
                    "out",
                    "--base-url",
                    server.url,
                    "--plain",
                    "--rate",
                    "200/1",
                    f"--shard={k}/3",
                ),
                tmp_path,
            )
            for k in (1, 2, 3)
        ]
        stats = server.stats()
        log = server.log()
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stdout for r in runs]
    out = tmp_path / "out"
    manifests = [out / f"manifest.shard-{k}-of-3.jsonl" for k in (1, 2, 3)]
    sources = [set(read_manifest(m).records) for m in manifests]
    assert sum(len(s) for s in sources) == 28
    assert set().union(*sources) == {p.name for p in [*paths, *copies]}
    assert not (out / "manifest.jsonl").exists()
    # Each content charged once, whichever shard its copies were in.
    assert stats["credits_charged"] == 24
    charged = Counter(d for _t, _s, c, d in log if c)
    assert len(charged) == 24
    assert set(charged.values()) == {1}
    for p in [*paths, *copies]:
        assert (out / f"{p.name}.normals.jpg").read_bytes()[:2] == b"\xff\xd8"
    for i, copy in enumerate(copies):  # a copy is recorded by the shard of its original
        [shard] = [k for k, s in enumerate(sources) if copy.name in s]
        assert paths[5 * i].name in sources[shard]

    status = run(command("status", "out"), tmp_path)
    assert status.returncode == 0, status.stdout
    lines = status.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["shard", "1/3"],
        ["shard", "2/3"],
        ["shard", "3/3"],
    ]
    assert lines[3].startswith("total")
    assert "28 images: 28 done" in lines[3]
    assert "24 credits" in lines[3]
    assert lines[-1] == "complete: every image is done"

    # A rerun of one shard has nothing to do; status still adds up.
    again = run(
        command(
            "batch",
            "in",
            "-o",
            "out",
            "--base-url",
            "http://127.0.0.1:9",
            "--plain",
            "--shard=2/3",
        ),
        tmp_path,
    )
    assert again.returncode == 0, again.stdout


def test_status_says_which_shards_have_not_reported(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    line = (
        '{"source":"a.png","path":"/in/a.png","sha256":"ab","status":"not_sent",'
        '"error_type":"CreditBudgetError","error":"not sent"}\n'
    )
    (out / "manifest.shard-2-of-3.jsonl").write_text(line)
    done = run(command("status", "out"), tmp_path)
    assert done.returncode == 1
    assert "shard 1/3: no manifest yet (not started)" in done.stdout
    assert "shard 3/3: no manifest yet (not started)" in done.stdout
    assert "not complete: 1 image to send again, 2 shards not started" in done.stdout
    empty = run(command("status", "nowhere"), tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.startswith("error: no manifest in nowhere")


# -- the whole key shared: three processes, one balance ---------------------------------------

QUOTA = 20
PER = 4.0
OWN_DB = 11


CREDITS = 50
IMAGES = 120


@pytest.mark.redis
@pytest.mark.loopback
@pytest.mark.slow
def test_three_batches_on_one_key_share_quota_and_credits(
    redis_url: str, name: str, tmp_path: Path
) -> None:
    portraits(tmp_path / "in", IMAGES)
    # A database of its own, so that the connections counted are this test's processes', not
    # those of anything else using the server.
    redis_url = own_database(redis_url, OWN_DB)
    raw = redis.Redis.from_url(redis_url)
    spec = {"key": KEY, "credits": CREDITS, "requests": QUOTA, "per": PER, "latency": [0.02, 0.1]}
    with raw, EmulatorProcess(spec) as server:
        connections = connections_to(raw, OWN_DB)
        procs = [
            subprocess.Popen(
                command(
                    "batch",
                    "in",
                    "-o",
                    "out",
                    "--base-url",
                    server.url,
                    "--plain",
                    "-v",
                    "--rate",
                    f"{QUOTA}/{PER:g}",
                    "--concurrency",
                    "3",
                    f"--shard={k}/3",
                    "--redis-url",
                    redis_url,
                    "--redis-name",
                    name,
                ),
                cwd=tmp_path,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in (1, 2, 3)
        ]
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=DEADLINE)
            results.append(
                checked(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
            )
        stats = server.stats()
        log = server.log()
        assert connections_to(raw, OWN_DB) <= connections  # every process closed its connections
        state = raw.hgetall(f"clipnormals:{{{name}}}:credits:state")

    # The server: exactly the balance charged, no 402, no 429, the quota kept in every window.
    assert stats["credits_charged"] == CREDITS
    assert stats["statuses"].get("402", 0) == 0
    assert stats["statuses"].get("429", 0) == 0
    assert stats["max_in_window"] <= QUOTA
    arrivals = sorted(t for t, _s, _c, _d in log)
    for i, start in enumerate(arrivals):  # the same, from the arrival log
        assert sum(1 for t in arrivals[i:] if t < start + PER) <= QUOTA
    assert int(state[b"consumed"]) == CREDITS

    # Each process stopped for credits, and listed the images it did not send.
    out = tmp_path / "out"
    done_total = 0
    for k, result in enumerate(results, start=1):
        assert result.returncode == 3, (result.stdout[-2000:], result.stderr)
        records = read_manifest(out / f"manifest.shard-{k}-of-3.jsonl").records.values()
        unsent = [r.source for r in records if r.status is RecordStatus.NOT_SENT]
        done = [r for r in records if r.status is RecordStatus.DONE]
        assert len(unsent) + len(done) == len(records)
        assert unsent, f"shard {k} sent everything: nothing stopped it"
        listed = [line for line in result.stdout.splitlines() if " not_sent " in line]
        assert {line.split()[2].rstrip(":") for line in listed} == set(unsent)
        assert "top up the account" in result.stdout
        done_total += len(done)
    assert done_total == CREDITS

    status = run(command("status", "out"), tmp_path)
    assert status.returncode == 1
    assert f"120 images: {CREDITS} done, 0 skipped, {IMAGES - CREDITS} not_sent" in status.stdout
    assert f"; {CREDITS} credits" in status.stdout


@pytest.mark.redis
@pytest.mark.loopback
def test_normals_shares_the_ledger(redis_url: str, name: str, tmp_path: Path) -> None:
    [image] = portraits(tmp_path, 1)
    raw = redis.Redis.from_url(redis_url)
    spec = {"key": KEY, "credits": 5, "requests": 100, "per": 1.0, "latency": [0.0, 0.01]}
    with raw, EmulatorProcess(spec) as server:
        done = run(
            command(
                "normals",
                image.name,
                "--base-url",
                server.url,
                "--redis-url",
                redis_url,
                "--redis-name",
                name,
            ),
            tmp_path,
        )
        state = raw.hgetall(f"clipnormals:{{{name}}}:credits:state")
    assert done.returncode == 0, done.stderr
    assert "(4 credits left)" in done.stdout
    assert int(state[b"consumed"]) == 1


def test_a_shard_leaves_the_fresh_temporaries_of_the_others_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fresh = out / f".a.png.normals.jpg.1{TEMP_SUFFIX}"  # another shard is writing it
    stale = out / f".b.png.normals.jpg.2{TEMP_SUFFIX}"  # left by a run killed long ago
    for path in (fresh, stale):
        path.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    sharded = BatchConfig(inputs=["in"], output_dir=out, shard=Shard(1, 2))
    with ManifestWriter(sharded.manifest_path) as writer:
        tidy_output_folder(sharded, writer, ManifestState(records={}))
    assert fresh.exists()
    assert not stale.exists()
    whole = BatchConfig(inputs=["in"], output_dir=out)  # one run owns the folder
    with ManifestWriter(whole.manifest_path) as writer:
        tidy_output_folder(whole, writer, ManifestState(records={}))
    assert not fresh.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.redis
@pytest.mark.loopback
@pytest.mark.slow
def test_a_redis_server_lost_mid_run_stops_the_batch_with_69(name: str, tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server on the PATH (a server of its own, to stop mid-run)")
    portraits(tmp_path / "in", 30)
    port = _free_port()
    redis_proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(url) as probe:
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        spec = {"key": KEY, "credits": 100, "requests": 4, "per": 1.0, "latency": [0.0, 0.01]}
        with EmulatorProcess(spec) as server:
            args = command(
                "batch",
                "in",
                "-o",
                "out",
                "--base-url",
                server.url,
                "--plain",
                "-v",
                "--rate",
                "4/1",
                "--redis-url",
                url,
                "--redis-name",
                name,
            )
            batch = subprocess.Popen(
                args,
                cwd=tmp_path,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + DEADLINE
            while server.stats()["successes"] < 3:
                assert batch.poll() is None, batch.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            redis_proc.terminate()
            redis_proc.wait(timeout=30)
            stdout, stderr = batch.communicate(timeout=DEADLINE)
            stats = server.stats()
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()
            redis_proc.wait()
    checked(subprocess.CompletedProcess(args, batch.returncode, stdout, stderr))
    assert batch.returncode == 69, stdout
    records = list(read_manifest(tmp_path / "out" / "manifest.jsonl").records.values())
    statuses = Counter(r.status for r in records)
    assert len(records) == 30
    assert statuses[RecordStatus.DONE] == stats["credits_charged"]
    assert statuses[RecordStatus.DONE] + statuses[RecordStatus.NOT_SENT] == 30
    assert statuses[RecordStatus.NOT_SENT] > 0
    unsent = [r for r in records if r.status is RecordStatus.NOT_SENT]
    assert {r.error_type for r in unsent} == {"SharedStateError"}
    assert f"127.0.0.1:{port}" in stdout
    advice = "check --redis-url and the Redis server, then run the same command again"
    assert stdout.rstrip().endswith(advice)


def test_status_while_a_run_writes_says_it_is_not_complete(tmp_path: Path) -> None:
    # Before: the images recorded so far were all done, so a job still running was reported
    # "complete" (exit 0).
    out = tmp_path / "out"
    out.mkdir()
    line = '{"source":"a.png","path":"/in/a.png","sha256":"ab","status":"done"}\n'
    (out / "manifest.jsonl").write_text(line)
    with ManifestWriter(out / "manifest.jsonl", output_dir=out):  # a run holds it
        running = run(command("status", "out"), tmp_path)
    assert running.returncode == 1, running.stdout
    assert "running now" in running.stdout
    assert "not complete: 1 run still writing" in running.stdout
    done = run(command("status", "out"), tmp_path)
    assert done.returncode == 0, done.stdout
    assert "complete: every image is done" in done.stdout
