"""The in-flight body budget (``gigastt/server/budget.py``) and its default rule in config.py.
"""

from __future__ import annotations

import random

import pytest

from gigastt.config import INFLIGHT_BODY_CAP_BYTES, Limits, inflight_body_budget
from gigastt.server.budget import BodyBudget, Reservation

MIB = 1 << 20


def test_reservations_fit_until_the_budget_is_full() -> None:
    budget = BodyBudget(lambda: 100)
    first = budget.reserve(60)
    assert first is not None and budget.used == 60
    assert budget.reserve(41) is None  # refused whole: nothing is held for it
    assert budget.used == 60
    second = budget.reserve(40)
    assert second is not None and budget.used == 100
    assert budget.reserve(1) is None
    first.release()
    assert budget.used == 40
    assert budget.reserve(60) is not None


def test_grow_and_release() -> None:
    budget = BodyBudget(lambda: 100)
    reservation = budget.reserve(10)
    assert reservation is not None
    assert reservation.grow(50) and reservation.size == 60 and budget.used == 60
    assert not reservation.grow(41)
    assert reservation.size == 60 and budget.used == 60  # a refused growth holds nothing more
    assert reservation.grow(0) and reservation.grow(-5) and reservation.size == 60
    reservation.release()
    assert budget.used == 0 and reservation.size == 0
    reservation.release()  # again: a no-op, every exit path may call it
    assert budget.used == 0


def test_an_empty_reservation_always_fits() -> None:
    budget = BodyBudget(lambda: 10)
    full = budget.reserve(10)
    assert full is not None
    empty = budget.reserve(0)
    assert empty is not None and budget.used == 10


def test_the_limit_is_read_at_each_reservation() -> None:
    """A SIGHUP that lowers the budget applies to the next reservation; held bytes stay held."""
    limit = [100]
    budget = BodyBudget(lambda: limit[0])
    held = budget.reserve(80)
    assert held is not None
    limit[0] = 50
    assert budget.limit == 50
    assert budget.reserve(1) is None
    held.release()
    assert budget.reserve(50) is not None
    limit[0] = 1000
    assert budget.reserve(900) is not None


@pytest.mark.parametrize("seed", range(5))
def test_used_is_the_sum_of_live_reservations(seed: int) -> None:
    rng = random.Random(seed)
    budget = BodyBudget(lambda: 1000)
    live: list[Reservation] = []
    for _ in range(2000):
        action = rng.random()
        if action < 0.4:
            reservation = budget.reserve(rng.randrange(0, 400))
            if reservation is not None:
                live.append(reservation)
        elif action < 0.7 and live:
            rng.choice(live).grow(rng.randrange(-10, 300))
        elif live:
            live.pop(rng.randrange(len(live))).release()
        assert budget.used == sum(r.size for r in live)
        assert 0 <= budget.used <= 1000
    for reservation in live:
        reservation.release()
    assert budget.used == 0


def test_default_budget_rule() -> None:
    # Unset: a full-size body for every slot and one queued behind each.
    assert inflight_body_budget(Limits(), pool_size=4) == 8 * Limits().body_limit_bytes
    assert inflight_body_budget(Limits(body_limit_bytes=MIB), pool_size=3) == 6 * MIB
    # ... at most 1 GiB,
    assert inflight_body_budget(Limits(), pool_size=64) == INFLIGHT_BODY_CAP_BYTES
    # ... but never below one full-size body.
    huge = Limits(body_limit_bytes=INFLIGHT_BODY_CAP_BYTES)
    assert inflight_body_budget(huge, pool_size=4) == INFLIGHT_BODY_CAP_BYTES


def test_explicit_budget() -> None:
    assert inflight_body_budget(Limits(max_inflight_body_mb=64), pool_size=4) == 64 * MIB
    assert inflight_body_budget(Limits(max_inflight_body_mb=4096), pool_size=1) == 4096 * MIB
    # Below one full-size body it is raised to one: a smaller budget would refuse such a body
    # for ever.
    small = Limits(max_inflight_body_mb=1, body_limit_bytes=5 * MIB)
    assert inflight_body_budget(small, pool_size=4) == 5 * MIB
