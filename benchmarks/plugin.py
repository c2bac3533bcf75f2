"""Start-up cost of the pytest plugin in a project that does not use it.

Run from the repository root, with clipnormals installed (``pip install -e .``: the plugin is
found through its ``pytest11`` entry point, as in a user's environment)::

    python benchmarks/plugin.py                 # 30 rounds, ~1 min
    python benchmarks/plugin.py --rounds 10

A throwaway project with one trivial test is run with ``python -m pytest`` in a fresh
interpreter, three ways per round, in an order that rotates from round to round so that a busy
machine slows all three alike:

- ``off``: ``-p no:clipnormals``, as if clipnormals were not installed;
- ``plugin``: the installed plugin, as every project in the environment gets it;
- ``eager``: ``-p no:clipnormals -p clipnormals.testing``: the same hooks and fixtures loaded
  through the package, which imports numpy, Pillow, httpx and the client. This is what the
  entry point did before the plugin became a top-level module that imports nothing of
  clipnormals, kept here for comparison.

Prints the median wall time of each and the ratios to ``off`` (target: ``plugin`` at most
1.15x), and writes them to ``benchmarks/results/plugin.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, machine, shown, write_json

VARIANTS: dict[str, tuple[str, ...]] = {
    "off": ("-p", "no:clipnormals"),
    "plugin": (),
    "eager": ("-p", "no:clipnormals", "-p", "clipnormals.testing"),
}
TARGET = 1.15


def installed_plugin() -> str | None:
    """The module of the installed ``clipnormals`` pytest11 entry point, if any."""
    try:
        dist = importlib.metadata.distribution("clipnormals")
    except importlib.metadata.PackageNotFoundError:
        return None
    for ep in dist.entry_points:
        if ep.group == "pytest11" and ep.name == "clipnormals":
            return ep.value
    return None


def run_once(project: Path, options: tuple[str, ...], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, str(project)],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS / "plugin.json")
    args = parser.parse_args(argv)
    plugin = installed_plugin()
    if plugin is None:
        print("clipnormals is not installed with its pytest11 entry point: pip install -e .")
        return 2
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "pytest.ini").write_text("[pytest]\n")  # its own rootdir, no settings
        (project / "test_unrelated.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
        for name in names:  # warm the file cache and the bytecode caches
            run_once(project, VARIANTS[name], env)
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                times[name].append(run_once(project, VARIANTS[name], env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {name: medians[name] / medians["off"] for name in names}
    print(f"plugin module: {plugin}; {args.rounds} interleaved rounds; median wall time")
    for name in names:
        print(f"  {name:<7} {medians[name] * 1000:7.0f} ms  {ratios[name]:.2f}x")
    verdict = "met" if ratios["plugin"] <= TARGET else "NOT met"
    print(f"plugin / off = {ratios['plugin']:.2f}x (target <= {TARGET}x: {verdict})")
    write_json(
        args.output,
        {
            "benchmark": "plugin",
            "machine": machine(),
            "plugin_module": plugin,
            "rounds": args.rounds,
            "median_s": medians,
            "ratio_to_off": ratios,
            "target": TARGET,
            "samples_s": times,
        },
    )
    print(f"written {shown(args.output)}")
    return 0 if ratios["plugin"] <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
