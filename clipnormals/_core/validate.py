"""Argument checks with clear messages, for the options users pass by hand.

Type checkers catch most wrong arguments; these catch them at run time too, before they fail
deep inside (an ``AttributeError`` from a ``RateLimit`` that is an ``int``), and they never
quote a value that may be a secret.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["require_instance", "require_int", "require_seconds"]


def require_instance(name: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    """Raise TypeError unless ``value`` is a ``kind`` (``what`` names it for the message).

    Example:
        >>> require_instance("retry", 3, dict, "a RetryPolicy")
        Traceback (most recent call last):
        ...
        TypeError: retry must be a RetryPolicy, not int
    """
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")


def require_int(name: str, value: Any, *, minimum: int | None = None) -> None:
    """Raise TypeError unless ``value`` is an int (not a bool, not a float), ValueError when
    below ``minimum``.

    Example:
        >>> require_int("RetryPolicy.attempts", 2.5, minimum=1)
        Traceback (most recent call last):
        ...
        TypeError: RetryPolicy.attempts must be a whole number, not float
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def require_seconds(name: str, value: Any, *, positive: bool = False) -> None:
    """Raise unless ``value`` is a finite number of seconds, >= 0 (or > 0 when ``positive``).

    Example:
        >>> require_seconds("timeout", 0, positive=True)
        Traceback (most recent call last):
        ...
        ValueError: timeout must be a positive number of seconds, not 0
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} number of seconds, not {value}")
