"""A credit ledger shared through Redis: one balance and one budget for every process using a name.

The rules are :class:`~clipnormals.CreditLedger`'s (see ``clipnormals._core.credits``), applied
to the attempts of every process at once, inside one Lua script (EVALSHA, atomic on the server,
on the server's clock):

- each attempt reserves one call's cost before it is sent, and is refused when
  ``remaining - reserved - unreported - cost < reserve`` or
  ``consumed + uncertain + reserved + cost > budget``, where every term counts all processes.
  While attempts are in flight anywhere (and may give credits back), a refused attempt waits;
  when nothing is in flight, the refusal is final (:class:`CreditBudgetError`);
- the outcome is settled from the answer's status line and headers (:func:`answer_cost`, the
  same function the local ledger uses): an answer costs what it says, a 200 one call; an attempt
  that went out and got no answer is *uncertain*: against the budget for good, against the
  balance until a balance reported by an attempt reserved after it ended covers it;
- the balance reported by any process is merged with the local ledger's reorder-safe rule: the
  lowest report is the newest, unless it is higher than any reordering explains (a top-up).
  "Reordering" counts the attempts of every process that settled, stayed in flight or went
  uncertain since the reporting attempt was reserved;
- until a balance is known, one attempt in all is in flight (the probe);
- a 402 or a 403 halts the name: every process's next reservation raises
  :class:`ClientHaltedError` (a 402 also sets the balance to 0). The halt is remembered while
  the name is in use; after a top-up or a new key, use a new name.

Each process's own outcome is recorded on its reservation object (``answered`` is called before
the body is read, and does no I/O) and written to Redis when the ``reserve`` block ends, shielded
from cancellation. Until then it still counts as reserved: the shared view is never lower than
what the server may have charged. Every reservation has an id, so that a write that fails (or
whose reply is lost) is kept and retried, and applied once. A reservation whose *grant* reply is
lost cannot be settled by anyone who knows it: its process retires its owner id (see below), and
the reservation becomes uncertain when that lease lapses.

Leases. Every reservation belongs to an *owner*, one per ``RedisLedger`` (``host:pid:random``).
An owner holds a lease in Redis that its ledger renews in the background every ``lease / 3``
seconds, for as long as it is open (``async with``). A process that dies (SIGKILL, a lost
machine) stops renewing; once its lease has lapsed, the next script call by any process moves
what it held from *reserved* to *uncertain*, exactly as if each of its attempts had gone out and
got no answer. That is the only safe reading: a dead process's request may have reached the
server and been charged (the server charges when it answers, whether or not the client is still
there). So a dead worker blocks nobody for longer than ``lease``, and its credits are neither
given back silently (which could overspend the budget or the balance) nor lost for good on the
balance (a later balance report covers them). Against the budget they stay spent, as any
uncertain attempt does: the budget is a hard cap on what the server may have charged.

A lapsed lease is final: an owner that comes back (a process frozen for longer than its lease)
gets a new owner id for its next reservations, and the late settlement of an old one takes its
credits back out of *uncertain* and applies the outcome then known. Pick ``lease`` longer than
any stall of a live process's event loop; a shorter one is still safe, only less exact.
``clipnormals.redis.RedisClaims`` uses the same leases (the same sorted set) for its claims.

A process that waits (the probe is out, or every credit is reserved) polls the script, starting
at 10 ms and backing off to 100 ms; settlements made in the same process wake it at once.

Keys, under ``clipnormals:{name}:``: ``credits:state`` (a hash of the counters),
``credits:held`` (credits held per owner), ``credits:holds`` (each reservation in flight,
``owner/id`` -> credits), ``credits:expired`` (reservations of lapsed owners, still uncertain)
and ``owners`` (a sorted set: owner -> lease end). They expire after ``ttl`` seconds
without use. The braces put them in one Redis Cluster hash slot.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Final, Self

import anyio
from anyio.abc import TaskGroup

from .._core.credits import CreditHold, CreditPolicy, parse_credit_header, parsed_answer_cost
from .._errors import (
    ClientClosedError,
    ClientHaltedError,
    ClipnormalsError,
    CreditBudgetError,
    InsufficientCreditsError,
    PermissionDeniedError,
)
from .connection import RedisConnection, aioredis, check_name, new_owner
from .ledger_script import (
    BUDGET,
    GRANTED,
    HALTED,
    LOST,
    REFUSED,
    SCRIPT,
    SNAPSHOT,
)

__all__ = ["RedisLedger"]

logger = logging.getLogger("clipnormals")

_US: Final = 1_000_000
_POLL_FIRST: Final = 0.01
_POLL_MAX: Final = 0.1


class _Hold:
    """One attempt's reservation; its outcome is written to Redis when the block ends."""

    __slots__ = (
        "_outcome",
        "amount",
        "consumed_at_start",
        "epoch_at_start",
        "id",
        "lost_at_start",
        "owner",
        "probe",
        "remaining",
        "spent",
        "status",
        "unit_seen",
    )

    def __init__(self, owner: str, hold_id: str, detail: list[int]) -> None:
        amount, probe, consumed, lost, epoch = detail[:5]
        self.owner = owner
        self.id = hold_id
        self.amount = amount
        self.probe = bool(probe)
        self.consumed_at_start = consumed
        self.lost_at_start = lost
        self.epoch_at_start = epoch
        self._outcome: str | None = None
        self.spent = 0
        self.unit_seen = -1
        self.remaining = -1
        self.status = 0

    @property
    def settled(self) -> bool:
        """True once the attempt's outcome was recorded."""
        return self._outcome is not None

    @property
    def outcome(self) -> str:
        """``answered``, ``unanswered`` or ``released`` (the default: never sent)."""
        return self._outcome or "released"

    def answered(self, status: int, headers: Mapping[str, str]) -> int:
        """The answer's status line and headers arrived; returns the credits it cost."""
        consumed = parse_credit_header(headers, "x-credits-consumed")
        remaining = parse_credit_header(headers, "x-remaining-credits")
        spent = parsed_answer_cost(
            status, headers, self.amount, consumed=consumed, remaining=remaining
        )
        if self._outcome is None:
            self._outcome = "answered"
            self.spent = spent
            self.status = status
            self.unit_seen = -1 if consumed is None else consumed
            self.remaining = -1 if remaining is None else remaining
        return spent

    def unanswered(self) -> None:
        """The request went out and no answer came: it may have been charged."""
        if self._outcome is None:
            self._outcome = "unanswered"

    def release(self) -> None:
        """The request never reached the server: give the reservation back."""
        if self._outcome is None:
            self._outcome = "released"

    def operands(self) -> list[int | str]:
        return [
            self.amount,
            int(self.probe),
            self.outcome,
            self.spent,
            self.unit_seen,
            self.remaining,
            self.consumed_at_start,
            self.lost_at_start,
            self.epoch_at_start,
            self.status,
            self.id,
        ]


class RedisLedger:
    """A :class:`~clipnormals.Ledger` whose balance and budget are shared by every process and
    machine using ``name``.

    Give each process its own instance with the same ``name`` and hand it to the client
    (``AsyncClient(ledger=...)``); together the clients never send what the account's balance
    (as the server reports it) or the shared ``budget`` cannot pay for: no 402s, however many
    processes. Open it with ``async with`` before use: it keeps its lease alive in the
    background, so that the reservations of a process that dies expire (see the module
    docstring). A blocking :class:`~clipnormals.Client` given a ledger opens and closes it.

    Args:
        policy: the reserve and budget, for all processes together; each process applies its
            own, so give them all the same (default: no reserve, no budget).
        redis: a ``redis.asyncio.Redis`` client to use (left open by :meth:`aclose`).
        url: a Redis URL (``redis://``, ``rediss://`` or ``unix://``) to connect to instead;
            default ``redis://localhost:6379/0``. The password it may carry is never shown.
        name: the ledger's name: every ledger with the same name shares one account.
        lease: seconds after which the reservations of a process that stopped renewing its
            lease count as uncertain (renewed every ``lease / 3`` s).
        ttl: seconds without use after which the shared state is forgotten (default a day).
        timeout: seconds to wait for each answer from Redis.

    Attributes ``remaining``, ``consumed``, ``reserved``, ``uncertain`` and ``unit`` are the
    shared ledger's, as of this instance's last exchange with Redis (:meth:`refresh` reads them
    now).

    Raises:
        ClipnormalsError: from ``reserve``/``refresh`` when Redis cannot be reached or fails.
        ClientClosedError: used before ``async with``, after closing, from another event loop
            or in a forked child; nothing is sent.

    Example:
        >>> import clipnormals
        >>> from clipnormals.redis import RedisLedger, RedisLimiter
        >>> async def main() -> None:
        ...     rl = clipnormals.RateLimit(requests=60, per=60.0)
        ...     policy = clipnormals.CreditPolicy(budget=500)
        ...     url = "redis://cache:6379/0"
        ...     async with (
        ...         RedisLimiter(rl, url=url, name="team-key") as limiter,
        ...         RedisLedger(policy, url=url, name="team-key") as ledger,
        ...         clipnormals.AsyncClient(rate_limit=rl, limiter=limiter, ledger=ledger) as c,
        ...     ):
        ...         await c.surface_normals("portrait.jpg")
    """

    __slots__ = (
        "__weakref__",
        "_changed",
        "_closed",
        "_conn",
        "_halted",
        "_keys",
        "_lease",
        "_name",
        "_owner",
        "_pending",
        "_registered",
        "_script",
        "_tg",
        "_ttl",
        "_view",
        "policy",
    )

    def __init__(
        self,
        policy: CreditPolicy | None = None,
        *,
        redis: aioredis.Redis | None = None,
        url: str | None = None,
        name: str = "default",
        lease: float = 30.0,
        ttl: float = 86_400.0,
        timeout: float = 5.0,
    ) -> None:
        if policy is not None and not isinstance(policy, CreditPolicy):
            raise TypeError("policy must be a clipnormals.CreditPolicy")
        if not (math.isfinite(lease) and lease > 0):
            raise ValueError("lease must be a positive number of seconds")
        if not (math.isfinite(ttl) and ttl > lease):
            raise ValueError("ttl must be a number of seconds longer than the lease")
        self.policy = policy or CreditPolicy()
        self._name = check_name(name)
        self._conn = RedisConnection(kind="RedisLedger", redis=redis, url=url, timeout=timeout)
        self._script = self._conn.script(SCRIPT)
        prefix = f"clipnormals:{{{name}}}:"
        self._keys = [
            prefix + "credits:state",
            prefix + "credits:held",
            prefix + "owners",
            prefix + "credits:expired",
            prefix + "credits:holds",
        ]
        self._lease = float(lease)
        self._ttl = float(ttl)
        self._owner = new_owner()
        self._registered = False
        # remaining, consumed, reserved, uncertain, unreported, unit, halted, reported
        self._view: list[int] = [-1, 0, 0, 0, 0, 1, 0, -1]
        self._halted: InsufficientCreditsError | PermissionDeniedError | None = None
        self._pending: list[_Hold] = []
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"RedisLedger(name={self._name!r}, server={self._conn.where!r}, "
            f"remaining={self.remaining}, consumed={self.consumed}, reserved={self.reserved}, "
            f"uncertain={self.uncertain})"
        )

    # -- the shared view ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The ledger's name; ledgers with the same name share one account."""
        return self._name

    @property
    def owner(self) -> str:
        """This instance's owner id in Redis (``host:pid:random``), for operators."""
        return self._owner

    @property
    def remaining(self) -> int | None:
        """The balance as last reported by any process, ``None`` until known."""
        value = self._view[0]
        return None if value < 0 else value

    @property
    def consumed(self) -> int:
        """Credits the server said it charged, all processes together."""
        return self._view[1]

    @property
    def reserved(self) -> int:
        """Credits held by attempts in flight, all processes together."""
        return self._view[2]

    @property
    def uncertain(self) -> int:
        """Credits of attempts that may have been charged without an answer (left unanswered, or
        held by a process whose lease lapsed)."""
        return self._view[3]

    @property
    def unit(self) -> int:
        """The cost of one call: the largest ``x-credits-consumed`` seen, 1 until told."""
        return self._view[5]

    @property
    def halted(self) -> bool:
        """True after a 402 or 403 here or in any process sharing the ledger."""
        return self._halted is not None or self._view[6] > 0

    # -- the Ledger protocol -----------------------------------------------------------------

    def check_halted(self) -> None:
        """Raise :class:`ClientHaltedError` when a 402 or 403 halted the ledger (as last seen)."""
        if self._halted is not None:
            raise ClientHaltedError(
                f"not sent: the client halted after an earlier response: {self._halted.message}",
                cause=self._halted,
            )
        status = self._view[6]
        if status:
            cls = InsufficientCreditsError if status == 402 else PermissionDeniedError
            message = f"{status} from the API to a process sharing the credit ledger {self._name!r}"
            raise ClientHaltedError(
                f"not sent: halted after an earlier response: {message}",
                cause=cls(message, status_code=status),
            )

    def check(self) -> None:
        """Raise now when no request could ever be sent, as of the last shared view.

        Raises:
            ClientHaltedError: a 402 or 403 halted the ledger.
            CreditBudgetError: the reserve or the budget is reached and nothing in flight in
                any process could give credits back.
        """
        self.check_halted()
        if self.reserved == 0 and (reason := self._refusal()) is not None:
            raise CreditBudgetError(reason)

    def halt(
        self,
        error: InsufficientCreditsError | PermissionDeniedError,
        *,
        remaining: int | None = None,
    ) -> None:
        """Refuse every later request of this process, without I/O.

        The other processes learn of it from the settlement of the answer that caused it.
        """
        if self._halted is None:
            self._halted = error
        current = self.remaining
        if remaining is not None and (current is None or remaining < current):
            self._view[0] = remaining
        self._notify()

    @asynccontextmanager
    async def reserve(self) -> AsyncIterator[CreditHold]:
        """Hold one call's cost for one attempt, in the shared ledger; released at the end of
        the block unless settled, and the outcome written to Redis then.

        Raises:
            CreditBudgetError: the attempt may not be sent (reserve or budget); nothing sent.
            ClientHaltedError: a 402 or 403 halted the ledger.
            ClientClosedError: the ledger is not open (see the class docstring).
            ClipnormalsError: Redis cannot be reached.
        """
        hold = await self._acquire()
        try:
            yield hold
        finally:
            await self._settle(hold)

    # -- life cycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ClientClosedError("this RedisLedger is closed")
        if self._tg is not None:
            raise ClientClosedError("this RedisLedger is open already")
        self._conn.check_usable()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._keepalive)
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:  # the keepalive ends before the last writes
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop renewing the lease, write what is pending, leave, and close the connection if
        this ledger opened it.

        Leaving ends this owner's lease at once: anything it still holds (a settlement that
        could not be written) counts as uncertain now rather than after the lease. Idempotent;
        in a forked child, or from another event loop, it only lets go of the connections.
        """
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if not self._conn.usable_here():
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._flush()
                if self._registered:
                    await self._call("leave")
            except ClipnormalsError as exc:
                logger.warning("RedisLedger %r: could not leave cleanly: %s", self._name, exc)
            finally:
                await self._conn.aclose()

    async def refresh(self) -> None:
        """Read the shared ledger now (the attributes are otherwise as of the last exchange)."""
        await self._call("status")

    # -- internals ---------------------------------------------------------------------------

    def _refusal(self) -> str | None:
        remaining, consumed, reserved, uncertain, unreported, cost = self._view[:6]
        budget = self.policy.budget
        if budget is not None and consumed + uncertain + reserved + cost > budget:
            return self._budget_reason()
        if remaining >= 0 and remaining - reserved - unreported - cost < self.policy.reserve:
            return self._reserve_reason()
        return None

    def _budget_reason(self) -> str:
        spent = f"{self.consumed} of {self.policy.budget} credits consumed"
        if self.uncertain:
            spent += f", {self.uncertain} more possibly charged (requests left unanswered)"
        return f"credit budget reached: {spent} (ledger {self._name!r}, all processes)"

    def _reserve_reason(self) -> str:
        return (
            f"credit reserve reached: {self.remaining} credits left, "
            f"{self.policy.reserve} kept in reserve (ledger {self._name!r}, all processes)"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this RedisLedger is closed")
        if self._tg is None:
            raise ClientClosedError(
                "this RedisLedger is not open: use it inside `async with RedisLedger(...)` "
                "(it renews its lease in the background), or give it to a blocking Client, "
                "which opens it; nothing was sent"
            )

    async def _acquire(self) -> _Hold:
        self._check_open()
        budget = -1 if self.policy.budget is None else self.policy.budget
        poll = _POLL_FIRST
        while True:
            self.check_halted()
            # Shielded: once the script has granted a hold, the reply must reach us so that the
            # hold is settled, never left behind.
            hold_id = uuid.uuid4().hex[:12]
            with anyio.CancelScope(shield=True):
                try:
                    reply = await self._call("reserve", self.policy.reserve, budget, hold_id)
                except ClipnormalsError:
                    # Granted or not? Unknown: stop renewing this owner's lease, so that a hold
                    # granted without our knowing becomes uncertain once it lapses.
                    self._retire_owner("a reservation's reply was lost")
                    raise
            code, detail = reply[0], reply[1 + SNAPSHOT :]
            if code == GRANTED:
                return _Hold(self._owner, hold_id, detail)
            if code == LOST:
                self._retire_owner(self._stalled())
                continue
            if code == HALTED:
                self.check_halted()
            if code == REFUSED:
                raise CreditBudgetError(
                    self._budget_reason() if detail[0] == BUDGET else self._reserve_reason()
                )
            changed = self._changed
            with anyio.move_on_after(poll):
                await changed.wait()
            poll = min(2 * poll, _POLL_MAX)

    async def _settle(self, hold: _Hold) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._write(hold)
            except ClipnormalsError as exc:
                self._pending.append(hold)
                logger.warning(
                    "RedisLedger %r: could not record an attempt's outcome (%s); will retry",
                    self._name,
                    exc.message,
                )
            finally:
                self._notify()

    async def _write(self, hold: _Hold) -> None:
        await self._call("settle", *hold.operands(), owner=hold.owner)

    async def _flush(self) -> None:
        while self._pending:
            await self._write(self._pending[0])
            self._pending.pop(0)

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(self._lease / 3)
            try:
                await self._flush()
                if self._registered and (await self._call("renew"))[0] == LOST:
                    self._retire_owner(self._stalled())
            except ClipnormalsError as exc:
                logger.warning("RedisLedger %r: could not renew its lease: %s", self._name, exc)

    def _stalled(self) -> str:
        return f"its lease lapsed: the process stalled for longer than {self._lease:g} s"

    def _retire_owner(self, why: str) -> None:
        """Continue under a new owner id; the old one's lease lapses (or has lapsed), and what
        it holds counts as uncertain until settled."""
        logger.warning(
            "RedisLedger %r: owner %s retired (%s); its reservations count as uncertain until "
            "settled; continuing under a new owner id",
            self._name,
            self._owner,
            why,
        )
        self._owner = new_owner()
        self._registered = False

    async def _call(self, op: str, *operands: int | str, owner: str | None = None) -> list[int]:
        args: list[str | int] = [
            op,
            owner or self._owner,
            math.ceil(self._lease * _US),
            math.ceil(self._ttl * 1000),
            *operands,
        ]
        reply = await self._conn.run(self._script, self._keys, args)
        values = [int(v) for v in reply]
        if op in ("reserve", "renew") and owner is None:
            self._registered = True
        remaining, consumed, reserved, uncertain, unreported, unit, halted, reported = values[
            1 : 1 + SNAPSHOT
        ]
        local = self.remaining
        if self._halted is not None and local is not None and (remaining < 0 or local < remaining):
            remaining = local  # this process's own halt said less
        self._view = [remaining, consumed, reserved, uncertain, unreported, unit, halted, reported]
        return values

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
