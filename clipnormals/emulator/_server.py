"""Running the emulator as a real HTTP server (uvicorn, h11) on a loopback socket.

The socket is bound here, before uvicorn starts, so port 0 works (the kernel picks a port and
the caller learns it at once) and a non-loopback address is refused before anything listens.
The HTTP protocol is uvicorn's h11 implementation with one addition: each request's scope gets
a handle on its connection (``scope["extensions"]["clipnormals.connection"]``), which the
``reset`` and ``truncate`` faults use to drop the connection for real.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._app import CONNECTION_EXTENSION
from ._config import EmulatorConfig
from ._emulator import Emulator

__all__ = ["RunningServer", "bind_socket", "serve", "start_in_thread"]

_SHUTDOWN_GRACE = 2  # seconds uvicorn waits for in-flight requests (a stall would hold it)


class _Connection:
    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def reset(self) -> None:
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN, which is what a crashed peer looks like.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def close(self) -> None:
        self._transport.close()


class _EmulatorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, handing each request a handle on its connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {})
            extensions[CONNECTION_EXTENSION] = _Connection(self.transport)
            await inner(scope, receive, send)

        self.app = app


def _as_emulator(target: Emulator | EmulatorConfig | None) -> Emulator:
    if isinstance(target, Emulator):
        return target
    return Emulator(target)


def bind_socket(
    host: str = "127.0.0.1", port: int = 0, *, allow_public: bool = False
) -> socket.socket:
    """A listening TCP socket on ``host:port``; loopback only unless ``allow_public``.

    ``"localhost"`` means 127.0.0.1. Raises ValueError for a non-loopback address (``0.0.0.0``
    included) without ``allow_public=True``, OSError when the port is taken.

    Example:
        >>> sock = bind_socket("127.0.0.1", 0)
        >>> sock.getsockname()[1] > 0
        True
        >>> sock.close()
    """
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not allow_public:
            raise ValueError(
                f"refusing to bind to {host!r}: give a loopback IP address (127.0.0.1, ::1) "
                "or pass allow_public=True"
            ) from None
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    else:
        if not address.is_loopback and not allow_public:
            raise ValueError(
                f"refusing to bind to {host}: the emulator serves loopback only "
                "unless allow_public=True"
            )
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP. Without it each response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _uvicorn_server(
    emulator: Emulator, *, log_level: str, access_log: bool, configure_logging: bool
) -> uvicorn.Server:
    config = uvicorn.Config(
        emulator.app,
        http=_EmulatorH11Protocol,
        ws="none",
        lifespan="off",
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=_SHUTDOWN_GRACE,
        server_header=False,
        log_config=LOGGING_CONFIG if configure_logging else None,
    )
    return uvicorn.Server(config)


def serve(
    target: Emulator | EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_public: bool = False,
    log_level: str = "info",
    access_log: bool = True,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve an emulator until interrupted (Ctrl-C). Blocking; for the CLI and scripts.

    ``on_listening`` is called with the base URL once the socket listens (useful with port 0).
    To serve from a test or a program that goes on, use :func:`start_in_thread` instead.

    In a script, this blocks until Ctrl-C, as ``clipnormals emulator --port 8765 --keys
    demo:100`` does::

        serve(EmulatorConfig(keys={"demo": 100}), port=8765)
    """
    emulator = _as_emulator(target)
    sock = bind_socket(host, port, allow_public=allow_public)
    try:
        if on_listening is not None:
            on_listening(_url(sock))
        server = _uvicorn_server(
            emulator, log_level=log_level, access_log=access_log, configure_logging=True
        )
        server.run(sockets=[sock])
    finally:
        sock.close()


class RunningServer:
    """An emulator served from a background thread. Stop it with :meth:`stop` or ``with``.

    Attributes:
        emulator: the emulator served (read its ``stats``, change credits, revoke keys).
        url: the base URL, e.g. ``http://127.0.0.1:54321``.
        host, port: where it listens.

    Example:
        >>> import httpx
        >>> with start_in_thread(EmulatorConfig(keys={"k": 1})) as server:
        ...     httpx.post(server.url + "/portrait-surface-normals/v1").status_code
        401
    """

    def __init__(self, emulator: Emulator, server: uvicorn.Server, sock: socket.socket) -> None:
        self.emulator = emulator
        self._server = server
        self._sock = sock
        self.url = _url(sock)
        self.host, self.port = sock.getsockname()[:2]
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"clipnormals-emulator-{self.port}", daemon=True
        )

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start()/stop() in the caller's thread
            self._error = exc

    def _start(self, timeout: float) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the emulator server did not start") from self._error
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread (idempotent)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningServer {self.url}>"


def start_in_thread(
    target: Emulator | EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_public: bool = False,
    log_level: str = "warning",
    access_log: bool = False,
    startup_timeout: float = 10.0,
) -> RunningServer:
    """Serve an emulator from a daemon thread; returns once it accepts connections.

    Port 0 (the default) lets the kernel pick a free port: read it from ``.port`` / ``.url``.
    Leaves the process's logging configuration alone.

    Example:
        >>> server = start_in_thread(EmulatorConfig(keys={"k": 1}))
        >>> server.url.startswith("http://127.0.0.1:")
        True
        >>> server.stop()
    """
    emulator = _as_emulator(target)
    sock = bind_socket(host, port, allow_public=allow_public)
    try:
        server = _uvicorn_server(
            emulator, log_level=log_level, access_log=access_log, configure_logging=False
        )
        running = RunningServer(emulator, server, sock)
    except BaseException:
        sock.close()
        raise
    running._start(startup_timeout)
    return running
