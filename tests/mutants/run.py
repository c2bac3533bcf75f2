#!/usr/bin/env python3
"""Mutation check: apply each realistic slip in ``catalogue.py`` to a copy of the tree and run
the tests that should notice it; a slip no test notices is a test that is missing.

Usage (from the repository root, in the project's virtual environment)::

    python tests/mutants/run.py                  # every mutant, two at a time
    python tests/mutants/run.py --module credits # one module (see --list)
    python tests/mutants/run.py --mutant retry-429-backoff-on-top --verbose
    python tests/mutants/run.py --list

How it works. The tree (package, tests, configuration) is copied once per worker into a
temporary folder; the working tree is never written. For each mutant its file is rewritten in
the worker's copy (each edit's ``original`` text must occur exactly once in the pristine file, or
the mutant is reported stale and the run fails), the mutated file must still compile, and the
mutant's tests run there with ``python -m pytest -x -q -p no:randomly`` under a timeout, with no
bytecode written (a mutant of the same size written within the same second must never be
served from a stale ``.pyc``). Then the file is restored. A failing test, or a timeout, kills
the mutant; a green run means it survived.

Before the mutants, every test selection they use runs once on the unmutated copy: a selection
that fails there would "kill" anything, so the run stops and says so.

Mutants marked ``redis`` need a Redis server: ``CLIPNORMALS_REDIS_URL`` (as the tests use it),
or ``redis-server`` on the PATH (the tests then start a private one). Without either they are
skipped, and the output says how many and why; their tests run with ``CI=1`` so that a server
that vanishes fails them instead of skipping them silently.

The last line is ``critical: NN% killed (K of M)`` over the critical modules (limiter, credits,
retry, errors, preparation, atomic writes, manifest, plan, Redis limiter); the exit status is 0
when every mutant ran and the critical score reaches ``--target`` (90 by default).
Surviving mutants that are equivalent (their change preserves behaviour) are listed with the
reason in tests/README.md; they still count as survivors here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from catalogue import CRITICAL, MUTANTS, Mutant  # noqa: E402 - after the path is set

_COPIED = ("clipnormals", "tests", "examples", "docs")
_COPIED_FILES = ("conftest.py", "_clipnormals_pytest.py", "pyproject.toml", "README.md")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutants")
_SUMMARY = re.compile(r"(\d+ (?:passed|failed|errors?|skipped|deselected)\b[^=]*?) in [\d.]+s")


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, timeout, survived, skipped, stale, error
    seconds: float = 0.0
    detail: str = ""


def _copy_tree(target: Path) -> None:
    for name in _COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target / name, ignore=_IGNORED)
    for name in _COPIED_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target / name)


def _redis_available() -> tuple[bool, str]:
    url = os.environ.get("CLIPNORMALS_REDIS_URL")
    if url:
        try:
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure means: no usable server
            return False, f"CLIPNORMALS_REDIS_URL is set but does not answer ({exc})"
        return True, "CLIPNORMALS_REDIS_URL"
    if shutil.which("redis-server"):
        return True, "a private redis-server per test session"
    return False, "no CLIPNORMALS_REDIS_URL and no redis-server on the PATH"


def _environment(redis: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)
    if redis:
        env["CI"] = "1"  # the Redis tests fail instead of skipping when the server is gone
    return env


def _command(tests: Iterable[str]) -> list[str]:
    tests = list(tests)
    # Only the doctests of modules named explicitly; the ini's --doctest-modules would also
    # import every module of every folder named.
    options = [
        "-o",
        "addopts=-p no:cacheprovider --strict-markers",
        "-x",
        "-q",
        "-p",
        "no:randomly",
    ]
    if any(t.split("::")[0].startswith("clipnormals/") for t in tests):
        options.append("--doctest-modules")
    return [sys.executable, "-m", "pytest", *options, *tests]


def _run_tests(
    workdir: Path, tests: Iterable[str], *, redis: bool, timeout: float
) -> tuple[int | None, str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        _command(tests),
        cwd=workdir,
        env=_environment(redis),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        code = None
    return code, output, time.monotonic() - started


def _summary(output: str) -> str:
    found = _SUMMARY.findall(output)
    return found[-1] if found else output.strip().splitlines()[-1] if output.strip() else ""


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line
    return _summary(output)


_PRISTINE: dict[str, str] = {}


def _snapshot(mutants: Iterable[Mutant]) -> None:
    """Read every mutated file once, before any copy: later edits of the working tree (an
    editor, another branch checked out) then cannot leak into the run."""
    for mutant in mutants:
        if mutant.file not in _PRISTINE:
            with contextlib.suppress(OSError):  # reported as stale when applied
                _PRISTINE[mutant.file] = (ROOT / mutant.file).read_text()


def _apply(mutant: Mutant) -> tuple[str, str] | str:
    """(pristine text, mutated text), or why the mutant cannot be applied."""
    pristine = _PRISTINE.get(mutant.file)
    if pristine is None:
        return f"cannot read {mutant.file}"
    text = pristine
    for original, replacement in mutant.edits:
        count = text.count(original)
        if count != 1:
            return f"the original text occurs {count} times in {mutant.file}: {original[:60]!r}"
        text = text.replace(original, replacement)
    return pristine, text


def _run_mutant(mutant: Mutant, workdir: Path, timeout: float) -> Outcome:
    applied = _apply(mutant)
    if isinstance(applied, str):
        return Outcome(mutant, "stale", detail=applied)
    pristine, mutated = applied
    target = workdir / mutant.file
    target.write_text(mutated)
    try:
        try:
            compile(mutated, mutant.file, "exec")
        except SyntaxError as exc:
            return Outcome(mutant, "error", detail=f"the mutant does not compile: {exc}")
        code, output, seconds = _run_tests(
            workdir, mutant.tests, redis=mutant.redis, timeout=mutant.timeout or timeout
        )
    finally:
        target.write_text(pristine)
    if code is None:
        return Outcome(mutant, "timeout", seconds, "no answer within the timeout")
    if code == 0:
        detail = _summary(output)
        if "skipped" in detail:
            detail += " (skips: see --verbose)"
        return Outcome(mutant, "survived", seconds, detail)
    if code == 1:
        return Outcome(mutant, "killed", seconds, _first_failure(output))
    return Outcome(mutant, "error", seconds, f"pytest exit {code}: {_summary(output)}")


def _check(mutants: list[Mutant]) -> int:
    """Apply each mutant in memory, compile it, and check its tests exist."""
    bad = 0
    for mutant in mutants:
        applied = _apply(mutant)
        problem = applied if isinstance(applied, str) else None
        if problem is None:
            assert not isinstance(applied, str)
            try:
                compile(applied[1], mutant.file, "exec")
            except SyntaxError as exc:
                problem = f"does not compile: {exc}"
        missing = [t for t in mutant.tests if not (ROOT / t.split("::")[0]).exists()]
        if problem is None and missing:
            problem = f"missing tests: {missing}"
        if problem is not None:
            bad += 1
            print(f"{mutant.id}: {problem}")
    print(f"{len(mutants) - bad} of {len(mutants)} mutants apply and compile")
    return 1 if bad else 0


def _baseline_selections(mutants: list[Mutant], jobs: int) -> list[tuple[tuple[str, ...], bool]]:
    """Every test the mutants use, once: whole files swallow their node ids; split in ``jobs``."""
    wanted = sorted({t for m in mutants for t in m.tests})
    files = {t for t in wanted if "::" not in t}
    paths = [t for t in wanted if "::" not in t or t.split("::")[0] not in files]
    redis = any(m.redis for m in mutants)
    chunks = [tuple(paths[i::jobs]) for i in range(jobs)]
    return [(chunk, redis) for chunk in chunks if chunk]


def _baseline(
    selections: list[tuple[tuple[str, ...], bool]],
    workdirs: queue.Queue[Path],
    jobs: int,
    timeout: float,
) -> list[str]:
    """Run each selection on the unmutated copy; return the problems found."""
    problems: list[str] = []

    def one(selection: tuple[str, ...], redis: bool) -> None:
        workdir = workdirs.get()
        try:
            code, output, _ = _run_tests(workdir, selection, redis=redis, timeout=timeout)
        finally:
            workdirs.put(workdir)
        if code not in (0,):
            problems.append(
                f"unmutated tests fail ({'timeout' if code is None else f'exit {code}'}): "
                f"{' '.join(selection)}\n{output[-3000:]}"
            )

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda s: one(*s), selections))
    return problems


def _report(outcomes: list[Outcome], skipped_reason: str | None) -> float:
    """Print the score per module and the survivors; return the critical score (percent)."""
    by_module: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_module.setdefault(o.mutant.module, []).append(o)
    print()
    print(f"{'module':<14} {'killed':>7} {'of':>3} {'score':>6}  survived")
    critical_killed = critical_total = 0
    for module in sorted(by_module, key=lambda m: (m not in CRITICAL, m)):
        ran = [o for o in by_module[module] if o.status in ("killed", "timeout", "survived")]
        killed = sum(o.status in ("killed", "timeout") for o in ran)
        names = [o.mutant.id for o in ran if o.status == "survived"]
        skipped_here = sum(o.status == "skipped" for o in by_module[module])
        if skipped_here:
            names.append(f"({skipped_here} skipped: no Redis)")
        shown = f"{100 * killed / len(ran):.0f}%" if ran else "-"
        mark = "*" if module in CRITICAL else " "
        print(f"{mark}{module:<13} {killed:>7} {len(ran):>3} {shown:>6}  {', '.join(names)}")
        if module in CRITICAL:
            critical_killed += killed
            critical_total += len(ran)
    skipped = [o for o in outcomes if o.status == "skipped"]
    if skipped:
        print(
            f"\n{len(skipped)} Redis mutants SKIPPED ({skipped_reason}); set "
            "CLIPNORMALS_REDIS_URL or install redis-server to run them. The critical score "
            "below leaves them out."
        )
    survivors = [o for o in outcomes if o.status == "survived"]
    if survivors:
        print("\nsurvivors (a test is missing, or the mutant is equivalent: tests/README.md):")
        for o in survivors:
            print(f"  {o.mutant.id} [{o.mutant.file}]: {o.mutant.description}")
    broken = [o for o in outcomes if o.status in ("stale", "error")]
    if broken:
        print("\nmutants that could not be judged:")
        for o in broken:
            print(f"  {o.mutant.id}: {o.status}: {o.detail}")
    print("\n* critical module")
    score = 100.0 * critical_killed / critical_total if critical_total else 0.0
    print(f"critical: {score:.0f}% killed ({critical_killed} of {critical_total})")
    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="only this module (repeatable)")
    parser.add_argument("--mutant", action="append", help="only this mutant id (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per test run")
    parser.add_argument("--target", type=float, default=90.0, help="critical score to reach")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--check", action="store_true", help="only check that each mutant applies and compiles"
    )
    parser.add_argument("--verbose", action="store_true", help="print each test command")
    parser.add_argument(
        "--tests",
        action="append",
        help="run these tests instead of each mutant's own (repeatable): which test kills it",
    )
    args = parser.parse_args(argv)

    ids = [m.id for m in MUTANTS]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        parser.error(f"duplicate mutant ids: {sorted(duplicates)}")
    chosen = [
        m
        for m in MUTANTS
        if (not args.module or m.module in args.module) and (not args.mutant or m.id in args.mutant)
    ]
    if args.list:
        for m in chosen:
            flags = " [redis]" if m.redis else ""
            print(f"{m.module:<12} {m.id:<44} {m.description}{flags}")
        print(f"{len(chosen)} mutants")
        return 0
    if not chosen:
        parser.error("no mutant matches")
    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests)) for m in chosen]
    _snapshot(chosen)
    if args.check:
        return _check(chosen)

    started = time.monotonic()
    redis_ok, redis_how = _redis_available()
    runnable = [m for m in chosen if redis_ok or not m.redis]
    skipped = [Outcome(m, "skipped", detail=redis_how) for m in chosen if m not in runnable]
    print(
        f"{len(chosen)} mutants ({len(skipped)} skipped: {redis_how})"
        if skipped
        else f"{len(chosen)} mutants; Redis: {redis_how if redis_ok else 'not needed'}"
    )
    jobs = max(1, args.jobs)
    with tempfile.TemporaryDirectory(prefix="clipnormals-mutants-") as tmp:
        workdirs: queue.Queue[Path] = queue.Queue()
        for i in range(jobs):
            workdir = Path(tmp, f"w{i}")
            workdir.mkdir()
            _copy_tree(workdir)
            for name, text in _PRISTINE.items():  # the snapshot, whatever happened since
                (workdir / name).write_text(text)
            workdirs.put(workdir)
        if not args.no_baseline:
            selections = _baseline_selections(runnable, jobs)
            print("baseline: every test the mutants use, on the unmutated tree ...")
            sys.stdout.flush()
            problems = _baseline(selections, workdirs, jobs, args.timeout)
            if problems:
                print("\n\n".join(problems))
                print("baseline FAILED: fix the tests (or the tree) before judging mutants")
                return 2
            print(f"baseline: green in {time.monotonic() - started:.0f} s")
        lock = threading.Lock()
        outcomes: list[Outcome] = []

        def one(mutant: Mutant) -> Outcome:
            workdir = workdirs.get()
            try:
                outcome = _run_mutant(mutant, workdir, args.timeout)
            finally:
                workdirs.put(workdir)
            with lock:
                outcomes.append(outcome)
                print(
                    f"[{len(outcomes):>3}/{len(runnable)}] {outcome.status:<8} "
                    f"{mutant.module:<12} {mutant.id:<44} {outcome.seconds:5.1f}s  "
                    f"{outcome.detail[:100]}"
                )
                if args.verbose:
                    print(f"      {' '.join(_command(mutant.tests)[3:])}")
                sys.stdout.flush()
            return outcome

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, runnable))
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    outcomes.sort(key=lambda o: order[o.mutant.id])
    print(f"\n{len(runnable)} mutants run in {time.monotonic() - started:.0f} s, {jobs} at a time")
    score = _report(outcomes + skipped, redis_how if skipped else None)
    broken = any(o.status in ("stale", "error") for o in outcomes)
    return 0 if score >= args.target and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
