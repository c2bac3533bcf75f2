"""The emulator's state: keys, credits, the per-key limiters, fault and latency draws, counters.

Everything here is synchronous and quick, so a decision is taken atomically on the event loop;
a lock also lets a test thread change credits or revoke a key while a server thread serves.
The HTTP side (``_app``, ``_admin``) reads and changes this state; :class:`Emulator` (in
``_emulator``) adds the app on top, so the state never depends on the HTTP side.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass

from ._config import EmulatorConfig, _check_credits, _check_key
from ._policies import EPSILON, CountingPolicy, make_policy
from ._stats import Stats

__all__ = ["EmulatorState", "Refusal"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer decided before the body is read: status, error text, extra headers."""

    status: int
    error: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class _Key:
    credits: int
    revoked: bool
    policy: CountingPolicy | None


class EmulatorState:
    """One emulated API server's state: keys and balances, limiter state, draws and counters.

    Use :class:`Emulator`, which adds the ASGI app; this base exists so that the app can be
    written against the state without depending on the class that builds it.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.stats = Stats(window=self.config.window)
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._script_position = 0
        self._fault_rng = random.Random(self.config.seed)  # noqa: S311 - simulation, not secrets
        self._latency_rng = random.Random(self.config.seed + 1)  # noqa: S311
        self._load_keys()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} keys={len(self._keys)} requests={self.stats.requests}>"

    def _new_policy(self) -> CountingPolicy | None:
        limit = self.config.limit
        return make_policy(limit) if limit is not None else None

    def _load_keys(self) -> None:
        self._keys = {
            key: _Key(
                credits=credits,
                revoked=key in self.config.revoked,
                policy=self._new_policy(),
            )
            for key, credits in self.config.keys.items()
        }

    @property
    def default_key(self) -> str:
        """The first configured key (what test fixtures hand to the client)."""
        with self._lock:
            for key in self._keys:
                return key
        raise LookupError("the emulator has no API keys configured")

    # -- keys and credits ------------------------------------------------------------------

    def keys(self) -> list[str]:
        """The keys the emulator knows, revoked ones included."""
        with self._lock:
            return list(self._keys)

    def credits(self, key: str) -> int:
        """The balance of ``key``; KeyError for a key the emulator does not know."""
        with self._lock:
            return self._keys[key].credits

    def set_credits(self, key: str, credits: int) -> None:
        """Set the balance of ``key``, adding the key (active, fresh limiter) if it is new."""
        _check_key(key)
        _check_credits(credits)
        with self._lock:
            found = self._keys.get(key)
            if found is None:
                self._keys[key] = _Key(credits=credits, revoked=False, policy=self._new_policy())
            else:
                found.credits = credits

    def revoke(self, key: str) -> None:
        """Revoke ``key``: its requests get 403 from now on. KeyError when unknown."""
        with self._lock:
            self._keys[key].revoked = True

    def restore(self, key: str) -> None:
        """Undo :meth:`revoke`."""
        with self._lock:
            self._keys[key].revoked = False

    def knows(self, key: str | None) -> bool:
        """Whether ``key`` is configured (revoked or not)."""
        with self._lock:
            return key is not None and key in self._keys

    def is_revoked(self, key: str) -> bool:
        """Whether ``key`` is revoked. KeyError when unknown."""
        with self._lock:
            return self._keys[key].revoked

    def reset(self) -> None:
        """Back to the configuration: balances, revocations, limiters, fault script, RNGs and
        counters."""
        with self._lock:
            self._load_keys()
            self._script_position = 0
            self._fault_rng.seed(self.config.seed)
            self._latency_rng.seed(self.config.seed + 1)
        self.stats.clear()

    # -- decisions, in the order the app asks for them ---------------------------------------

    def arrive(self, key: str | None, now: float) -> str | Refusal:
        """Count an arrival at ``now`` and apply authentication then the rate limit.

        Returns the key when the request may go on, else the refusal (401, 403 or 429). A
        refused request never counts against the limit.
        """
        with self._lock:
            state = self._keys.get(key) if key else None
            self.stats.record_arrival(key if state is not None else None, now)
            if not key:
                return Refusal(401, "No api key provided")
            if state is None:
                return Refusal(403, "Invalid api key")
            if state.revoked:
                return Refusal(403, "This api key has been revoked")
            policy = state.policy
            if policy is None or policy.allow(now):
                return key
            wait = policy.retry_after(now)
        self.stats.record_rate_limited(key)
        return Refusal(429, "Too many requests, please slow down", self._retry_after(wait))

    def _retry_after(self, wait: float) -> tuple[tuple[str, str], ...]:
        limit = self.config.limit
        if limit is None or limit.retry_after == "off":
            return ()
        if limit.retry_after == "precise":
            return (("retry-after", f"{max(wait, 0.001):.3f}"),)
        # delay-seconds is a whole number; rounding down would invite a second 429.
        whole = math.ceil(wait - EPSILON)
        return (("retry-after", str(max(1, whole))),)

    def has_credits(self, key: str) -> bool:
        """Whether ``key`` can pay for one success now."""
        with self._lock:
            return self._keys[key].credits >= self.config.cost

    def charge(self, key: str) -> int | None:
        """Take the cost of one success; the balance left, or None when it cannot pay (a
        concurrent request spent the last credit since :meth:`has_credits`)."""
        cost = self.config.cost
        with self._lock:
            state = self._keys[key]
            if state.credits < cost:
                return None
            state.credits -= cost
            left = state.credits
        self.stats.record_charge(key, cost)
        return left

    def next_fault(self) -> str:
        """The fate of the next request that passed every check: a fault step or ``"ok"``."""
        faults = self.config.faults
        with self._lock:
            script = faults.script
            if script and (self._script_position < len(script) or faults.repeat):
                step = script[self._script_position % len(script)]
                self._script_position += 1
                return step
            if faults.total_probability <= 0:
                return "ok"
            draw = self._fault_rng.random()
            if draw < faults.server_error:
                return str(self._fault_rng.choice(faults.server_error_statuses))
            draw -= faults.server_error
            for step, chance in (
                ("429", faults.rate_limited),
                ("reset", faults.reset),
                ("stall", faults.stall),
                ("truncate", faults.truncate),
                ("truncate-jpeg", faults.truncate_jpeg),
            ):
                if draw < chance:
                    return step
                draw -= chance
            return "ok"

    def next_latency(self) -> float:
        """The processing time of the next success, in seconds."""
        with self._lock:
            return self.config.latency.sample(self._latency_rng)
