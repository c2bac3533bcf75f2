"""The emulator object users hold: its state plus the ASGI app that serves it.

The app is built on first use and needs the ``emulator`` extra (starlette); the state does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._config import EmulatorConfig
from ._state import EmulatorState

if TYPE_CHECKING:
    import httpx
    from starlette.applications import Starlette

__all__ = ["Emulator", "create_app"]


class Emulator(EmulatorState):
    """One emulated API server: its keys and balances, limiter state and counters.

    Build it from an :class:`EmulatorConfig`; serve ``emulator.app`` (an ASGI app) in process
    with ``emulator.transport()`` or on loopback with :func:`start_in_thread` / :func:`serve`.
    The app reaches it back as ``app.state.emulator``.

    Example:
        >>> em = Emulator(EmulatorConfig(keys={"k": 3}))
        >>> em.credits("k")
        3
        >>> em.set_credits("k", 0); em.revoke("k"); em.is_revoked("k")
        True
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        super().__init__(config)
        self._app: Starlette | None = None

    @property
    def app(self) -> Starlette:
        """The ASGI application serving this emulator (built on first use)."""
        if self._app is None:
            try:
                from ._app import build_app
            except ImportError as exc:
                raise ImportError(
                    "the emulator's app needs the emulator extra: "
                    "pip install 'clipnormals[emulator]'"
                ) from exc
            self._app = build_app(self)
        return self._app

    def transport(self) -> httpx.ASGITransport:
        """A fresh ``httpx.ASGITransport`` into :attr:`app`, for in-process clients.

        Example:
            >>> import httpx
            >>> client = httpx.AsyncClient(transport=Emulator().transport())
        """
        import httpx

        return httpx.ASGITransport(app=self.app)


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """A new emulator's ASGI app; its state is ``app.state.emulator``.

    Example:
        >>> import httpx
        >>> app = create_app(EmulatorConfig(keys={"k": 1}))
        >>> client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        >>> app.state.emulator.credits("k")
        1
    """
    return Emulator(config).app
