"""How the CLI talks to the user when something is wrong: one line on stderr and an exit code."""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console

from .._batch.types import ExitCode

__all__ = ["UsageError", "fail"]


class UsageError(Exception):
    """A problem with the command line or the environment; exit code 2."""


def fail(message: str, code: int = ExitCode.USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (bad usage by default)."""
    Console(stderr=True, soft_wrap=True).print(f"error: {message}", markup=False, highlight=False)
    raise SystemExit(int(code))
