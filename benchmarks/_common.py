"""Shared pieces of the benchmarks: an emulator in its own process, test images, the machine's
description, small statistics and plain Pillow charts (matplotlib is not a dependency).

The emulator runs in a child process (``python benchmarks/_common.py serve``) so that its CPU
time and its event loop never compete with the client under test, as with a real remote API. A
thin ASGI middleware in front of the emulator's app records each request's arrival time and
status; ``GET /_bench/trace`` hands that log back with the emulator's own counters.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KEY_ENV = "CLIPNORMALS_BENCH_KEY"
TRACE_PATH = "/_bench/trace"


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import PIL

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "httpx": httpx.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between ranks; NaN for no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- test images ------------------------------------------------------------------------------


def small_png(index: int, size: tuple[int, int] = (96, 120)) -> bytes:
    """A small portrait-shaped PNG, different for every ``index`` (so no two hash alike)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (x * 255 // max(width - 1, 1) + index) % 256
    rgb[..., 1] = (y * 255 // max(height - 1, 1) + index // 256) % 256
    rgb[..., 2] = (index * 37) % 256
    for i in range(min(width, 4)):
        rgb[0, i] = (index >> (8 * i)) & 0xFF
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


# -- the emulator in a child process ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    """What the child emulator serves (one key, with plenty of credits)."""

    requests: int | None = 60
    per: float = 6.0
    policy: str = "sliding"
    burst: int = 5
    retry_after: str = "precise"
    latency_median: float = 0.0
    latency_sigma: float = 0.0
    latency_max: float | None = None
    synth: str = "full"
    verify_images: bool = True
    credits: int = 1_000_000_000
    seed: int = 0
    trace: bool = True
    # "socket": uvicorn (h11) on a socket made here; "emulator": the emulator's own serve().
    runner: str = "socket"


@dataclass(slots=True)
class Trace:
    """What the child emulator saw: arrivals as ``(monotonic time, status)`` and its counters."""

    arrivals: list[tuple[float, int]]
    stats: dict[str, Any]
    server_cpu_s: float


class EmulatorProcess:
    """An emulator served on a loopback port by a child process; a context manager.

    Example:
        >>> with EmulatorProcess(ServerSpec(policy="token"), key="k") as server:
        ...     server.url  # doctest: +SKIP
    """

    def __init__(self, spec: ServerSpec, *, key: str) -> None:
        self.spec = spec
        self.key = key
        env = dict(os.environ, **{KEY_ENV: key})
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", json.dumps(asdict(spec))],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            cwd=ROOT,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the emulator process did not start (said {line!r})")
        self.url = line

    def trace(self) -> Trace:
        response = httpx.get(self.url + TRACE_PATH, timeout=30.0)
        response.raise_for_status()
        data = response.json()
        return Trace(
            arrivals=[(float(t), int(s)) for t, s in data["arrivals"]],
            stats=data["stats"],
            server_cpu_s=float(data["cpu_s"]),
        )

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _TraceMiddleware:
    """Logs arrival time and status of every API request; answers ``GET /_bench/trace``."""

    def __init__(self, app: Any, *, emulator: Any, record: bool) -> None:
        self.app = app
        self.emulator = emulator
        self.record = record
        self.arrivals: list[tuple[float, int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == TRACE_PATH:
            body = json.dumps(
                {
                    "arrivals": self.arrivals,
                    "stats": self.emulator.stats.snapshot(),
                    "cpu_s": time.process_time(),
                }
            ).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if not self.record:
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        status = 0

        async def tracking_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.arrivals.append((arrived, status))


def _serve(spec_json: str) -> None:
    from clipnormals.emulator import Emulator, EmulatorConfig, Latency, ServerLimit, serve

    spec = ServerSpec(**json.loads(spec_json))
    key = os.environ[KEY_ENV]
    limit = None
    if spec.requests is not None:
        limit = ServerLimit(
            requests=spec.requests,
            per=spec.per,
            policy=spec.policy,  # type: ignore[arg-type]
            burst=spec.burst,
            retry_after=spec.retry_after,  # type: ignore[arg-type]
        )
    latency = Latency()
    if spec.latency_median > 0:
        latency = Latency.lognormal(
            spec.latency_median, spec.latency_sigma, maximum=spec.latency_max
        )
    emulator = Emulator(
        EmulatorConfig(
            keys={key: spec.credits},
            limit=limit,
            latency=latency,
            synth=spec.synth,  # type: ignore[arg-type]
            verify_images=spec.verify_images,
            seed=spec.seed,
        )
    )
    emulator.app.add_middleware(_TraceMiddleware, emulator=emulator, record=spec.trace)

    def listening(url: str) -> None:
        print(url, flush=True)

    # SIGINT is how the parent stops it; uvicorn re-raises it after a graceful shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        if spec.runner == "emulator":
            serve(emulator, port=0, log_level="warning", access_log=False, on_listening=listening)
        else:
            _serve_on_tcp_socket(emulator.app, listening)


def _serve_on_tcp_socket(app: Any, on_listening: Callable[[str], None]) -> None:
    """uvicorn (h11) on a loopback socket created with ``IPPROTO_TCP``.

    asyncio sets ``TCP_NODELAY`` on an accepted connection only when the listening socket says
    it is TCP; a socket made with protocol 0 leaves Nagle's algorithm on, and every response
    written in two parts then waits for the client's delayed ACK (about 40 ms on Linux).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        log_config=None,
    )
    on_listening(f"http://127.0.0.1:{sock.getsockname()[1]}")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


# -- charts -----------------------------------------------------------------------------------

PALETTE = {
    "blue": (31, 119, 180),
    "orange": (255, 127, 14),
    "green": (44, 160, 44),
    "purple": (148, 103, 189),
    "red": (214, 39, 40),
    "grey": (110, 110, 110),
}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * magnitude:
            return mult * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.0e}"


@dataclass(slots=True)
class _Series:
    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int]
    label: str | None
    kind: str  # "line", "dash", "x"
    width: int


class Chart:
    """One x/y chart drawn with Pillow: lines, dashed reference lines and cross markers."""

    def __init__(
        self,
        title: str,
        *,
        xlabel: str,
        ylabel: str,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        size: tuple[int, int] = (620, 330),
    ) -> None:
        self.title = title
        self.xlabel = xlabel
        self.ylabel = ylabel
        self.xlim = xlim
        self.ylim = ylim
        self.size = size
        self.series: list[_Series] = []

    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        color: str,
        label: str | None = None,
        *,
        width: int = 2,
        dashed: bool = False,
    ) -> None:
        kind = "dash" if dashed else "line"
        self.series.append(_Series(xs, ys, PALETTE[color], label, kind, width))

    def crosses(
        self, xs: Sequence[float], ys: Sequence[float], color: str, label: str | None = None
    ) -> None:
        self.series.append(_Series(xs, ys, PALETTE[color], label, "x", 1))

    def render(self) -> Image.Image:
        width, height = self.size
        image = Image.new("RGB", self.size, "white")
        draw = ImageDraw.Draw(image)
        title_font, font = _font(15), _font(12)
        left, right, top, bottom = 58, 12, 30, 42
        x0, x1, y0, y1 = left, width - right, top, height - bottom
        (xmin, xmax), (ymin, ymax) = self.xlim, self.ylim

        def px(x: float) -> float:
            return x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)

        def py(y: float) -> float:
            return y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)

        draw.text((x0, 6), self.title, fill="black", font=title_font)
        step = _nice_step(xmax - xmin, 8)
        tick = math.ceil(xmin / step) * step
        while tick <= xmax + 1e-9:
            draw.line([(px(tick), y0), (px(tick), y1)], fill=(232, 232, 232))
            draw.text((px(tick), y1 + 4), _label(tick), fill="black", font=font, anchor="ma")
            tick += step
        step = _nice_step(ymax - ymin, 5)
        tick = math.ceil(ymin / step) * step
        while tick <= ymax + 1e-9:
            draw.line([(x0, py(tick)), (x1, py(tick))], fill=(232, 232, 232))
            draw.text((x0 - 5, py(tick)), _label(tick), fill="black", font=font, anchor="rm")
            tick += step
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text(((x0 + x1) / 2, height - 6), self.xlabel, fill="black", font=font, anchor="md")
        ylabel = Image.new("RGB", (y1 - y0, 16), "white")
        ImageDraw.Draw(ylabel).text(
            ((y1 - y0) / 2, 8), self.ylabel, fill="black", font=font, anchor="mm"
        )
        image.paste(ylabel.rotate(90, expand=True), (4, y0))

        def inside(x: float, y: float) -> tuple[float, float]:
            return min(max(px(x), x0), x1), min(max(py(y), y0), y1)

        for s in self.series:
            points = [inside(x, y) for x, y in zip(s.xs, s.ys, strict=True)]
            if s.kind == "x":
                for cx, cy in points:
                    draw.line([(cx - 3, cy - 3), (cx + 3, cy + 3)], fill=s.color, width=1)
                    draw.line([(cx - 3, cy + 3), (cx + 3, cy - 3)], fill=s.color, width=1)
            elif s.kind == "dash":
                for a, b in itertools.pairwise(points):
                    _dashed(draw, a, b, s.color, s.width)
            elif len(points) > 1:
                draw.line(points, fill=s.color, width=s.width, joint="curve")
        labelled = [s for s in self.series if s.label]
        if labelled:
            # Bottom right: the curves here rise from the bottom left, so it is the emptiest.
            box_w = 30 + max(int(draw.textlength(s.label or "", font=font)) for s in labelled)
            lx, ly = x1 - box_w - 8, y1 - 16 * len(labelled) - 8
            draw.rectangle(
                [lx - 4, ly - 3, lx + box_w, ly + 16 * len(labelled)],
                fill="white",
                outline=(200, 200, 200),
            )
            for s in labelled:
                _legend_key(draw, lx, ly, s.color, s.kind, s.width)
                draw.text((lx + 26, ly), s.label or "", fill="black", font=font)
                ly += 16
        return image


def _legend_key(
    draw: ImageDraw.ImageDraw,
    x: float,
    y: float,
    color: tuple[int, int, int],
    kind: str,
    width: int,
) -> None:
    if kind == "x":
        draw.line([(x + 6, y + 3), (x + 12, y + 9)], fill=color)
        draw.line([(x + 6, y + 9), (x + 12, y + 3)], fill=color)
    elif kind == "dash":
        _dashed(draw, (x, y + 6), (x + 20, y + 6), color, width)
    else:
        draw.line([(x, y + 6), (x + 20, y + 6)], fill=color, width=width)


def _dashed(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    color: tuple[int, int, int],
    width: int,
) -> None:
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    if length == 0:
        return
    dx, dy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    pos = 0.0
    while pos < length:
        end = min(pos + 6, length)
        draw.line(
            [(a[0] + dx * pos, a[1] + dy * pos), (a[0] + dx * end, a[1] + dy * end)],
            fill=color,
            width=width,
        )
        pos += 10


def save_grid(
    charts: Sequence[Chart],
    columns: int,
    path: Path,
    *,
    title: str = "",
    legend: Sequence[tuple[str, str, str]] = (),
) -> None:
    """Lay the charts out in a grid under a title and a legend row, and save a PNG.

    ``legend`` holds ``(label, colour, kind)`` with kind ``"line"``, ``"dash"`` or ``"x"``.
    """
    images = [c.render() for c in charts]
    cell_w = max(i.width for i in images)
    cell_h = max(i.height for i in images)
    rows = math.ceil(len(images) / columns)
    head = (34 if title else 0) + (24 if legend else 0)
    canvas = Image.new("RGB", (cell_w * columns, cell_h * rows + head), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((12, 8), title, fill="black", font=_font(17))
    x, y, font = 14.0, head - 22.0, _font(13)
    for label, color, kind in legend:
        _legend_key(draw, x, y + 1, PALETTE[color], kind, 2)
        draw.text((x + 26, y), label, fill="black", font=font)
        x += 50 + draw.textlength(label, font=font)
    for n, image in enumerate(images):
        canvas.paste(image, ((n % columns) * cell_w, head + (n // columns) * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(sys.argv[2])
    else:
        raise SystemExit("usage: python benchmarks/_common.py serve SPEC_JSON")
