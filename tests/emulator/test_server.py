"""The loopback runner, the CLI string parsers, configuration checks and the public names."""

from __future__ import annotations

import dataclasses
import socket
import types

import httpx
import pytest

import clipnormals.emulator as emulator_module
import clipnormals.testing as testing_module
from clipnormals.emulator import (
    ENDPOINT,
    Emulator,
    EmulatorConfig,
    Faults,
    Latency,
    ServerLimit,
    bind_socket,
    create_app,
    parse_faults,
    parse_keys,
    parse_latency,
    parse_rate,
    start_in_thread,
)

from .conftest import image_bytes


def isort_style(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions.
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("module", [emulator_module, testing_module])
def test_all_is_sorted_and_every_name_resolves(module: types.ModuleType) -> None:
    names = module.__all__
    assert names == sorted(names, key=isort_style)
    for name in names:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])  # noqa: S104
def test_refuses_to_bind_beyond_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="allow_public"):
        bind_socket(host, 0)


@pytest.mark.loopback
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_binds_loopback_on_a_kernel_chosen_port(host: str) -> None:
    sock = bind_socket(host, 0)
    try:
        address, port = sock.getsockname()[:2]
        assert address == "127.0.0.1"
        assert port > 0
    finally:
        sock.close()


@pytest.mark.loopback
def test_start_in_thread_serves_and_stops() -> None:
    server = start_in_thread(EmulatorConfig(keys={"k": 2}))
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        response = httpx.post(
            server.url + ENDPOINT,
            headers={"x-api-key": "k"},
            files={"image_file": ("a.png", image_bytes())},
        )
        assert response.status_code == 200
        assert response.headers["x-remaining-credits"] == "1"
        assert server.emulator.stats.requests == 1
    finally:
        server.stop()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), 1.0),
    ):
        pass
    server.stop()  # idempotent


@pytest.mark.loopback
def test_start_in_thread_refuses_public_hosts_before_listening() -> None:
    with pytest.raises(ValueError, match="loopback"):
        start_in_thread(EmulatorConfig(), host="0.0.0.0")  # noqa: S104


def test_create_app_exposes_the_emulator() -> None:
    app = create_app(EmulatorConfig(keys={"x": 7}))
    emulator = app.state.emulator
    assert isinstance(emulator, Emulator)
    assert emulator.credits("x") == 7
    assert emulator.app is app


# -- parsers ----------------------------------------------------------------------------------


def test_parse_keys() -> None:
    assert parse_keys("demo:100") == {"demo": 100}
    assert parse_keys(" demo:100 , other:5 ") == {"demo": 100, "other": 5}
    assert parse_keys("sk:with:colons:3") == {"sk:with:colons": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys"),
        ("s3cret", "entry 1 is not KEY:CREDITS"),
        ("a:1,s3cret:x", "entry 2: credits must be a whole number"),
        ("s3cret:-1", "entry 1"),
        ("s3cret:1,s3cret:2", "repeats"),
        (":5", "entry 1"),
    ],
)
def test_parse_keys_errors_never_quote_the_key(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_keys(text)
    assert "s3cret" not in str(info.value)


def test_parse_rate() -> None:
    assert parse_rate("60/60") == (60, 60.0)
    assert parse_rate(" 10 / 0.5 ") == (10, 0.5)
    for bad in ("60", "60/0", "0/60", "x/60", "60/y", "60/inf"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


def test_parse_latency() -> None:
    assert parse_latency("0.25") == Latency.constant(0.25)
    assert parse_latency("uniform:0.1,0.3") == Latency.uniform(0.1, 0.3)
    assert parse_latency("lognormal:0.3,0.5,2") == Latency.lognormal(0.3, 0.5, maximum=2.0)
    for bad in ("fast", "uniform:1", "gamma:1,2", "uniform:0.3,0.1", "-1"):
        with pytest.raises(ValueError, match="latency"):
            parse_latency(bad)


def test_parse_faults() -> None:
    faults = parse_faults("5xx=0.1, 429=0.05, reset=0.01, stall=0.01, truncate=0.02")
    assert faults == Faults(
        server_error=0.1, rate_limited=0.05, reset=0.01, stall=0.01, truncate=0.02
    )
    scripted = parse_faults("script=500+429+reset+ok,repeat=1,stall-seconds=5,retry-after=2")
    assert scripted.script == ("500", "429", "reset", "ok")
    assert scripted.repeat
    assert scripted.stall_seconds == 5.0
    assert scripted.retry_after == 2.0
    assert parse_faults("") == Faults()
    for bad in ("boom=0.1", "5xx", "5xx=x", "script=500+nope", "5xx=0.9,reset=0.9"):
        with pytest.raises(ValueError, match="fault"):
            parse_faults(bad)


# -- configuration -------------------------------------------------------------------------------


def test_config_repr_never_shows_keys() -> None:
    config = EmulatorConfig(keys={"sk-live-123": 5}, revoked={"sk-live-123"})
    assert "sk-live-123" not in repr(config)
    assert "sk-live-123" not in repr(Emulator(config))


@pytest.mark.parametrize(
    "changes",
    [
        {"keys": {"": 1}},
        {"keys": {"has space": 1}},
        {"keys": {"k": -1}},
        {"keys": {"k": 1}, "revoked": {"other"}},
        {"cost": -1},
        {"jpeg_quality": 0},
        {"canned_size": (0, 10)},
        {"synth": "fancy"},
    ],
)
def test_config_is_validated(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        dataclasses.replace(EmulatorConfig(), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes", [{"requests": 0}, {"per": 0.0}, {"burst": -1}, {"retry_after": "sometimes"}]
)
def test_server_limit_is_validated(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        dataclasses.replace(ServerLimit(), **changes)  # type: ignore[arg-type]


def test_runtime_key_changes_are_validated() -> None:
    emulator = Emulator(EmulatorConfig(keys={"k": 1}))
    with pytest.raises(ValueError, match="credit"):
        emulator.set_credits("k", -5)
    with pytest.raises(KeyError):
        emulator.revoke("unknown")
    emulator.set_credits("fresh", 2)
    assert emulator.keys() == ["k", "fresh"]
    assert emulator.default_key == "k"


def test_listening_socket_is_tcp_so_responses_are_not_held_by_nagle() -> None:
    # asyncio turns on TCP_NODELAY for accepted connections only when the listener's protocol
    # is IPPROTO_TCP; with 0, every response waited ~40 ms for the client's delayed ACK.
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
