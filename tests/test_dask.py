"""The Dask recipe on a real local cluster: three worker processes share one key through Redis.

The emulator serves on loopback (``start_in_thread``, with its admin stats) from a process of
its own (``tests/emulator_process.py``), so that its clock and CPU are apart from this process,
which also runs the Dask scheduler; a thin ASGI middleware in front of it logs every request's
arrival time, status, whether it was charged and the SHA-256 of the uploaded file, so that "no
image charged twice" is checked image by image on the server's side. Time is scaled by 5: 60
requests per 12 s, a spacing of 0.2 s, so that a start may come up to 0.1 s late on a busy
machine before the limiter gives its slot up (see ``clipnormals.redis.RedisLimiter``). Each
task runs at most 3 requests at a time: a killed worker takes with it the limiter slots its
waiting requests had reserved (by design, see ``clipnormals.redis.RedisLimiter``), so fewer
waiters lose less of the quota.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import signal
import threading
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

import clipnormals

from .conftest import connections_to, own_database
from .emulator_process import EmulatorProcess
from .fakeapi import KEY, png_bytes

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.loopback]

ROOT = Path(__file__).resolve().parents[1]
QUOTA = 60
PER = 12.0
CREDITS = 200
DISTINCT = 240
COPIES = 20
LEASE = 5.0  # longer than any stall of a live worker on a loaded machine
LATENCY = (0.05, 0.25)  # seconds, uniform
OWN_DB = 12  # the Redis database of this test (see own_database)


def _recipe(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """docs/recipes/dask_batch.py, importable here and in the worker processes (Dask sends
    functions by reference: the workers import the module too)."""
    folder = str(ROOT / "docs" / "recipes")
    monkeypatch.syspath_prepend(folder)
    path = os.pathsep.join(filter(None, [folder, str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)  # the worker processes inherit it
    return importlib.import_module("dask_batch")


def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _portraits(folder: Path) -> tuple[list[str], dict[str, str]]:
    """DISTINCT small PNGs and COPIES exact copies of some; path -> digest of what is uploaded."""
    paths, uploads = [], {}
    for i in range(DISTINCT):
        path = folder / f"p{i:03d}.png"
        path.write_bytes(png_bytes(24 + i % 17, 20 + i // 17, seed=i))
        paths.append(str(path))
    for i in range(COPIES):
        path = folder / f"copy{i:02d}.png"
        path.write_bytes(Path(paths[7 * i]).read_bytes())
        paths.append(str(path))
    for path in paths:
        uploads[path] = hashlib.sha256(clipnormals.images.prepare_image(path).data).hexdigest()
    return paths, uploads


def _kill_a_worker_holding_credits(
    dask: Any, raw: redis.Redis, name: str
) -> tuple[int, int, set[str]]:
    """SIGKILL one worker process while it holds reservations; its pid, the credits it held and
    the claims (content hashes) it held."""
    held_key = f"clipnormals:{{{name}}}:credits:held"
    for _ in range(200):
        busy = [address for address, keys in dask.processing().items() if keys]
        if busy:
            pid = dask.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGSTOP)  # frozen: what it holds cannot change while we look
            try:
                held = {o.decode(): int(n) for o, n in raw.hgetall(held_key).items()}
                credits = sum(n for o, n in held.items() if f":{pid}:" in o)
                if credits:
                    os.kill(pid, signal.SIGKILL)
            finally:
                os.kill(pid, signal.SIGCONT)
            if credits:  # dead: its claims stay as they are until its lease lapses
                claims = set()
                for key in raw.scan_iter(f"clipnormals:{{{name}}}:claim:*"):
                    state, owner = raw.hmget(key, "state", "owner")
                    if state == b"held" and owner is not None and f":{pid}:" in owner.decode():
                        claims.add(key.decode().rsplit(":", 1)[1])
                return pid, credits, claims
        time.sleep(0.05)
    raise AssertionError("no worker ever held a reservation")


def test_a_batch_across_a_dask_cluster_shares_one_key(
    redis_url: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(monkeypatch)
    folder = tmp_path / "in"
    folder.mkdir()
    paths, uploads = _portraits(folder)
    monkeypatch.setenv("CLIPDROP_API_KEY", KEY)  # the workers read it from their environment
    # A database of its own, so that the connections counted are this test's workers', not
    # those of anything else using the server.
    redis_url = own_database(redis_url, OWN_DB)
    raw = redis.Redis.from_url(redis_url)
    outcomes: list[dict[str, Any]] = []
    failure: list[BaseException] = []
    with (
        raw,
        EmulatorProcess(
            {"key": KEY, "credits": CREDITS, "requests": QUOTA, "per": PER, "latency": LATENCY}
        ) as server,
        distributed.LocalCluster(
            n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as dask,
    ):
        # Workers import the recipe (clipnormals, numpy, Pillow, redis-py) before the clock
        # starts: the share of the quota measures the sharing, not a cold start.
        dask.run(importlib.import_module, "dask_batch")
        connections = connections_to(raw, OWN_DB)
        job = recipe.Job(
            redis_url=redis_url,
            name=name,
            out_dir=str(tmp_path / "out"),
            requests=QUOTA,
            per=PER,
            base_url=server.url,
            lease=LEASE,
            max_concurrency=3,
        )

        def batch() -> None:
            try:
                outcomes.extend(recipe.run(dask, paths, job, chunk=16))
            except BaseException as exc:
                failure.append(exc)

        runner = threading.Thread(target=batch)
        runner.start()
        deadline = time.monotonic() + 120
        while server.stats()["successes"] < CREDITS // 3 and time.monotonic() < deadline:
            assert runner.is_alive(), failure
            time.sleep(0.1)
        pid, held, in_flight = _kill_a_worker_holding_credits(dask, raw, name)
        runner.join(timeout=180)
        assert not runner.is_alive(), "the batch did not finish"
        assert failure == []
        stats = server.stats()
        log = server.log()
        state = {
            k.decode(): int(v)
            for k, v in raw.hgetall(f"clipnormals:{{{name}}}:credits:state").items()
            if k != b"probe"
        }
        expired = {
            o.decode(): int(n)
            for o, n in raw.hgetall(f"clipnormals:{{{name}}}:credits:expired").items()
        }
        left_held = raw.hgetall(f"clipnormals:{{{name}}}:credits:held")
        # every worker closed what it opened (the killed one's sockets died with it)
        assert connections_to(raw, OWN_DB) <= connections

    # The server: no 429, no 402, never more than the quota in a window, the balance used up.
    assert stats["statuses"].get("429", 0) == 0
    assert stats["statuses"].get("402", 0) == 0
    assert stats["max_in_window"] <= QUOTA
    assert stats["credits_charged"] == CREDITS

    # Every image accounted for, once.
    assert sorted(o["path"] for o in outcomes) == sorted(paths)
    assert {o["status"] for o in outcomes} <= {"done", "not sent"}, outcomes
    done = {uploads[o["path"]] for o in outcomes if o["status"] == "done"}
    for o in outcomes:
        if o["status"] == "done":
            assert o["output"] == f"{_file_hash(o['path'])}.jpg"
            assert (tmp_path / "out" / o["output"]).read_bytes()[:2] == b"\xff\xd8"

    # No image charged twice, except those the killed worker had in flight.
    charges = Counter(d for _, _, charged, d in log if charged)
    twice = {d for d, n in charges.items() if n > 1}
    path_of = {uploads[p]: p for p in paths}
    in_flight_uploads = {
        uploads[p]
        for p in paths
        if Path(p).read_bytes() and hashlib.sha256(Path(p).read_bytes()).hexdigest() in in_flight
    }
    assert twice <= in_flight_uploads, [path_of[d] for d in twice]
    assert sum(charges[d] - 1 for d in twice) <= held
    assert CREDITS - held <= len(done) <= CREDITS

    # The killed worker's reservations expired into "uncertain"; nothing is left held.
    assert left_held == {}
    assert sum(n for o, n in expired.items() if f":{pid}:" in o) == held
    assert (state["reserved"], state["uncertain"]) == (0, held)

    # The quota was used: at least 95% of it from the first request to the last.
    arrivals = sorted(t for t, _, _, _ in log)
    share = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * PER / QUOTA
    gaps = sorted((round(b - a, 2), round(a - arrivals[0], 1)) for a, b in pairwise(arrivals))
    assert share >= 0.95, f"{share:.1%} of the quota; longest gaps (s, at): {gaps[-5:]}"


def test_the_recipe_runs_as_documented(tmp_path: Path) -> None:
    from .test_recipes import run_recipe

    proc = run_recipe("dask_batch.py", "--emulator", "out", cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    # 30 distinct portraits and 10 copies, 25 credits: which 25 are done depends on the order
    # the workers take them in; a copy is done when its original is
    found = re.fullmatch(
        r"40 images: (\d+) done \(25 distinct maps\), (\d+) not sent for credits, 0 failed",
        lines[-2],
    )
    assert found is not None, lines
    done, not_sent = int(found[1]), int(found[2])
    assert 25 <= done <= 35
    assert done + not_sent == 40
    assert lines[-1].startswith("server: 25 credits charged, 0 429s, 0 402s, at most ")
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 25
