"""The credit ledger: never send a request the account cannot pay for, or the user did not allow.

The server charges when it answers (docs/api-contract.md): a 200 has been paid for the moment
its status line and headers leave the server, whether or not its body arrives. So the ledger
learns from the *headers* of every answer, before the body is read:

- an answer costs what its ``x-credits-consumed`` says; without that header, a 200 from the API
  (an image, or one that reports ``x-remaining-credits``) costs one call (the largest cost seen,
  1 until told), and anything else costs nothing (errors, a proxy's page). A body lost after the
  headers (cut off, or its reader cancelled) changes nothing: it was paid for;
- an attempt that got **no answer** after its request went out (a read timeout, a reset, a
  cancellation while waiting) may or may not have been charged. It is counted as ``uncertain``:
  against the budget for good (the budget caps what the server may have charged), and against
  the balance until a balance reported by a later attempt includes it.

Each attempt reserves one call's cost before it is sent, and settles it with what its answer
said. A request is not sent when ``remaining - reserved - uncertain - cost < reserve`` or when
``consumed + uncertain + reserved + cost > budget``; while other attempts are in flight and
might give their reservation back, it waits for them instead of giving up too early. A retry of
a charged attempt needs a reservation of its own, so the budget caps retries too. When the
server reports the balance, a 402 cannot happen for a single client.

Until the first answer tells the balance, one attempt at a time is in flight (the probe). The
cost of a call is ``x-credits-consumed``; a server that reports only the balance (an older
version of the API) is probed one attempt at a time until two balances around one charge show
the cost (three probes at most; then one credit a call is assumed). The first call's cost can
only be learned from its answer: a budget smaller than one call can be overrun by that call.

Answers can arrive out of order: a slow one may carry a balance older than one already seen.
Without top-ups the balance only falls, so the lowest report is the newest; a higher one is
believed only when no reordering can explain it (a top-up), so a stale header never lets the
client overspend.

The client speaks to its ledger through the :class:`Ledger` protocol, which :class:`CreditLedger`
(one process) and ``clipnormals.redis.RedisLedger`` (every process sharing a Redis name, the same
rules in a Lua script) implement. What an answer costs is decided in one place,
:func:`answer_cost`, for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import anyio

from .._errors import (
    ClientHaltedError,
    CreditBudgetError,
    InsufficientCreditsError,
    PermissionDeniedError,
)
from .validate import require_int

__all__ = [
    "CreditHold",
    "CreditLedger",
    "CreditPolicy",
    "Ledger",
    "Reservation",
    "answer_cost",
    "parse_credit_header",
    "parsed_answer_cost",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditPolicy:
    """Limits on credit spending.

    Args:
        reserve: credits to leave untouched on the account; requests stop when sending one more
            could take the balance below this.
        budget: the most credits this client may spend in all, charges the server may have made
            without answering included (``None``: no budget). A hard cap once the cost of a
            call is known: the first call's cost is learned from its answer, so a budget
            smaller than one call can be overrun by that call.

    Example:
        >>> CreditPolicy(reserve=10, budget=500).budget
        500
    """

    reserve: int = 0
    budget: int | None = None

    def __post_init__(self) -> None:
        require_int("CreditPolicy.reserve", self.reserve, minimum=0)
        if self.budget is not None:
            require_int("CreditPolicy.budget", self.budget, minimum=0)


#: Larger values are not believed: a call costs a few credits (1 at the time of writing, per the
#: API's documentation), and a balance of more than this is no account's.
_MAX_CREDITS = {"x-credits-consumed": 10_000, "x-remaining-credits": 10**12}


def parse_credit_header(headers: Mapping[str, str], name: str) -> int | None:
    """An integer credit header, or ``None`` when absent, not a plain non-negative number, or
    beyond belief (a call costing more than 10,000 credits: a broken proxy or a hostile server
    would otherwise make every later call refused).

    Example:
        >>> parse_credit_header({"x-remaining-credits": " 42 "}, "x-remaining-credits")
        42
        >>> parse_credit_header({"x-remaining-credits": "-1"}, "x-remaining-credits") is None
        True
    """
    raw = headers.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            return None
        if not as_float.is_integer():
            return None
        value = int(as_float)
    if value < 0 or value > _MAX_CREDITS.get(name.lower(), 10**12):
        return None
    return value


def answer_cost(status: int, headers: Mapping[str, str], amount: int) -> int:
    """The credits an answer cost, from its status line and headers (the body is not needed).

    ``x-credits-consumed`` when present; without it, ``amount`` (the cost of one call) for a 200
    from the API (an image, or one that reports ``x-remaining-credits``), and 0 otherwise (an
    error, or a 200 that is not the API's, such as a proxy's page).

    Example:
        >>> answer_cost(200, {"content-type": "image/jpeg"}, 1)
        1
        >>> answer_cost(200, {"x-credits-consumed": "2"}, 1), answer_cost(429, {}, 1)
        (2, 0)
    """
    consumed = parse_credit_header(headers, "x-credits-consumed")
    return parsed_answer_cost(status, headers, amount, consumed=consumed, remaining=None)


def parsed_answer_cost(
    status: int,
    headers: Mapping[str, str],
    amount: int,
    *,
    consumed: int | None,
    remaining: int | None,
) -> int:
    """:func:`answer_cost` for a caller that parsed the credit headers already
    (``parse_credit_header``); ``remaining`` may be ``None`` when it was not parsed, and is then
    parsed here if the cost depends on it."""
    if consumed is not None:
        return consumed
    if remaining is None:
        remaining = parse_credit_header(headers, "x-remaining-credits")
    if status == 200 and (
        remaining is not None or headers.get("content-type", "").startswith("image/")
    ):
        return amount  # the API's answer, from a version that does not say the cost
    return 0


@runtime_checkable
class CreditHold(Protocol):
    """Credits held for one attempt in flight: what :meth:`Ledger.reserve` yields.

    Settle it once, with what happened: :meth:`answered` (the headers of an answer arrived),
    :meth:`unanswered` (the request went out and no answer came), or nothing at all (the
    request never left: the hold is released when the ``reserve`` block ends). A ledger applies
    the outcome at once or, at the latest, when the ``reserve`` block ends.
    """

    @property
    def amount(self) -> int:
        """The credits held (the cost of one call when it was reserved)."""
        ...

    @property
    def settled(self) -> bool:
        """True once the attempt's outcome was recorded."""
        ...

    def answered(self, status: int, headers: Mapping[str, str]) -> int:
        """The answer's status line and headers arrived; returns the credits it cost."""
        ...

    def unanswered(self) -> None:
        """The request went out and no answer came: it may have been charged."""
        ...

    def release(self) -> None:
        """The request never reached the server: give the hold back."""
        ...


@runtime_checkable
class Ledger(Protocol):
    """What the client needs from a credit ledger; :class:`CreditLedger` keeps one in process,
    ``clipnormals.redis.RedisLedger`` shares one between processes and machines.

    The attributes are the ledger's view of the account (for a shared ledger: of every process
    sharing it, as of its last exchange with the shared store): ``remaining`` (``None`` until
    known), ``consumed``, ``reserved``, ``uncertain`` and ``unit`` in credits, as documented on
    :class:`CreditLedger`. ``check`` and ``check_halted`` never wait; ``reserve`` may.
    """

    @property
    def policy(self) -> CreditPolicy:
        """The reserve and budget this ledger enforces."""
        ...

    @property
    def remaining(self) -> int | None:
        """The balance as last reported (corrected for charges since), ``None`` until known."""
        ...

    @property
    def consumed(self) -> int:
        """Credits the server said it charged."""
        ...

    @property
    def reserved(self) -> int:
        """Credits held by attempts in flight."""
        ...

    @property
    def uncertain(self) -> int:
        """Credits of attempts that went out and got no answer (counted against the budget)."""
        ...

    @property
    def unit(self) -> int:
        """The cost of one call, in credits (the largest ``x-credits-consumed`` seen, or 1)."""
        ...

    @property
    def halted(self) -> bool:
        """True after a 402 or 403 halted the ledger."""
        ...

    def check(self) -> None:
        """Raise when no request could ever be sent (see :meth:`CreditLedger.check`)."""
        ...

    def check_halted(self) -> None:
        """Raise :class:`ClientHaltedError` when a 402 or 403 halted the ledger."""
        ...

    def halt(
        self,
        error: InsufficientCreditsError | PermissionDeniedError,
        *,
        remaining: int | None = None,
    ) -> None:
        """Refuse every later request, without I/O (after a 402 or 403)."""
        ...

    def reserve(self) -> AbstractAsyncContextManager[CreditHold]:
        """Hold one call's cost for one attempt; released at the end of the block unless
        settled. Raises :class:`CreditBudgetError` (nothing sent) or
        :class:`ClientHaltedError`."""
        ...


class Reservation:
    """Credits held for one attempt in flight; see :meth:`CreditLedger.reserve`.

    Settle it once, with what happened: :meth:`answered` (the headers of an answer arrived),
    :meth:`unanswered` (the request went out and no answer came), or nothing at all (the
    request never left: the reservation is released).
    """

    __slots__ = (
        "_ledger",
        "_settled",
        "amount",
        "consumed_at_start",
        "probe",
        "uncertain_at_start",
        "uncertain_epoch",
    )

    def __init__(self, ledger: CreditLedger, amount: int, *, probe: bool) -> None:
        self._ledger = ledger
        self.amount = amount
        self.probe = probe
        self.consumed_at_start = ledger.consumed
        self.uncertain_at_start = ledger.uncertain
        self.uncertain_epoch = ledger._uncertain_epoch
        self._settled = False

    @property
    def settled(self) -> bool:
        """True once the attempt's outcome was recorded."""
        return self._settled

    def answered(self, status: int, headers: Mapping[str, str]) -> int:
        """The answer's status line and headers arrived; returns the credits it cost.

        The cost is ``x-credits-consumed``; without it, one call's cost for a 200 from the API
        and nothing otherwise. Called before the body is read, so a body lost later is still
        counted.
        """
        consumed = parse_credit_header(headers, "x-credits-consumed")
        remaining = parse_credit_header(headers, "x-remaining-credits")
        spent = parsed_answer_cost(
            status, headers, self.amount, consumed=consumed, remaining=remaining
        )
        return self._settle(
            spent=spent, consumed_header=consumed, remaining=remaining, answered=True
        )

    def unanswered(self) -> None:
        """The request went out and no answer came: it may have been charged."""
        self._settle(spent=0, consumed_header=None, remaining=None, answered=False)

    def release(self) -> None:
        """The request never reached the server: give the reservation back."""
        if not self._settled:
            self._settled = True
            self._ledger._release(self)

    def _settle(
        self, *, spent: int, consumed_header: int | None, remaining: int | None, answered: bool
    ) -> int:
        if self._settled:
            return 0
        self._settled = True
        return self._ledger._settle(
            self,
            spent=spent,
            consumed_header=consumed_header,
            remaining=remaining,
            answered=answered,
        )


class _Reserving:
    """``async with ledger.reserve() as reservation``: see :meth:`CreditLedger.reserve` (a
    class, not a generator: it runs for every attempt)."""

    __slots__ = ("_ledger", "_reservation")

    def __init__(self, ledger: CreditLedger) -> None:
        self._ledger = ledger
        self._reservation: Reservation | None = None

    async def __aenter__(self) -> Reservation:
        self._reservation = await self._ledger._acquire()
        return self._reservation

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reservation is not None:
            self._reservation.release()


class CreditLedger:
    """Live accounting of one client's credits.

    Attributes (read them at any time):
        remaining: the balance as last reported (corrected for reordering and for charges
            seen since), ``None`` until known.
        consumed: credits the server said it charged this client (from the answers' headers).
        reserved: credits held by attempts in flight.
        uncertain: attempts that went out and got no answer, so may have been charged (their
            cost, in credits). Counted against the budget for good.
        unit: the cost of one call: the largest ``x-credits-consumed`` seen, 1 until told.

    Example:
        >>> ledger = CreditLedger(CreditPolicy(budget=2))
        >>> ledger.remaining is None, ledger.consumed, ledger.reserved, ledger.uncertain
        (True, 0, 0, 0)
    """

    __slots__ = (
        "__weakref__",
        "_assumed",
        "_changed",
        "_cost_known",
        "_halted",
        "_last_probe_balance",
        "_probes_without_cost",
        "_probing",
        "_reported",
        "_uncertain_epoch",
        "_unreported",
        "consumed",
        "policy",
        "remaining",
        "reserved",
        "uncertain",
        "unit",
    )

    def __init__(self, policy: CreditPolicy) -> None:
        self.policy = policy
        self.remaining: int | None = None
        self.consumed = 0
        self.reserved = 0
        self.uncertain = 0
        self.unit = 1
        self._reported: bool | None = None  # does the server report the balance? None: unknown
        self._cost_known = False  # from x-credits-consumed, or from balances around a charge
        self._assumed = 0  # charges counted at the assumed cost, before it was known
        self._last_probe_balance: int | None = None
        self._probes_without_cost = 0
        self._probing = False
        self._halted: InsufficientCreditsError | PermissionDeniedError | None = None
        self._uncertain_epoch = 0  # bumped by every unanswered attempt
        self._unreported = 0  # uncertain credits no balance report has covered yet
        self._changed: anyio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"CreditLedger(remaining={self.remaining}, consumed={self.consumed}, "
            f"reserved={self.reserved}, uncertain={self.uncertain})"
        )

    @property
    def halted(self) -> bool:
        """True after a 402 or 403 halted the client."""
        return self._halted is not None

    def check_halted(self) -> None:
        """Raise :class:`ClientHaltedError` when a 402 or 403 halted the client."""
        if self._halted is not None:
            raise _halted_error(self._halted)

    def check(self) -> None:
        """Raise now when no request could ever be sent (halted, or credits gone for good).

        Raises:
            ClientHaltedError: a 402 or 403 halted the client.
            CreditBudgetError: the reserve or the budget is reached and nothing in flight could
                give credits back.
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
        """Refuse every later request, without I/O (after a 402 or 403).

        ``remaining`` is the balance the halting answer implies (0 for a 402) when it did not
        carry one itself.
        """
        if self._halted is None:
            self._halted = error
        if remaining is not None and (self.remaining is None or remaining < self.remaining):
            self.remaining = remaining
        self._notify()

    def reserve(self) -> _Reserving:
        """Hold one call's cost for one attempt (``async with``); released on exit unless
        settled.

        Raises:
            CreditBudgetError: the attempt may not be sent (reserve or budget); nothing sent.
            ClientHaltedError: a 402 or 403 halted the client.
        """
        return _Reserving(self)

    async def _acquire(self) -> Reservation:
        while True:
            self.check_halted()
            reason = self._refusal()
            if reason is None:
                probe = self._needs_probe()
                if not (probe and self._probing):
                    self.reserved += self.unit
                    self._probing = self._probing or probe
                    return Reservation(self, self.unit, probe=probe)
            elif self.reserved == 0:
                # Nothing in flight could give credits back: this is final.
                raise CreditBudgetError(reason)
            changed = self._changed
            if changed is None:  # made only when someone waits: most settles wake nobody
                changed = self._changed = anyio.Event()
            await changed.wait()

    def _needs_probe(self) -> bool:
        if self.remaining is None and self._reported is None:
            return True  # the balance is not known yet
        # The cost is not known, and balances could tell it: probe one at a time.
        return not self._cost_known and bool(self._reported)

    def _learn_cost(self, reservation: Reservation, spent: int, remaining: int | None) -> int:
        """What a charged answer without ``x-credits-consumed`` cost; learns the cost of a
        call from two probes' balances. Returns the charge to count."""
        if not reservation.probe or remaining is None:
            return spent
        before, self._last_probe_balance = self._last_probe_balance, remaining
        self._probes_without_cost += 1
        if before is not None and remaining < before:
            cost = before - remaining  # one charge between two sequential probes' balances
            self.consumed += self._assumed * (cost - self.unit)  # earlier guesses, corrected
            self.unit, self._cost_known = cost, True
            return cost
        if self._probes_without_cost >= 3:
            self._cost_known = True  # no fall to read it from: keep the assumed cost
        self._assumed += 1
        return spent

    def _refusal(self) -> str | None:
        cost = self.unit
        budget = self.policy.budget
        if budget is not None and self.consumed + self.uncertain + self.reserved + cost > budget:
            spent = f"{self.consumed} of {budget} credits consumed"
            if self.uncertain:
                spent += f", {self.uncertain} more possibly charged (requests left unanswered)"
            return f"credit budget reached: {spent}"
        if self.remaining is not None:
            after = self.remaining - self.reserved - self._unreported - cost
            if after < self.policy.reserve:
                return (
                    f"credit reserve reached: {self.remaining} credits left, "
                    f"{self.policy.reserve} kept in reserve"
                )
        return None

    def _release(self, reservation: Reservation) -> None:
        self.reserved -= reservation.amount
        if reservation.probe:
            self._probing = False
        self._notify()

    def _settle(
        self,
        reservation: Reservation,
        *,
        spent: int,
        consumed_header: int | None,
        remaining: int | None,
        answered: bool,
    ) -> int:
        """Settle one attempt; returns the credits it was counted as costing."""
        self.reserved -= reservation.amount
        if reservation.probe:
            self._probing = False
        if not answered:
            self.uncertain += reservation.amount
            self._unreported += reservation.amount
            self._uncertain_epoch += 1
            self._notify()
            return 0
        # Charges the server may have made between this attempt's charge and the newest balance
        # already seen: those of attempts that finished meanwhile, those still in flight, and
        # those left unanswered meanwhile.
        in_between = (
            self.consumed
            - reservation.consumed_at_start
            + self.reserved
            + self.uncertain
            - reservation.uncertain_at_start
        )
        if consumed_header is not None:
            self._cost_known = True
            if consumed_header > self.unit:
                self.unit = consumed_header
        elif spent and not self._cost_known:
            spent = self._learn_cost(reservation, spent, remaining)
        self.consumed += spent
        if spent and self._reported is None:
            self._reported = remaining is not None
        if remaining is not None and reservation.uncertain_epoch == self._uncertain_epoch:
            # Sent after every unanswered attempt ended: the balance includes their charges.
            self._unreported = 0
        self._update_remaining(remaining, spent=spent, in_between=in_between)
        self._notify()
        return spent

    def _update_remaining(self, reported: int | None, *, spent: int, in_between: int) -> None:
        if reported is None:
            if self.remaining is not None and spent:
                self.remaining = max(0, self.remaining - spent)
            return
        self._reported = True
        # Without top-ups the balance only falls, so the lowest report is the newest. A higher
        # one is stale, unless it is higher than any reordering explains: then it is a top-up.
        stale_at_most = in_between * self.unit
        if (
            self.remaining is None
            or reported <= self.remaining
            or reported > self.remaining + stale_at_most
        ):
            self.remaining = reported

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def _halted_error(cause: InsufficientCreditsError | PermissionDeniedError) -> ClientHaltedError:
    return ClientHaltedError(
        f"not sent: the client halted after an earlier response: {cause.message}", cause=cause
    )
