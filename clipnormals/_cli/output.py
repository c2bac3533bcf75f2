"""How the CLI talks to the user: text made safe for a terminal, and one line when all is lost.

Every line the command prints goes through :func:`printable`: file names can hold any byte but
``/`` and NUL, and an ESC or a newline in one must not move the cursor, recolour the terminal or
forge a line of the log. Control characters (C0, DEL, C1), line and paragraph separators and the
bidirectional overrides are shown as Python escapes (``\\x1b``, ``\\n``, ``\\u202e``).
"""

from __future__ import annotations

import sys
from typing import NoReturn, TextIO

from rich.console import Console

from .._batch.outcomes import ExitCode
from .._text import escape_controls

__all__ = ["UsageError", "fail", "plural", "printable", "say"]


def printable(text: str) -> str:
    """``text`` with every character that could drive a terminal shown as an escape.

    Example:
        >>> printable("evil\\x1b[31m\\nname.png")
        'evil\\\\x1b[31m\\\\nname.png'
        >>> printable("Zoë Ünïcode 😀.jpg")
        'Zoë Ünïcode 😀.jpg'
    """
    return escape_controls(text)


def plural(n: int, one: str, many: str | None = None) -> str:
    """``"1 copy"``, ``"2 copies"``.

    Example:
        >>> plural(1, "copy", "copies"), plural(2, "other file")
        ('1 copy', '2 other files')
    """
    return f"{n} {one if n == 1 else (many or one + 's')}"


def say(out: Console | TextIO, text: str, *, style: str | None = None) -> None:
    """Print one line, made :func:`printable`, without rich markup or highlighting."""
    safe = printable(text)
    if isinstance(out, Console):
        out.print(safe, markup=False, highlight=False, style=style, soft_wrap=True)
    else:
        print(safe, file=out, flush=True)


class UsageError(Exception):
    """A problem with the command line or the environment; exit code 2."""


def fail(message: str, code: int = ExitCode.USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (bad usage by default)."""
    say(sys.stderr, f"error: {message}")
    raise SystemExit(int(code))
