"""The credit ledger's rules one at a time, on the ledger itself (no client, no server).

tests/test_credits.py checks the outcomes through the client; here each rule of the ledger's
docstring is pinned at the step where a slip would change it: what an answer costs, what an
unanswered attempt holds back and until when, what is given back. Every wait is bounded, so a
ledger that never gives a reservation back fails here instead of hanging.
"""

from __future__ import annotations

import anyio
import pytest

from clipnormals import (
    ClientHaltedError,
    CreditBudgetError,
    CreditPolicy,
    InsufficientCreditsError,
    PermissionDeniedError,
)
from clipnormals._core.credits import CreditLedger

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def charged(consumed: int | None = 1, remaining: int | None = None) -> dict[str, str]:
    headers = {"content-type": "image/jpeg"}
    if consumed is not None:
        headers["x-credits-consumed"] = str(consumed)
    if remaining is not None:
        headers["x-remaining-credits"] = str(remaining)
    return headers


async def known(balance: int, policy: CreditPolicy | None = None) -> CreditLedger:
    """A ledger that has seen one charged answer reporting ``balance``."""
    ledger = CreditLedger(policy or CreditPolicy())
    with anyio.fail_after(1):
        async with ledger.reserve() as probe:
            probe.answered(200, charged(1, balance))
    return ledger


async def test_a_reservation_is_given_back_when_its_attempt_never_left() -> None:
    ledger = await known(10)

    async def attempt_that_fails_before_sending() -> None:
        async with ledger.reserve():
            assert ledger.reserved == 1
            raise RuntimeError("the request could not be built")

    with anyio.fail_after(1), pytest.raises(RuntimeError):
        await attempt_that_fails_before_sending()
    assert ledger.reserved == 0
    with anyio.fail_after(1):
        async with ledger.reserve() as reservation:
            reservation.release()
            assert ledger.reserved == 0
            reservation.release()  # idempotent
    assert ledger.reserved == 0
    assert ledger.consumed == 1


async def test_a_waiter_gets_the_credit_an_attempt_gives_back() -> None:
    # One credit left and one attempt in flight: a second attempt waits, and gets its turn when
    # the first gives its reservation back (a 400 costs nothing).
    ledger = await known(1)
    order: list[str] = []

    async def second() -> None:
        async with ledger.reserve() as reservation:
            order.append("second reserved")
            reservation.answered(200, charged(1, 0))

    with anyio.fail_after(10):
        async with ledger.reserve() as first, anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.sleep(1)
            assert order == []  # waiting, not refused: the first may still give back
            first.answered(400, {"content-type": "application/json"})
            order.append("first settled")
    assert order == ["first settled", "second reserved"]
    assert ledger.consumed == 1 + 1
    with pytest.raises(CreditBudgetError, match="reserve"):
        ledger.check()


async def test_an_answer_costs_what_it_says_or_one_call() -> None:
    ledger = await known(100)
    assert ledger.unit == 1
    async with ledger.reserve() as r:
        assert r.answered(200, charged(3, 96)) == 3  # a call that costs 3
    assert ledger.unit == 3  # learned: every later attempt reserves 3
    async with ledger.reserve() as r:
        assert ledger.reserved == 3
        # an API version that does not say the cost: one call, as learned
        assert r.answered(200, {"content-type": "image/jpeg"}) == 3
    async with ledger.reserve() as r:
        assert r.answered(500, {"content-type": "application/json"}) == 0  # errors are free
    async with ledger.reserve() as r:
        assert r.answered(200, {"content-type": "text/html"}) == 0  # a proxy's page
    assert ledger.consumed == 1 + 3 + 3
    assert ledger.remaining == 96 - 3  # lowered by the charge whose answer had no balance


async def test_an_unanswered_attempt_holds_back_a_credit_until_a_later_balance_covers_it() -> None:
    ledger = await known(2)
    async with ledger.reserve() as lost:
        lost.unanswered()  # it went out; it may have been charged
    assert ledger.uncertain == 1
    # Two credits reported, one possibly spent since: one more may go, not two.
    async with ledger.reserve() as r:
        r.answered(200, charged(1))  # charged; this answer does not report the balance
    assert ledger.remaining == 1
    with pytest.raises(CreditBudgetError, match="reserve"):
        ledger.check()  # 1 left, and the unanswered one may have taken it
    assert ledger.uncertain == 1


async def test_a_balance_sent_after_the_unanswered_attempt_clears_the_doubt() -> None:
    ledger = await known(3)
    async with ledger.reserve() as lost:
        lost.unanswered()
    async with ledger.reserve() as later:  # reserved after the unanswered attempt ended
        later.answered(200, charged(1, 1))
    # the server's balance (1) includes whatever the unanswered attempt cost: 1 may go
    ledger.check()
    async with ledger.reserve() as last:
        last.answered(200, charged(1, 0))
    assert ledger.uncertain == 1


async def test_a_balance_sent_before_the_unanswered_attempt_ended_does_not_clear_it() -> None:
    ledger = await known(3)
    async with ledger.reserve() as before, ledger.reserve() as lost:
        lost.unanswered()  # ends while `before` is still in flight
        before.answered(200, charged(1, 1))  # counted before the lost one reached the server?
    # 1 reported, and the unanswered attempt may have been charged after that report
    with pytest.raises(CreditBudgetError, match="reserve"):
        ledger.check()


async def test_the_budget_counts_consumed_uncertain_and_in_flight() -> None:
    ledger = CreditLedger(CreditPolicy(budget=3))
    async with ledger.reserve() as a:
        a.answered(200, charged(1))
    async with ledger.reserve() as b:
        b.unanswered()
    outcome: list[str] = []

    async def fourth() -> None:
        try:
            async with ledger.reserve():
                outcome.append("sent")
        except CreditBudgetError as exc:
            outcome.append(exc.message)

    with anyio.fail_after(10):
        async with ledger.reserve() as third, anyio.create_task_group() as tg:
            tg.start_soon(fourth)
            await anyio.sleep(1)
            assert outcome == []  # 1 consumed + 1 uncertain + 1 in flight: it must wait
            third.answered(200, charged(1))
    assert outcome == [
        "credit budget reached: 2 of 3 credits consumed, 1 more possibly "
        "charged (requests left unanswered)"
    ]


async def test_a_402_sets_the_known_balance_to_zero_and_halts() -> None:
    ledger = await known(5)
    ledger.halt(InsufficientCreditsError("402", status_code=402), remaining=0)
    assert ledger.remaining == 0
    assert ledger.halted
    with pytest.raises(ClientHaltedError):
        ledger.check()
    ledger = await known(5)
    ledger.halt(PermissionDeniedError("403", status_code=403))
    assert ledger.remaining == 5  # a revoked key says nothing of the balance


async def test_the_cost_of_a_call_is_learned_only_from_a_fall_of_the_balance() -> None:
    # An API version that reports the balance but not the cost: probes one at a time, and the
    # cost is the fall between two probes' balances. Two equal balances (a free call, a top-up
    # of exactly one call) say nothing: a call is never learned to cost nothing.
    ledger = CreditLedger(CreditPolicy(budget=20))
    for balance in (10, 10, 7):
        async with ledger.reserve() as r:
            assert r.probe  # the cost is not known yet
            r.answered(200, {"content-type": "image/jpeg", "x-remaining-credits": str(balance)})
        assert ledger.unit >= 1
    assert ledger.unit == 3
    async with ledger.reserve() as r:
        assert not r.probe
        assert r.amount == 3
