"""Text from outside (file names, above all) made safe to show: on a terminal, in a log, drawn
on a picture.

Controls, line and paragraph separators, bidirectional controls and lone surrogates (a file name
that is not UTF-8) become their Python escapes: nothing in a name can move the cursor, colour
the terminal, break a line, reorder the text after it or make a text shaper fail.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls"]

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every unsafe character (see the module docstring) shown as its escape.

    Example:
        >>> escape_controls("evil\\x1b[31m\\nname.png")
        'evil\\\\x1b[31m\\\\nname.png'
        >>> escape_controls("invoice\\u202egnp.exe"), escape_controls("Zoë 😀.jpg")
        ('invoice\\\\u202egnp.exe', 'Zoë 😀.jpg')
    """
    return _UNSAFE.sub(_escape, text)
