"""Parsers for the emulator's command-line strings. Each raises ValueError with a clear message.

Messages never quote a key: even an emulator's keys are treated as secrets.
"""

from __future__ import annotations

import math

from ._config import Faults, Latency, _check_credits, _check_key

__all__ = ["parse_faults", "parse_keys", "parse_latency", "parse_rate"]


def parse_keys(text: str) -> dict[str, int]:
    """``"demo:100,other:5"`` -> ``{"demo": 100, "other": 5}``.

    Entries are ``KEY:CREDITS`` separated by commas; spaces around them are ignored; a key may
    itself contain ``:`` (the last one separates the credits). A key listed twice is an error.

    Example:
        >>> parse_keys("demo:100, other:5")
        {'demo': 100, 'other': 5}
    """
    keys: dict[str, int] = {}
    entries = [e.strip() for e in text.split(",")]
    if not any(entries):
        raise ValueError("no keys given: expected KEY:CREDITS[,KEY:CREDITS...]")
    for number, entry in enumerate(entries, start=1):
        key, sep, credits_text = entry.rpartition(":")
        if not sep or not key:
            raise ValueError(f"keys entry {number} is not KEY:CREDITS")
        try:
            credits = int(credits_text.strip())
        except ValueError:
            raise ValueError(f"keys entry {number}: credits must be a whole number") from None
        key = key.strip()
        try:
            _check_key(key)
            _check_credits(credits)
        except ValueError as exc:
            raise ValueError(f"keys entry {number}: {exc}") from None
        if key in keys:
            raise ValueError(f"keys entry {number} repeats an earlier key")
        keys[key] = credits
    return keys


def parse_rate(text: str) -> tuple[int, float]:
    """``"60/60"`` -> ``(60, 60.0)``: REQUESTS per SECONDS.

    Example:
        >>> parse_rate("60/60"), parse_rate("10 / 0.5")
        ((60, 60.0), (10, 0.5))
    """
    requests_text, sep, per_text = text.partition("/")
    if not sep:
        raise ValueError(f"rate {text!r} is not REQUESTS/SECONDS (e.g. 60/60)")
    try:
        requests = int(requests_text.strip())
        per = float(per_text.strip())
    except ValueError:
        raise ValueError(f"rate {text!r} is not REQUESTS/SECONDS (e.g. 60/60)") from None
    if requests < 1 or not math.isfinite(per) or per <= 0:
        raise ValueError(f"rate {text!r}: REQUESTS must be >= 1 and SECONDS > 0")
    return requests, per


def parse_latency(text: str) -> Latency:
    """A latency distribution from ``SECONDS``, ``uniform:LOW,HIGH`` or
    ``lognormal:MEDIAN,SIGMA[,MAX]``.

    Example:
        >>> parse_latency("0.2").seconds, parse_latency("uniform:0.1,0.3").high
        (0.2, 0.3)
        >>> parse_latency("lognormal:0.3,0.5").median
        0.3
    """
    kind, sep, args_text = text.strip().partition(":")
    try:
        if not sep:
            return Latency.constant(float(kind))
        args = [float(a) for a in args_text.split(",")]
        if kind == "uniform" and len(args) == 2:
            return Latency.uniform(args[0], args[1])
        if kind == "lognormal" and len(args) in (2, 3):
            maximum = args[2] if len(args) == 3 else None
            return Latency.lognormal(args[0], args[1], maximum=maximum)
    except ValueError as exc:
        raise ValueError(f"latency {text!r}: {exc}") from None
    raise ValueError(
        f"latency {text!r} is not SECONDS, uniform:LOW,HIGH or lognormal:MEDIAN,SIGMA[,MAX]"
    )


_FAULT_FIELDS = {
    "5xx": "server_error",
    "429": "rate_limited",
    "reset": "reset",
    "stall": "stall",
    "truncate": "truncate",
    "truncate-jpeg": "truncate_jpeg",
}


def parse_faults(text: str) -> Faults:
    """Faults from ``NAME=VALUE`` items separated by commas.

    Probabilities: ``5xx``, ``429``, ``reset``, ``stall``, ``truncate``, ``truncate-jpeg``.
    Also ``stall-seconds=S``, ``retry-after=S`` (on injected 429s), and ``script=STEP+STEP...``
    (steps as in :class:`Faults`, e.g. ``script=500+429+reset+ok``), ``repeat=1``.

    Example:
        >>> f = parse_faults("5xx=0.05,reset=0.01,stall-seconds=90")
        >>> f.server_error, f.reset, f.stall_seconds
        (0.05, 0.01, 90.0)
        >>> parse_faults("script=500+reset+ok").script
        ('500', 'reset', 'ok')
    """
    options: dict[str, object] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep:
            raise ValueError(f"fault item {item!r} is not NAME=VALUE")
        try:
            if name in _FAULT_FIELDS:
                options[_FAULT_FIELDS[name]] = float(value)
            elif name == "stall-seconds":
                options["stall_seconds"] = float(value)
            elif name == "retry-after":
                options["retry_after"] = float(value)
            elif name == "script":
                options["script"] = tuple(s.strip() for s in value.split("+") if s.strip())
            elif name == "repeat":
                options["repeat"] = value.lower() in ("1", "true", "yes", "on")
            else:
                raise ValueError(f"unknown fault {name!r}")
        except ValueError as exc:
            raise ValueError(f"fault item {item!r}: {exc}") from None
    try:
        return Faults(**options)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"faults {text!r}: {exc}") from None
