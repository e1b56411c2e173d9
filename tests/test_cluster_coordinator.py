"""The cluster coordinator over a real Redis: a standalone server and a one-node Redis Cluster
(which refuses any call whose keys escaped their hash tag). The same decisions as the single node
for budget, SKU limits and repeats; confirm, cancel and hold expiry through the Functions library.
These drive the coordinator directly; over HTTP, the decision suites run against both modes
(`both_modes`), and `test_cluster_gateways` runs real gateway processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from cluster.config_store import ConfigStore
from cluster.connection import Redis, connect
from cluster.coordinator import ClusterCoordinator
from domain.clock import ManualClock
from gateway.codec import digest
from domain.document import build_config
from domain.errors import Conflict, Gone
from domain.schema import CheckRequest
from domain.types import Code, Decision, OrderState
from tests.conftest import T0

DOC: dict[str, Any] = {
    "settings": {"hold_ttl": "15m", "locale": "en"},
    "skus": [{"sku_id": "S1", "spu_id": "P1", "category": "phone", "cost_price": 800, "original_price": 1000, "limits": {"user": 2}}],
    "activities": [{"activity_id": "A1", "budget": 250, "user_limit": 5}],
    "rules": [{"rule_id": "R1", "subject": "device", "window": "1h", "max_quantity": 3}],
}


def check(order_id: str, user: str = "u1", device: str = "d1", discount: int = 100) -> CheckRequest:
    body = {
        "order_id": order_id,
        "user_id": user,
        "device_id": device,
        "items": [{"sku_id": "S1", "quantity": 1, "unit_price": 1000, "discounts": [{"id": "A1", "activity_id": "A1", "amount": discount}]}],
    }
    return msgspec.convert(body, CheckRequest)


@pytest.fixture(params=["single", "cluster"])
async def coordinator(request: pytest.FixtureRequest) -> AsyncIterator[ClusterCoordinator]:
    url = request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_1_url")
    redis: Redis = await connect(url)
    store = ConfigStore(redis)
    assert await store.start(build_config(DOC), False) == "configuration store seeded with the start-up configuration"
    yield ClusterCoordinator(redis, store, ManualClock(T0), manual_clock=True)
    await redis.close()


async def decide(c: ClusterCoordinator, req: CheckRequest) -> Any:
    response, repeated = await c.check(req, digest(req))
    assert not repeated
    return response


async def test_budget_and_sku_limit_hold_as_on_the_single_node(coordinator: ClusterCoordinator) -> None:
    first = await decide(coordinator, check("o1", device="d1"))
    second = await decide(coordinator, check("o2", device="d2"))
    assert (first.decision, second.decision) == (Decision.ALLOW, Decision.ALLOW)
    assert first.hold is not None and first.hold.expires_at == T0 + 900
    third = await decide(coordinator, check("o3", device="d3"))
    assert third.decision is Decision.DENY
    assert [(r.code, r.limit, r.used) for r in third.reasons] == [
        (Code.ACTIVITY_BUDGET_EXHAUSTED, 250, 200),
        (Code.SKU_LIMIT, 2, 2),
    ]
    ledger = await coordinator.activity_ledger(["A1"])
    assert (ledger.activities["A1"].held, ledger.activities["A1"].spent) == (200, 0)


async def test_a_repeat_answers_the_first_answer_and_another_body_is_a_conflict(coordinator: ClusterCoordinator) -> None:
    req = check("o1")
    await decide(coordinator, req)
    again, repeated = await coordinator.check(req, digest(req))
    assert repeated and again.decision is Decision.ALLOW
    other = check("o1", discount=50)
    with pytest.raises(Conflict):
        await coordinator.check(other, digest(other))
    user = (await coordinator.user_ledger("u1")).subjects["user\x1fu1"]
    assert user.counts["sku\x1fS1"] == 1


async def test_confirm_cancel_and_expiry(coordinator: ClusterCoordinator) -> None:
    for oid, device in (("o1", "d1"), ("o2", "d2")):
        await decide(coordinator, check(oid, device=device))
    confirmed = await coordinator.confirm("o1")
    assert confirmed.state is OrderState.CONFIRMED
    assert (await coordinator.cancel("o2")).state is OrderState.CANCELLED
    ledger = await coordinator.activity_ledger(["A1"])
    assert (ledger.activities["A1"].held, ledger.activities["A1"].spent) == (0, 100)
    user = (await coordinator.user_ledger("u1")).subjects["user\x1fu1"]
    assert (user.counts["sku\x1fS1"], user.discount_total, user.margin_total) == (1, 100, 100)
    await decide(coordinator, check("o3", device="d3"))
    await coordinator.move_clock(900, None)  # o3's hold ends at now >= expires_at
    with pytest.raises(Gone):
        await coordinator.confirm("o3")
    assert (await coordinator.view("o3")).state is OrderState.EXPIRED
    ledger = await coordinator.activity_ledger(["A1"])
    assert (ledger.activities["A1"].held, ledger.activities["A1"].spent) == (0, 100)


async def test_a_risk_window_counts_across_users_and_refuses_past_its_limit(coordinator: ClusterCoordinator) -> None:
    decisions = [(await decide(coordinator, check(f"o{i}", user=f"u{i}", discount=0))).decision for i in range(4)]
    assert decisions == [Decision.ALLOW] * 3 + [Decision.DENY]
    refused = await decide(coordinator, check("o9", user="u9", discount=0))
    assert [(r.code, r.rule_id, r.limit, r.used) for r in refused.reasons] == [(Code.RISK_RULE, "R1", 3, 3)]


async def test_an_allowed_check_costs_four_round_trips(coordinator: ClusterCoordinator) -> None:
    # o1 is read, reserved and held in the three slots the rules look at (user u1, device d1,
    # activity A1), beside the order's claim, attempt and commit: 3 x 3 + 3 calls in 4 round
    # trips. A denial stops after the read and its commit. The manual clock adds a read of it.
    before = coordinator.stats.round_trips, coordinator.stats.calls
    await decide(coordinator, check("o1"))
    assert (coordinator.stats.round_trips - before[0], coordinator.stats.calls - before[1]) == (4 + 1, 3 * 3 + 3 + 1)
    before = coordinator.stats.round_trips, coordinator.stats.calls
    denied = await decide(coordinator, check("o2", discount=1000))  # past the budget
    assert denied.decision is Decision.DENY
    assert (coordinator.stats.round_trips - before[0], coordinator.stats.calls - before[1]) == (2 + 1, 3 + 2 + 1)
