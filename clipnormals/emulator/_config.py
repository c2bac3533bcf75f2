"""The emulator's configuration: frozen value objects, validated when built."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, get_args

__all__ = [
    "FAULT_STEPS",
    "EmulatorConfig",
    "Faults",
    "Latency",
    "Policy",
    "RetryAfterMode",
    "ServerLimit",
]

Policy = Literal["fixed", "sliding", "token", "nginx"]
RetryAfterMode = Literal["seconds", "precise", "off"]
LatencyKind = Literal["constant", "uniform", "lognormal"]
SynthMode = Literal["full", "canned"]

#: Named fault steps; any 5xx status written as three digits ("500", "503") is a step too.
FAULT_STEPS: Final = frozenset({"ok", "429", "reset", "stall", "truncate", "truncate-jpeg"})


def _check_fault_step(step: str) -> str:
    if step in FAULT_STEPS:
        return step
    if len(step) == 3 and step.isdigit() and 500 <= int(step) <= 599:
        return step
    allowed = ", ".join(sorted(FAULT_STEPS))
    raise ValueError(f"unknown fault step {step!r}: use a 5xx status or one of {allowed}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimit:
    """The server-side rate limit of each key, and how the server counts.

    ``requests`` per ``per`` seconds, counted at arrival, per key. Policies:

    - ``"fixed"``: at most ``requests`` in each window ``[k*per, (k+1)*per)`` of the clock.
    - ``"sliding"``: at most ``requests`` admitted in any ``per`` seconds (a window log).
    - ``"token"``: a bucket of ``requests`` tokens, full at start, refilled at ``requests/per``/s.
    - ``"nginx"``: nginx ``limit_req`` with ``burst`` and ``nodelay``: a leaky bucket draining at
      ``requests/per``/s that refuses what would overflow ``burst``.

    Refused requests never count. ``retry_after`` says what a 429 carries: ``"seconds"`` (the
    RFC's whole seconds, rounded up), ``"precise"`` (decimal seconds, for scaled-down tests) or
    ``"off"`` (no header; the real API's behaviour is undocumented).

    Example:
        >>> ServerLimit(requests=60, per=60.0, policy="token").rate
        1.0
    """

    requests: int = 60
    per: float = 60.0
    policy: Policy = "sliding"
    burst: int = 5
    retry_after: RetryAfterMode = "seconds"

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int):
            raise TypeError("requests must be an int")
        if self.requests < 1:
            raise ValueError("requests must be at least 1")
        if not math.isfinite(self.per) or self.per <= 0:
            raise ValueError("per must be a positive number of seconds")
        if self.policy not in get_args(Policy):
            raise ValueError(f"policy must be one of {', '.join(get_args(Policy))}")
        if self.burst < 0:
            raise ValueError("burst must be >= 0")
        if self.retry_after not in get_args(RetryAfterMode):
            raise ValueError(f"retry_after must be one of {', '.join(get_args(RetryAfterMode))}")
        object.__setattr__(self, "per", float(self.per))

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.per


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """How long the server takes to produce a success, drawn per request from a seeded RNG.

    Example:
        >>> import random
        >>> Latency.constant(0.25).sample(random.Random(0))
        0.25
        >>> 0.02 <= Latency.uniform(0.02, 0.1).sample(random.Random(0)) <= 0.1
        True
    """

    kind: LatencyKind = "constant"
    seconds: float = 0.0
    low: float = 0.0
    high: float = 0.0
    median: float = 0.0
    sigma: float = 0.0
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(LatencyKind):
            raise ValueError(f"kind must be one of {', '.join(get_args(LatencyKind))}")
        for name in ("seconds", "low", "high", "median", "sigma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        if self.kind == "lognormal" and self.median <= 0:
            raise ValueError("a lognormal latency needs median > 0")
        if self.maximum is not None and self.maximum < 0:
            raise ValueError("maximum must be >= 0")

    @classmethod
    def constant(cls, seconds: float) -> Latency:
        """Always ``seconds``."""
        return cls(kind="constant", seconds=seconds)

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        """Uniform in ``[low, high]``."""
        return cls(kind="uniform", low=low, high=high)

    @classmethod
    def lognormal(cls, median: float, sigma: float, *, maximum: float | None = None) -> Latency:
        """Log-normal with the given median and log-space sigma, optionally capped."""
        return cls(kind="lognormal", median=median, sigma=sigma, maximum=maximum)

    def sample(self, rng: random.Random) -> float:
        """One latency in seconds."""
        if self.kind == "constant":
            value = self.seconds
        elif self.kind == "uniform":
            value = rng.uniform(self.low, self.high)
        else:
            value = rng.lognormvariate(math.log(self.median), self.sigma)
        if self.maximum is not None:
            value = min(value, self.maximum)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Faults injected into requests that would otherwise succeed.

    A request that passed every check draws its fate: first the next ``script`` step (when the
    script is exhausted it starts over if ``repeat``), then, once no step is left, one draw
    against the probabilities. Steps and kinds:

    - a 5xx status (``"500"``, ``"503"``...): that status with a JSON error; no credit charged.
      The probability ``server_error`` picks uniformly among ``server_error_statuses``.
    - ``"429"`` (``rate_limited``): a 429 the limiter did not ask for (a storm upstream); it
      carries ``Retry-After: retry_after`` when that is set. No credit charged.
    - ``"reset"``: the connection is reset before any response byte. No credit charged. On
      the emulator's own server this is a TCP RST; in process the app raises
      ``httpx.RemoteProtocolError``, which ``httpx.ASGITransport`` hands to the client.
    - ``"stall"``: the server sleeps ``stall_seconds`` before answering normally. A client
      that gives up first is not charged; one that waits gets its map and pays. In process
      (``httpx.ASGITransport``) httpx's timeouts do not apply, so a stall ends early only when
      the caller cancels (``anyio.fail_after``); on a socket the server sees the client leave.
    - ``"truncate"``: a 200 whose ``Content-Length`` announces the whole JPEG but whose
      connection closes halfway through the body. Charged: the server did the work.
    - ``"truncate-jpeg"``: a complete 200 response carrying a JPEG cut short. Charged.
    - ``"ok"``: no fault.

    Example:
        >>> Faults(script=["500", "429", "reset", "ok"]).script
        ('500', '429', 'reset', 'ok')
        >>> Faults(server_error=0.25, reset=0.5).total_probability
        0.75
    """

    script: tuple[str, ...] = ()
    repeat: bool = False
    server_error: float = 0.0
    server_error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limited: float = 0.0
    reset: float = 0.0
    stall: float = 0.0
    truncate: float = 0.0
    truncate_jpeg: float = 0.0
    stall_seconds: float = 120.0
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.script, str):
            raise TypeError("script must be a sequence of steps, not one string")
        object.__setattr__(self, "script", tuple(_check_fault_step(s) for s in self.script))
        object.__setattr__(self, "server_error_statuses", tuple(self.server_error_statuses))
        if not self.server_error_statuses or any(
            not 500 <= s <= 599 for s in self.server_error_statuses
        ):
            raise ValueError("server_error_statuses must be a non-empty tuple of 5xx statuses")
        for name, p in self._probabilities():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if self.total_probability > 1.0 + 1e-12:
            raise ValueError("fault probabilities must add up to at most 1")
        if not math.isfinite(self.stall_seconds) or self.stall_seconds < 0:
            raise ValueError("stall_seconds must be a finite number >= 0")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")

    @classmethod
    def scripted(cls, *steps: str, repeat: bool = False) -> Faults:
        """A fixed sequence of fates for the next successful-looking requests."""
        return cls(script=steps, repeat=repeat)

    def _probabilities(self) -> list[tuple[str, float]]:
        return [
            ("server_error", self.server_error),
            ("rate_limited", self.rate_limited),
            ("reset", self.reset),
            ("stall", self.stall),
            ("truncate", self.truncate),
            ("truncate_jpeg", self.truncate_jpeg),
        ]

    @property
    def total_probability(self) -> float:
        """The chance that a request past the script gets some fault."""
        return sum(p for _, p in self._probabilities())

    @property
    def active(self) -> bool:
        """Whether any fault can happen at all."""
        return bool(self.script) or self.total_probability > 0


def _default_keys() -> Mapping[str, int]:
    return {"demo": 100}


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatorConfig:
    """Everything an emulator instance does, fixed at creation.

    Attributes:
        keys: API key -> starting credit balance.
        revoked: keys that exist but answer 403 (revocation can also happen at run time).
        limit: the per-key server-side rate limit; ``None`` for none.
        cost: credits one success costs (``x-credits-consumed``).
        latency: time taken by a success (errors are immediate).
        faults: injected failures.
        max_pixels, max_file_bytes: the contract's 25 MP and 30 MB (decimal: the stricter
            reading, so a client that passes here passes the real server).
        allow_extra_fields: ignore extra non-file form fields instead of answering 400.
        remaining_header, consumed_header: send ``x-remaining-credits`` / ``x-credits-consumed``
            on successes (turn one off to mimic older API versions).
        synth: ``"full"`` (a map the size of the input) or ``"canned"`` (one fixed small map,
            ``canned_size``, whatever the input: for benchmarks of the client alone).
        jpeg_quality: quality of the returned JPEG (4:2:0 chroma, like the real service).
        verify_images: fully decode uploads so corrupt ones get 400 (costs a decode).
        admin: serve the admin endpoints under ``/_emulator/`` (off by default).
        seed: seeds the latency and fault RNGs, for reproducible runs.
        clock: the time source for rate limiting and counters (``time.monotonic``; pass
            ``time.time`` for windows aligned to the calendar, or a fake clock in tests).

    Example:
        >>> cfg = EmulatorConfig(keys={"k1": 5}, limit=ServerLimit(requests=10, per=1.0))
        >>> cfg.keys["k1"], cfg.limit.policy
        (5, 'sliding')
    """

    keys: Mapping[str, int] = field(default_factory=_default_keys, repr=False, hash=False)
    revoked: AbstractSet[str] = field(default=frozenset(), repr=False)
    limit: ServerLimit | None = ServerLimit()
    cost: int = 1
    latency: Latency = Latency()
    faults: Faults = Faults()
    max_pixels: int = 25_000_000
    max_file_bytes: int = 30_000_000
    allow_extra_fields: bool = False
    remaining_header: bool = True
    consumed_header: bool = True
    synth: SynthMode = "full"
    canned_size: tuple[int, int] = (64, 64)
    jpeg_quality: int = 90
    verify_images: bool = True
    admin: bool = False
    seed: int = 0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        keys = dict(self.keys)
        for key, credits in keys.items():
            _check_key(key)
            _check_credits(credits)
        object.__setattr__(self, "keys", MappingProxyType(keys))
        revoked = frozenset(_as_iterable_of_str(self.revoked))
        if not revoked <= keys.keys():
            raise ValueError("every revoked key must also be listed in keys")
        object.__setattr__(self, "revoked", revoked)
        if isinstance(self.cost, bool) or not isinstance(self.cost, int) or self.cost < 0:
            raise ValueError("cost must be an int >= 0")
        if self.max_pixels < 1 or self.max_file_bytes < 1:
            raise ValueError("max_pixels and max_file_bytes must be positive")
        if self.synth not in get_args(SynthMode):
            raise ValueError(f"synth must be one of {', '.join(get_args(SynthMode))}")
        width, height = self.canned_size
        if width < 1 or height < 1:
            raise ValueError("canned_size must be positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if not callable(self.clock):
            raise TypeError("clock must be a callable returning seconds")

    @property
    def window(self) -> float:
        """The window the counters measure in: the limit's ``per``, else 60 s."""
        return self.limit.per if self.limit is not None else 60.0


def _as_iterable_of_str(value: Iterable[str]) -> Iterable[str]:
    if isinstance(value, str):
        raise TypeError("revoked must be a collection of keys, not one string")
    return value


def _check_key(key: object) -> None:
    # Messages never quote a key: keys are secrets, even fake ones.
    if not isinstance(key, str) or not key:
        raise ValueError("API keys must be non-empty strings")
    if key != key.strip() or any(ord(c) < 0x21 or ord(c) > 0x7E for c in key):
        raise ValueError("API keys must be printable ASCII without spaces")


def _check_credits(credits: object) -> None:
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise ValueError("credit balances must be ints >= 0")
