#!/usr/bin/env python3
"""Run the full test suite several times in a row beside CPU-bound load: a flake finder.

The suite must pass on a busy machine, not only on a quiet one. This script starts ``--load``
processes that each spin one core (two by default: on a 2-core machine the suite then gets a
third of the CPU), runs the README's test command (``python -m pytest``) ``--runs`` times in a
row beside them (three by default), prints each run's result and time, and stops at the first
failure with that run's output (``--keep-going`` runs them all and lists every failed test
instead: the way to find every flaky test at once). It exits 0 when every run passed, 1 at the
first failure, and 2 when it was interrupted or a run went past ``--run-timeout``.

The load is bounded whatever happens: each load process exits when this script is gone (it
polls its parent several times a second, and on Linux the kernel also kills it when the parent
dies), and after ``--max-seconds`` in any case; on a normal exit, an exception, Ctrl-C or
SIGTERM the script kills them and the running suite itself.

Usage (from the repository root, in the project's virtual environment)::

    python scripts/busy-suite.py                    # 3 runs beside 2 busy processes
    python scripts/busy-suite.py --runs 5 --load 3  # harder
    python scripts/busy-suite.py -- -m "not slow" tests/test_redis_limiter.py  # pytest args

The Redis tests use ``CLIPNORMALS_REDIS_URL`` when it is set, else start a private
``redis-server``; both are passed through unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent

# One busy core. Stops when its parent changes (this script died, even by SIGKILL) or when its
# time is up; on Linux PR_SET_PDEATHSIG makes the kernel send SIGKILL at the parent's death too.
_BURNER = """
import os, sys, time
parent = int(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(0)
x = 0
while os.getppid() == parent and time.monotonic() < end:
    for i in range(20000):
        x ^= i
"""

_SUMMARY = re.compile(
    r"^=* ?(\d+ (?:passed|failed|error|errors|skipped|deselected)\b.*?) in [\d.]+s"
)


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived: clean up like Ctrl-C."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _start_load(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", _BURNER, str(os.getpid()), str(seconds)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            print(f"busy-suite: process {proc.pid} did not exit", file=sys.stderr)


def _die_with_parent() -> None:
    """In the suite's process: on Linux, SIGKILL when this script dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the suite and everything it started (servers, child processes)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _summary(output: str) -> str:
    for line in reversed(output.splitlines()):
        found = _SUMMARY.match(line.strip())
        if found:
            return found.group(1)
    return "no pytest summary line"


def _failure_report(output: str) -> str:
    """The part of pytest's output that explains a failure: from FAILURES/ERRORS to the end."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^=+ (FAILURES|ERRORS) =+$", line):
            return "\n".join(lines[i:])
    return "\n".join(lines[-200:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the test suite N times in a row beside CPU-bound load.",
        epilog="Arguments after -- go to pytest.",
    )
    parser.add_argument("--runs", type=int, default=3, help="suite runs in a row (default 3)")
    parser.add_argument("--load", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=3600.0,
        help="seconds one run may take before it is killed and counted as a failure",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="hard limit on the load's life (default: runs * run-timeout + 60)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="do not stop at a failure: run every run, then list each run's failed tests",
    )
    parser.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.load < 0:
        parser.error("--runs must be at least 1 and --load at least 0")
    limit = args.max_seconds or args.runs * args.run_timeout + 60.0

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    command = [sys.executable, "-m", "pytest", *args.pytest_args]
    print(f"busy-suite: {args.load} busy processes, {args.runs} runs of: {' '.join(command[1:])}")
    print(f"busy-suite: CLIPNORMALS_REDIS_URL={os.environ.get('CLIPNORMALS_REDIS_URL', '(unset)')}")
    sys.stdout.flush()
    load = _start_load(args.load, limit)
    suite: subprocess.Popen[bytes] | None = None
    logs = Path(tempfile.mkdtemp(prefix="busy-suite-"))
    failed: list[int] = []
    try:
        for run in range(1, args.runs + 1):
            log = logs / f"run-{run}.log"
            started = time.monotonic()
            with log.open("wb") as out:
                # its own session: a kill reaches the servers and processes the suite started
                suite = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # no threads here: safe
                )
                try:
                    code = suite.wait(timeout=args.run_timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(suite)
                    code = None
            suite = None
            took = time.monotonic() - started
            output = log.read_text(errors="replace")
            alive = sum(p.poll() is None for p in load)
            status = "passed" if code == 0 else ("TIMED OUT" if code is None else "FAILED")
            print(
                f"run {run}/{args.runs}: {status} in {took:.0f} s ({_summary(output)}); "
                f"{alive} of {args.load} busy processes running; log {log}"
            )
            sys.stdout.flush()
            if code != 0:
                if not args.keep_going:
                    print(_failure_report(output))
                    return 2 if code is None else 1
                failed.append(run)
                for line in output.splitlines():
                    if line.startswith(("FAILED ", "ERROR ")):
                        print(f"    {line}")
                sys.stdout.flush()
        if failed:
            print(f"busy-suite: runs {failed} of {args.runs} failed; logs in {logs}")
            return 1
        print(f"busy-suite: all {args.runs} runs passed beside {args.load} busy processes")
        return 0
    except (KeyboardInterrupt, _Stop) as exc:
        print(f"busy-suite: interrupted ({type(exc).__name__} {exc}); stopping", file=sys.stderr)
        return 2
    finally:
        if suite is not None:
            _kill_group(suite)
        _stop(load)


if __name__ == "__main__":
    sys.exit(main())
