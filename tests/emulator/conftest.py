from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clipnormals.emulator import ENDPOINT, Emulator, EmulatorConfig

SAMPLES = Path(__file__).resolve().parents[2] / "clipnormals" / "samples"


class FakeClock:
    """A clock the test moves by hand: the emulator reads ``now`` at each arrival."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (90, 120, 150) if mode == "RGB" else 0).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def portrait_jpeg() -> bytes:
    buffer = io.BytesIO()
    with Image.open(SAMPLES / "astronaut.png") as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_http() -> Callable[[Emulator], httpx.AsyncClient]:
    def make(emulator: Emulator) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=emulator.transport(), base_url="http://127.0.0.1")

    return make


@pytest.fixture
def emulator() -> Emulator:
    # No limit: contract tests are about validation; the limiter has its own tests.
    return Emulator(
        EmulatorConfig(keys={"good": 5, "broke": 0, "gone": 5}, revoked={"gone"}, limit=None)
    )


@pytest.fixture
async def http(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="http://127.0.0.1"
    ) as client:
        yield client


async def post_image(
    http: httpx.AsyncClient,
    data: bytes,
    *,
    key: str | None = "good",
    accept: str | None = None,
    filename: str = "portrait.png",
) -> httpx.Response:
    headers = {}
    if key is not None:
        headers["x-api-key"] = key
    if accept is not None:
        headers["accept"] = accept
    return await http.post(ENDPOINT, headers=headers, files={"image_file": (filename, data)})
