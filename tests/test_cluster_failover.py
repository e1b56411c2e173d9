"""A Redis primary killed (`kill -9`) under load, on a 3+3 Redis Cluster (slow: marked cluster6).

The gateway answers 503 while the slots of the dead primary have no node, and checks resume by
themselves once its replica is promoted. With `--redis-wait-replicas 1` an acknowledged decision
has reached the replica before its answer left, so none is lost by the failover. Without it,
Redis replicates after answering: what the primary acknowledged in its last moments can be lost,
and the test reports how much (README, "Durability in cluster mode").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.crc import key_slot

from cluster.keys import activity_tag, slot_keys

from tests.redis_servers import Cluster, NotReady, poll
from tests.test_cluster_gateways import LEASE, Gateway, body, reservations_leased, start

pytestmark = pytest.mark.cluster6

WORKERS = 16


@dataclass
class Load:
    """Checks sent by WORKERS loops until stopped; what was acknowledged, and the 503s."""

    gateway: Gateway
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    unavailable: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    async def worker(self) -> None:
        while not self.stop.is_set():
            i = next(self.ids)
            order = body(f"f-{i}", f"u{i}", f"d{i}")
            try:
                status, answer = await self.gateway.call("POST", "/v1/orders/check", order)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
            if status == 200:
                self.acknowledged[order["order_id"]] = answer
            else:
                assert status == 503, (status, answer)
                self.unavailable += 1
                await asyncio.sleep(0.05)

    async def until(self, acknowledged: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < acknowledged:
            assert time.monotonic() < deadline, f"{len(self.acknowledged)} acknowledged, {self.unavailable} answered 503"
            await asyncio.sleep(0.01)


@pytest.fixture
async def gateways(redis_cluster_6: Cluster) -> AsyncIterator[list[Gateway]]:
    redis_cluster_6.flush()
    started: list[Gateway] = []
    yield started
    for gw in started:
        await gw.close()
    for node in redis_cluster_6.nodes:  # the killed primary comes back as a replica
        if not node.alive:
            node.start()
    redis_cluster_6.wait_ok()


async def fail_over_under_load(
    cluster: Cluster, directory: Path, gateways: list[Gateway], *flags: str, rejoin: bool = False
) -> tuple[Load, list[str], float]:
    """Kill the primary that holds the activity's counters mid-load, and with `rejoin` start it
    again once its replica took over (it comes back as that one's replica). Returns the load, the
    acknowledged order ids Redis no longer has, and the seconds from the kill until checks resumed."""
    (gw,) = start(gateways, cluster.url, directory, 1, "--manual-clock", *flags)
    load = Load(gw)
    workers = [asyncio.create_task(load.worker()) for _ in range(WORKERS)]
    try:
        await load.until(100, 30)
        victim = cluster.primary_for_slot(key_slot(slot_keys(activity_tag("A1"))[0].encode()))
        killed = time.monotonic()
        cluster.kill_primary(victim)
        before = len(load.acknowledged)
        await asyncio.to_thread(cluster.wait_failover)
        if rejoin:  # on this thread: a server's parent-death signal follows the thread that started it
            victim.start()
        await load.until(before + 100, 60)  # checks resumed by themselves
        resumed = time.monotonic() - killed
    finally:
        load.stop.set()
        await asyncio.gather(*workers)
    lost = []
    for order_id, answer in load.acknowledged.items():
        status, view = await gw.call("GET", f"/v1/orders/{order_id}")
        if status != 200 or view["decision"] != answer["decision"]:
            lost.append(order_id)
    return load, lost, resumed


async def test_with_wait_replicas_no_acknowledged_decision_is_lost_in_a_failover(
    redis_cluster_6: Cluster, tmp_path: Path, gateways: list[Gateway]
) -> None:
    # The promoted replica has no replica of its own: its shard refuses writes (503) until the
    # old primary is back as its replica. That is the price of WAIT: fail closed, never lose.
    load, lost, resumed = await fail_over_under_load(redis_cluster_6, tmp_path, gateways, "--redis-wait-replicas", "1", rejoin=True)
    report("with --redis-wait-replicas 1", load, lost, resumed)
    assert lost == [], f"{len(lost)} of {len(load.acknowledged)} acknowledged decisions lost"
    assert load.unavailable > 0  # the dead primary's slots answered 503 until the failover
    # What the checks in flight at the kill reserved is given back once their lease ends.
    (gw,) = gateways
    await gw.ok("POST", "/v1/admin/clock", {"advance": LEASE + 1})

    def swept() -> None:
        if reservations_leased(*(node.url for node in redis_cluster_6.primaries())):
            raise NotReady("reservations still leased")

    await asyncio.to_thread(poll, "leases given back", swept, 30)
    held = sum(1 for a in load.acknowledged.values() if a["decision"] == "allow")
    activity = await gw.ok("GET", "/v1/admin/activities/A1")
    assert activity["held"] >= 100 * held  # every acknowledged hold is counted (a 503'd check may hold too)
    assert activity["held"] + activity["spent"] <= 7000


async def test_without_wait_replicas_checks_resume_and_the_loss_is_reported(
    redis_cluster_6: Cluster, tmp_path: Path, gateways: list[Gateway]
) -> None:
    load, lost, resumed = await fail_over_under_load(redis_cluster_6, tmp_path, gateways)
    report("without WAIT", load, lost, resumed)
    assert len(load.acknowledged) >= 200


def report(setting: str, load: Load, lost: list[str], resumed: float) -> None:
    """What the failover cost, in the test log (`-rA` or `-s` shows it)."""
    print(f"failover {setting}: {len(lost)} of {len(load.acknowledged)} acknowledged decisions lost, "
          f"{load.unavailable} checks answered 503, checks resumed {resumed:.1f} s after the kill")  # fmt: skip
