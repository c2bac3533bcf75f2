"""The credit ledger: never send a request the account cannot pay for, or the user did not allow.

Remaining credits come from ``x-remaining-credits`` on every response. Until the first response
tells the balance, one request at a time is in flight (the probe). Each request in flight
reserves credits (one call's cost, the largest ``x-credits-consumed`` seen, 1 until told); a
success commits what the server says it consumed, a failure releases the reservation.

A request is not sent when ``remaining - reserved - cost < reserve`` or when the budget would be
exceeded; while other requests are in flight and might still fail and give their reservation
back, it waits for them instead of giving up too early. When the server reports the balance,
this makes a 402 impossible for a single client.

Responses can arrive out of order: a slow response may carry a balance older than one already
seen. Without top-ups the balance only falls, so the lowest report is the newest; a higher one is
believed only when no reordering can explain it (a top-up), so a stale header never lets the
client overspend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from .._errors import (
    ClientHaltedError,
    CreditBudgetError,
    InsufficientCreditsError,
    PermissionDeniedError,
)

__all__ = ["CreditLedger", "CreditPolicy", "Reservation", "parse_credit_header"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditPolicy:
    """Limits on credit spending.

    Args:
        reserve: credits to leave untouched on the account; requests stop when sending one more
            could take the balance below this.
        budget: the most credits this client may consume in all (``None``: no budget).

    Example:
        >>> CreditPolicy(reserve=10, budget=500).budget
        500
    """

    reserve: int = 0
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.reserve < 0:
            raise ValueError("CreditPolicy.reserve must not be negative")
        if self.budget is not None and self.budget < 0:
            raise ValueError("CreditPolicy.budget must not be negative")


def parse_credit_header(headers: Mapping[str, str], name: str) -> int | None:
    """An integer credit header, or ``None`` when absent or not a plain non-negative number."""
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
    return value if value >= 0 else None


class Reservation:
    """Credits held for one request in flight; see :meth:`CreditLedger.reserve`."""

    __slots__ = ("_ledger", "_settled", "amount", "consumed_at_start", "probe")

    def __init__(self, ledger: CreditLedger, amount: int, *, probe: bool) -> None:
        self._ledger = ledger
        self.amount = amount
        self.probe = probe
        self.consumed_at_start = ledger.consumed
        self._settled = False

    def commit(self, consumed: int | None, remaining: int | None) -> None:
        """The request succeeded; record what it cost and the balance the server reported."""
        if not self._settled:
            self._settled = True
            self._ledger._settle(self, consumed=consumed, remaining=remaining, success=True)

    def release(self, remaining: int | None = None) -> None:
        """The request failed (it cost nothing); give the reservation back."""
        if not self._settled:
            self._settled = True
            self._ledger._settle(self, consumed=None, remaining=remaining, success=False)


class CreditLedger:
    """Live accounting of one client's credits.

    Attributes (read them at any time):
        remaining: the balance as last reported (corrected for reordering), ``None`` until known.
        consumed: credits this client has spent.
        reserved: credits held by requests in flight.

    Example:
        >>> ledger = CreditLedger(CreditPolicy(budget=2))
        >>> ledger.remaining is None, ledger.consumed, ledger.reserved
        (True, 0, 0)
    """

    __slots__ = (
        "_changed",
        "_halted",
        "_probing",
        "_reported",
        "consumed",
        "policy",
        "remaining",
        "reserved",
        "unit",
    )

    def __init__(self, policy: CreditPolicy) -> None:
        self.policy = policy
        self.remaining: int | None = None
        self.consumed = 0
        self.reserved = 0
        self.unit = 1
        self._reported: bool | None = None  # does the server report the balance? None: unknown
        self._probing = False
        self._halted: InsufficientCreditsError | PermissionDeniedError | None = None
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"CreditLedger(remaining={self.remaining}, consumed={self.consumed}, "
            f"reserved={self.reserved})"
        )

    @property
    def budget_left(self) -> int | None:
        """Credits the budget still allows, counting reservations; ``None`` without a budget."""
        if self.policy.budget is None:
            return None
        return max(0, self.policy.budget - self.consumed - self.reserved)

    @property
    def available(self) -> int | None:
        """Credits that may still be committed to new requests, or ``None`` when unbounded."""
        limits = []
        if self.remaining is not None:
            limits.append(self.remaining - self.reserved - self.policy.reserve)
        if self.policy.budget is not None:
            limits.append(self.policy.budget - self.consumed - self.reserved)
        return max(0, min(limits)) if limits else None

    @property
    def halted(self) -> bool:
        """True after a 402 or 403 halted the client."""
        return self._halted is not None

    def check_halted(self) -> None:
        """Raise :class:`ClientHaltedError` when a 402 or 403 halted the client."""
        if self._halted is not None:
            raise _halted_error(self._halted)

    def check(self) -> None:
        """Raise now when no request could ever be sent (halted, or credits gone for good)."""
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

    @asynccontextmanager
    async def reserve(self) -> AsyncIterator[Reservation]:
        """Hold credits for one request; release them unless the body commits.

        Raises CreditBudgetError (nothing sent) when the request may not be sent, or the
        halting error when the client was halted.
        """
        reservation = await self._acquire()
        try:
            yield reservation
        finally:
            reservation.release()

    async def _acquire(self) -> Reservation:
        while True:
            self.check_halted()
            reason = self._refusal()
            if reason is None:
                probe = self.remaining is None and self._reported is None
                if not (probe and self._probing):
                    self.reserved += self.unit
                    self._probing = self._probing or probe
                    return Reservation(self, self.unit, probe=probe)
            elif self.reserved == 0:
                # Nothing in flight could give credits back: this is final.
                raise CreditBudgetError(reason)
            changed = self._changed
            await changed.wait()

    def _refusal(self) -> str | None:
        cost = self.unit
        budget = self.policy.budget
        if budget is not None and self.consumed + self.reserved + cost > budget:
            return f"credit budget reached: {self.consumed} of {budget} credits consumed"
        if self.remaining is not None:
            after = self.remaining - self.reserved - cost
            if after < self.policy.reserve:
                return (
                    f"credit reserve reached: {self.remaining} credits left, "
                    f"{self.policy.reserve} kept in reserve"
                )
        return None

    def observe(self, remaining: int | None) -> None:
        """Take in a balance reported by a response that spent nothing (an error)."""
        self._update_remaining(remaining, spent=0, in_between=self.reserved)
        self._notify()

    def _settle(
        self,
        reservation: Reservation,
        *,
        consumed: int | None,
        remaining: int | None,
        success: bool,
    ) -> None:
        self.reserved -= reservation.amount
        if reservation.probe:
            self._probing = False
        # Charges the server may have made between this request's charge and the newest balance
        # already seen: those of requests that finished meanwhile, and of those still in flight.
        in_between = self.consumed - reservation.consumed_at_start + self.reserved
        spent = 0
        if success:
            spent = consumed if consumed is not None else reservation.amount
            self.consumed += spent
            if consumed is not None and consumed > self.unit:
                self.unit = consumed
            if self._reported is None:
                self._reported = remaining is not None
        self._update_remaining(remaining, spent=spent, in_between=in_between)
        self._notify()

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
        self._changed.set()
        self._changed = anyio.Event()


def _halted_error(cause: InsufficientCreditsError | PermissionDeniedError) -> ClientHaltedError:
    return ClientHaltedError(
        f"not sent: the client halted after an earlier response: {cause.message}", cause=cause
    )
