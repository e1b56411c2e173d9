"""A hot activity's budget split into buckets on different slots (cluster mode, `buckets = N`).

An order takes from its home bucket; when that one is short it reads every bucket and takes from
those with room, so the budget is never passed and a sale that exhausts it leaves less than one
order's worth unsold. Driven against a one-node Redis Cluster (which refuses any key that escaped
its slot) and a standalone Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cluster.config_store import ConfigStore
from cluster.connection import Redis, connect
from cluster.coordinator import ClusterCoordinator
from cluster.keys import activity_tag, slot_keys
from domain.clock import ManualClock
from domain.document import ConfigError, build_config
from domain.errors import Unavailable
from domain.types import Code, Decision, OrderState
from gateway.codec import digest
from tests.conftest import T0
from tests.test_cluster_coordinator import check

BUDGET = 1000


def doc(buckets: int = 4, budget: int = BUDGET) -> dict[str, Any]:
    return {
        "settings": {"hold_ttl": "15m", "locale": "en"},
        "skus": [{"sku_id": "S1", "spu_id": "P1", "cost_price": 100, "original_price": 1000}],
        "activities": [{"activity_id": "A1", "budget": budget, "buckets": buckets}],
    }


@pytest.fixture(params=["single", "cluster"])
async def coordinator(request: pytest.FixtureRequest) -> AsyncIterator[ClusterCoordinator]:
    url = request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_1_url")
    redis: Redis = await connect(url)
    store = ConfigStore(redis)
    await store.start(build_config(doc()), False)
    yield ClusterCoordinator(redis, store, ManualClock(T0), manual_clock=True)
    await redis.close()


async def budget(c: ClusterCoordinator) -> tuple[int, int]:
    activity = (await c.activity_ledger(["A1"])).activities["A1"]
    return activity.held, activity.spent


async def bucket_used(c: ClusterCoordinator) -> list[int]:
    """What each bucket's slot holds, read straight from Redis."""
    used = []
    for b in range(4):
        flat, _ = await c.redis.call("fg_read", slot_keys(activity_tag("A1", b)), (T0,))
        used.append(int(dict(zip(flat[::2], flat[1::2])).get(b"used", 0)))
    return used


async def checked(c: ClusterCoordinator, order_id: str, amount: int) -> Any:
    req = check(order_id, user=order_id, device=order_id, discount=amount)
    response, _ = await c.check(req, digest(req))
    return response


async def test_orders_spread_over_the_buckets_and_the_budget_is_never_passed(coordinator: ClusterCoordinator) -> None:
    answers = [await checked(coordinator, f"o{i}", 100) for i in range(12)]
    assert [a.decision for a in answers] == [Decision.ALLOW] * 10 + [Decision.DENY] * 2
    refused = answers[-1]
    assert [(r.code, r.limit, r.used, r.requested) for r in refused.reasons] == [(Code.ACTIVITY_BUDGET_EXHAUSTED, BUDGET, BUDGET, 100)]
    assert await budget(coordinator) == (BUDGET, 0)
    used = await bucket_used(coordinator)
    assert sum(used) == BUDGET and all(u <= 250 for u in used) and len([u for u in used if u]) > 1


async def test_an_order_larger_than_any_bucket_takes_from_several(coordinator: ClusterCoordinator) -> None:
    # Shares of 250: no bucket alone holds 300, together they hold 1000.
    answers = [await checked(coordinator, f"big{i}", 300) for i in range(4)]
    assert [a.decision for a in answers] == [Decision.ALLOW] * 3 + [Decision.DENY]
    assert await budget(coordinator) == (900, 0)
    assert sum(await bucket_used(coordinator)) == 900
    # The last 100 are not left unsold: an order that fits takes them, wherever they sit.
    assert (await checked(coordinator, "last", 100)).decision is Decision.ALLOW
    assert (await checked(coordinator, "none-left", 1)).decision is Decision.DENY
    assert await budget(coordinator) == (BUDGET, 0)


async def test_confirm_and_cancel_move_every_part_of_a_split_order(coordinator: ClusterCoordinator) -> None:
    for i in range(3):
        await checked(coordinator, f"big{i}", 300)
    assert (await coordinator.confirm("big0")).state is OrderState.CONFIRMED
    assert (await coordinator.cancel("big1")).state is OrderState.CANCELLED
    assert await budget(coordinator) == (300, 300)
    assert sum(await bucket_used(coordinator)) == 600
    await coordinator.move_clock(900, None)  # big2's hold ends
    assert await budget(coordinator) == (0, 300)


async def test_concurrent_checks_exhaust_the_budget_and_leave_less_than_one_order_unsold(coordinator: ClusterCoordinator) -> None:
    amounts = [70 + i % 3 * 40 for i in range(60)]  # 70, 110 or 150

    async def attempt(i: int) -> bool:
        try:
            return (await checked(coordinator, f"c{i}", amounts[i])).decision is Decision.ALLOW
        except Unavailable:
            return False  # 503 contention: a brief false refusal, the client would retry

    allowed = await asyncio.gather(*(attempt(i) for i in range(60)))
    held, spent = await budget(coordinator)
    assert held == sum(a for a, ok in zip(amounts, allowed) if ok) and spent == 0
    assert held <= BUDGET
    for i in range(20):  # sell what is left, one unit at a time of the smallest order
        if (await checked(coordinator, f"tail{i}", 70)).decision is not Decision.ALLOW:
            break
    held, _ = await budget(coordinator)
    assert BUDGET - 70 < held <= BUDGET  # less than one order's worth unsold


async def test_the_split_of_a_live_activity_cannot_change_nor_its_budget_shrink(coordinator: ClusterCoordinator) -> None:
    def put(aid: str, **entry: Any) -> Any:
        return coordinator.change(("put", "activities", aid, {"activity_id": aid, **entry}))

    with pytest.raises(ConfigError, match="buckets: cannot go from 4 to 8"):
        await put("A1", budget=BUDGET, buckets=8)
    with pytest.raises(ConfigError, match="buckets: cannot go from 4 to 1"):
        await put("A1", buckets=4)  # no budget: nothing to split, so one slot
    with pytest.raises(ConfigError, match="cannot be lowered"):
        await put("A1", budget=BUDGET - 1, buckets=4)
    await put("A2", buckets=8)  # no budget yet: one slot, whatever it says
    with pytest.raises(ConfigError, match="buckets: cannot go from 1 to 8"):
        await put("A2", budget=BUDGET, buckets=8)  # a budget now would split what bucket 0 holds
    await put("A1", budget=2 * BUDGET, buckets=4)  # a higher budget shrinks no part
    assert coordinator.config.activities["A1"].budget == 2 * BUDGET
    assert (await checked(coordinator, "after", 100)).decision is Decision.ALLOW
