"""The benchmark scripts' own logic, where a mistake would crash a run or skew its figures."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import anyio.lowlevel
import httpx
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.parametrize("way", ["bare", "workers"])
def test_overhead_baselines_count_transient_failures_instead_of_crashing(
    way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    overhead = _load("overhead")
    calls = itertools.count()

    async def handler(request: httpx.Request) -> httpx.Response:
        n = next(calls)
        await anyio.lowlevel.checkpoint()  # requests overlap, as they do over a socket
        if n == 3:
            raise httpx.ReadError("connection reset by peer", request=request)
        if n == 5:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, content=b"\xff\xd8 a map")

    monkeypatch.setattr(overhead, "TRANSPORT", httpx.MockTransport(handler))
    result = overhead.timed(
        getattr(overhead, way), "http://127.0.0.1:9", overhead.payloads(10, [b"png"]), 10, 4
    )
    assert result["failed"] == 2  # and the 8 successes were all counted
    assert next(calls) == 10  # every request was still sent
