"""A local emulator of the Clipdrop Portrait Surface Normals API, for tests, demos and benchmarks.

It speaks the API's contract exactly (auth, multipart, limits, JSON errors, credit headers,
per-key credits), enforces a server-side rate limit with a choosable counting policy, adds
latency and faults on demand, and counts everything it sees. Its normal maps are synthetic: a
head-and-shoulders silhouette inflated into a smooth surface, not an analysis of the upload. A
crude estimate of where the subject of the photo is (colour contrast against the frame's top
and sides) decides where the silhouette stands and how large it is, so that pictures made from
the map line up with the photo; its shape is always the same.

In process, through httpx (no socket)::

    import httpx
    from clipnormals.emulator import Emulator, EmulatorConfig, ServerLimit

    config = EmulatorConfig(keys={"demo": 100}, limit=ServerLimit(requests=60, per=60.0))
    emulator = Emulator(config)
    transport = emulator.transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        with open("portrait.jpg", "rb") as f:
            r = await http.post(
                "/portrait-surface-normals/v1",
                headers={"x-api-key": "demo"},
                files={"image_file": f},
            )
    r.headers["x-remaining-credits"], emulator.stats.requests   # ('99', 1)

On loopback (``clipnormals emulator --port 8765 --keys demo:100`` does the same)::

    from clipnormals.emulator import start_in_thread

    with start_in_thread(EmulatorConfig(keys={"demo": 100})) as server:
        print(server.url)       # http://127.0.0.1:<port>

The app, the servers and ``Emulator.app`` need the ``emulator`` extra (starlette,
python-multipart, uvicorn); they are imported on first use, so configuration objects and
parsers import without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._config import EmulatorConfig, Faults, Latency, Policy, RetryAfterMode, ServerLimit
from ._emulator import Emulator, create_app
from ._fit import fit_placement
from ._parsers import parse_faults, parse_keys, parse_latency, parse_rate
from ._policies import (
    CountingPolicy,
    FixedWindow,
    LeakyBucket,
    SlidingWindowLog,
    TokenBucket,
    make_policy,
)
from ._stats import Counters, Stats
from ._synth import SynthMap, synthetic_jpeg, synthetic_normal_map
from ._template import Placement

if TYPE_CHECKING:
    from ._app import ENDPOINT
    from ._local import local_emulator
    from ._server import RunningServer, bind_socket, serve, start_in_thread

__all__ = [
    "ENDPOINT",
    "Counters",
    "CountingPolicy",
    "Emulator",
    "EmulatorConfig",
    "Faults",
    "FixedWindow",
    "Latency",
    "LeakyBucket",
    "Placement",
    "Policy",
    "RetryAfterMode",
    "RunningServer",
    "ServerLimit",
    "SlidingWindowLog",
    "Stats",
    "SynthMap",
    "TokenBucket",
    "bind_socket",
    "create_app",
    "fit_placement",
    "local_emulator",
    "make_policy",
    "parse_faults",
    "parse_keys",
    "parse_latency",
    "parse_rate",
    "serve",
    "start_in_thread",
    "synthetic_jpeg",
    "synthetic_normal_map",
]

_LAZY = {
    "ENDPOINT": "._app",
    "local_emulator": "._local",
    "RunningServer": "._server",
    "bind_socket": "._server",
    "serve": "._server",
    "start_in_thread": "._server",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as exc:
        raise ImportError(
            f"clipnormals.emulator.{name} needs the emulator extra: "
            "pip install 'clipnormals[emulator]'"
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
