"""An unexpected internal error: one line on the terminal, the full traceback in a file.

A bug must not greet the user with ninety lines of traceback, nor hide the details a bug report
needs. The traceback goes to a new file in the temporary folder, scrubbed of the API key; the
terminal gets one line naming the error and the file, and the command exits with sysexits'
EX_SOFTWARE (70).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from typing import NoReturn

from .._batch.outcomes import ExitCode
from .._core.config import API_KEY_ENV, resolve_api_key
from .._errors import ClipnormalsError
from .._version import __version__
from .output import say

__all__ = ["report_internal_error"]


def _secrets(argv: list[str]) -> list[str]:
    """The API keys this process may hold: the default variable's and ``--api-key-env``'s."""
    names = [API_KEY_ENV]
    for i, arg in enumerate(argv):
        if arg == "--api-key-env" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith("--api-key-env="):
            names.append(arg.partition("=")[2])
    keys = []
    for name in names:
        try:
            keys.append(resolve_api_key(None, env_var=name))
        except ClipnormalsError:
            continue
    return [k for k in keys if k]


def report_internal_error(error: BaseException, argv: list[str] | None = None) -> NoReturn:
    """Write ``error``'s traceback to a file, print one line saying where, exit 70."""
    argv = sys.argv if argv is None else argv
    text = "".join(traceback.format_exception(error))
    for secret in _secrets(argv):
        text = text.replace(secret, "***")
    header = f"clipnormals {__version__}, Python {sys.version.split()[0]}\n"
    where = "nowhere (the temporary folder is not writable)"
    try:
        fd, path = tempfile.mkstemp(prefix="clipnormals-error-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + text)
        where = path
    except OSError:
        pass
    say(
        sys.stderr,
        f"error: internal error ({type(error).__name__}); this is a bug. "
        f"The full traceback was written to {where}",
    )
    raise SystemExit(int(ExitCode.SOFTWARE))
