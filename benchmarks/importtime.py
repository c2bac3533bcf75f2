"""Import time: ``import clipnormals`` (and its client) against ``import httpx``.

Run from the repository root::

    python benchmarks/importtime.py              # 30 rounds
    python benchmarks/importtime.py --rounds 10

Each statement runs in a fresh interpreter under ``python -X importtime``; its time is the sum of
the cumulative times of the top-level imports it triggered (what the interpreter imports at
start-up, before the statement, is left out). The statements take turns in every round, so a
busy machine slows them alike; the medians and their ratio to ``import httpx`` are printed and
written to ``benchmarks/results/importtime.json``, with the modules each statement loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = "import httpx"
STATEMENTS = {
    "import httpx": BASELINE,
    "import clipnormals": "import clipnormals",
    # What a program that makes a client pays: the name resolves the client's own imports.
    "clipnormals.AsyncClient": "import clipnormals; clipnormals.AsyncClient",
    "clipnormals.NormalMap": "import clipnormals; clipnormals.NormalMap",
}
HEAVY = ("numpy", "PIL", "PIL.Image", "httpx", "anyio", "tenacity", "clipnormals.batch")


def _run(statement: str) -> tuple[float, list[str]]:
    """Milliseconds of imports ``statement`` triggered, and the heavy modules it loaded."""
    probe = f"{statement}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    total_us = 0
    started = False
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if name.strip() == "site":  # the last module of start-up
            started = True
            continue
        # Top-level entries have a single space before the name; nested ones more.
        if started and not name.startswith("  "):
            total_us += int(cumulative)
    loaded = json.loads(done.stdout.strip().replace("'", '"'))
    return total_us / 1000, loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/importtime.json")
    args = parser.parse_args(argv)
    names = list(STATEMENTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    loaded: dict[str, list[str]] = {}
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            ms, modules = _run(STATEMENTS[name])
            times[name].append(ms)
            loaded[name] = modules
    base = statistics.median(times[BASELINE])
    rows = []
    print(f"{'statement':<26} {'median':>9} {'vs httpx':>9}  heavy modules loaded")
    for name in names:
        median = statistics.median(times[name])
        rows.append(
            {
                "statement": STATEMENTS[name],
                "median_ms": round(median, 1),
                "min_ms": round(min(times[name]), 1),
                "max_ms": round(max(times[name]), 1),
                "ratio": round(median / base, 2),
                "loaded": loaded[name],
            }
        )
        print(f"{name:<26} {median:>7.1f}ms {median / base:>8.2f}x  {', '.join(loaded[name])}")
    report = {
        "benchmark": "importtime",
        "python": platform.python_version(),
        "rounds": args.rounds,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"written {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
