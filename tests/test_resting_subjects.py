"""Subjects at rest (actors/ledger.py): a subject untouched for a period goes idle, one untouched
for the next period goes cold (encoded), and a subject at rest counts, refuses, expires and
snapshots exactly as one in use. A sale's buyers mostly order once; their five subjects each keep
lifetime counters for the whole sale, and at rest they take a fifth of the memory."""

from __future__ import annotations

import msgspec

from actors.ledger import REST_AFTER
from domain.clock import ManualClock
from domain.types import Code, Decision, key
from gateway.keys import SERVICE
from gateway.service import NodeService
from node.coordinator import Coordinator
from snapshots import state as state_codec
from tests.conftest import MakeGateway, base_config, item, order
from tests.test_snapshot_restore import T0, canonical, check, first_half, new_coordinator, order_body, second_half

USER, DEVICE = key("user", "u1"), key("device", "d1")


def rest(coordinator: Coordinator) -> int:
    """What the sweeper does at a round: every step of resting that is due now."""
    rested, more = 0, True
    while more:
        _, done, more = coordinator.rest_step(1_000)
        rested += done
    return rested


def tier(coordinator: Coordinator, subject: str) -> str:
    ledger = coordinator.ledger
    return next(name for name in ("subjects", "idle", "cold") if subject in getattr(ledger, name))


class Twins:
    """Two coordinators fed the same traffic, each on a clock of its own moved together: the first
    puts its subjects to rest, the second never does."""

    def __init__(self) -> None:
        self.resting, self.awake = new_coordinator(ManualClock(T0)), new_coordinator(ManualClock(T0))
        self.both = (self.resting, self.awake)

    def advance(self, seconds: int) -> None:
        for c in self.both:
            clock = c.clock
            assert isinstance(clock, ManualClock)
            clock.advance(seconds)

    def rest_periods(self, periods: int) -> None:
        for _ in range(periods):
            self.advance(REST_AFTER)
            rest(self.resting)


async def test_a_subject_rests_after_one_period_untouched_and_goes_cold_after_the_next() -> None:
    coordinator = new_coordinator()
    clock = coordinator.clock
    assert isinstance(clock, ManualClock)
    check(coordinator, order_body("o1"))
    assert tier(coordinator, USER) == "subjects"
    rest(coordinator)  # the first round begins a period: what is in use becomes idle
    assert tier(coordinator, USER) == "idle"
    clock.advance(REST_AFTER - 1)
    assert rest(coordinator) == 0 and tier(coordinator, USER) == "idle"  # the period is not over
    check(coordinator, order_body("o2", user="u2", device="d2"))  # u2 and d2 in use; u1 and d1 untouched
    clock.advance(1)
    assert rest(coordinator) >= 2  # u1 and d1 (and the receiver's subjects) go cold
    assert (tier(coordinator, USER), tier(coordinator, DEVICE)) == ("cold", "cold")
    assert tier(coordinator, key("user", "u2")) == "idle"  # used in the period that ended: idle now
    check(coordinator, order_body("o3"))  # u1's next order brings its subjects back
    assert (tier(coordinator, USER), tier(coordinator, DEVICE)) == ("subjects", "subjects")


async def test_subjects_at_rest_count_refuse_and_expire_as_those_in_use() -> None:
    twins = Twins()
    resting, awake = twins.both
    for c in twins.both:
        check(c, order_body("o1", quantity=2))  # u1 bought 2 of S1 (3 per user) on d1 (4 per device)
        c.confirm("o1")
        check(c, order_body("o2", user="u2", device="d2"))  # a hold that will expire while at rest
    twins.rest_periods(2)
    assert (tier(resting, USER), tier(resting, DEVICE)) == ("cold", "cold")
    assert canonical(resting) == canonical(awake)
    for c in twins.both:
        refused = check(c, order_body("o3", quantity=2))
        assert [(r.code, r.subject, r.limit, r.used) for r in refused.reasons] == [(Code.SKU_LIMIT, "user", 3, 2)]
        refused = check(c, order_body("o4", user="u9", quantity=3))
        assert [(r.code, r.subject, r.limit, r.used) for r in refused.reasons] == [(Code.SKU_LIMIT, "device", 4, 2)]
        assert c.orders["o2"].state.value == "expired"  # expired by the check: u2's subjects left with nothing
    assert resting.ledger.find(key("user", "u2")) is None and awake.ledger.find(key("user", "u2")) is None
    assert canonical(resting) == canonical(awake)
    # d1's window (R1, 1 h) leaves while it is at rest again
    twins.rest_periods(2)
    assert tier(resting, DEVICE) == "cold"
    twins.advance(3600)
    for c in twins.both:
        c.expire_due(c.clock.now())
    assert canonical(resting) == canonical(awake)
    device = resting.ledger.find(DEVICE)
    assert device is not None and device.windows == {} and device.counts  # lifetime counters kept


async def test_each_step_encodes_at_most_its_chunk() -> None:
    coordinator = new_coordinator()
    for n in range(20):
        check(coordinator, order_body(f"o{n}", user=f"u{n}", device=f"d{n}"))
    coordinator.rest_step(1_000)  # the period begins
    assert coordinator.clock.now() == T0
    clock = coordinator.clock
    assert isinstance(clock, ManualClock)
    clock.advance(REST_AFTER)
    idle = len(coordinator.ledger.idle)
    assert idle >= 40
    assert coordinator.rest_step(7) == (7, 7, True)
    assert len(coordinator.ledger.idle) == idle - 7 and len(coordinator.ledger.cold) == 7


async def test_a_snapshot_holds_subjects_in_use_idle_and_cold() -> None:
    twins = Twins()
    resting, awake = twins.both
    for c in twins.both:
        await first_half(c)
    rest(resting)
    twins.rest_periods(1)  # first_half's subjects cold
    for c in twins.both:
        await second_half(c)
    twins.rest_periods(1)  # those second_half used idle
    for c in twins.both:
        check(c, order_body("o-new", user="u-new", device="d-new"))  # and some in use
    ledger = resting.ledger
    assert ledger.subjects and ledger.idle and ledger.cold
    now = resting.clock.now()
    restored = new_coordinator(ManualClock(now))
    restored.adopt(*state_codec.decode(b"".join(state_codec.encode(resting.config, ledger, resting.orders, now, 1)))[:3])
    assert canonical(restored) == canonical(awake)


async def test_the_sweeper_puts_subjects_to_rest_and_the_admin_api_still_reads_them(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(base_config(skus=[{"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "limits": {"user": 1}}]))
    body = order(item("S1", 1), user="u1")
    assert (await gw.check(body))["decision"] == "allow"
    await gw.confirm(body["order_id"])
    service = gw.client.app[SERVICE]
    assert isinstance(service, NodeService)
    for _ in range(3):
        await gw.advance(REST_AFTER)
        await service._tidy()
    assert key("user", "u1") in gw.coordinator.ledger.cold
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 1}
    refused = await gw.check(order(item("S1", 1), user="u1"))
    assert refused["decision"] == "deny" and refused["reasons"][0]["used"] == 1


async def test_journal_replay_meets_subjects_at_rest() -> None:
    """Replay drives `hold` and `release` straight from the records, with no check before them to
    bring their subjects back in use: they find them at rest all the same."""
    twins = Twins()
    resting, awake = twins.both
    for c in twins.both:
        check(c, order_body("o1"))
    record = msgspec.to_builtins(awake.orders["o1"], builtin_types=(bytes,))
    record[0] = "o9"  # another hold with o1's footprint, as a journal record holds it
    for c in twins.both:
        c.confirm("o1")
    twins.rest_periods(2)
    assert tier(resting, USER) == "cold"
    for c in twins.both:
        c.replay(["check", record])
        assert c.orders["o9"].state.value == "held"
    twins.rest_periods(2)
    assert tier(resting, USER) == "cold"
    for c in twins.both:
        c.replay(["cancel", "o1", c.clock.now()])
    assert canonical(resting) == canonical(awake)
