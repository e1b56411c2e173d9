"""Cluster mode served: real `flashguard serve --redis` processes over real Redis (SPEC section 8).

Several gateways share one state: their checks together never pass a limit or a budget, an order
checked on one is confirmed on another, and an order id sent to two at once counts once. A
gateway killed with `kill -9` mid-load loses nothing it acknowledged and leaves no reservation
past its lease; Redis going away is a 503 until it is back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import redis

from cluster.connection import connect
from tests.conftest import TOKEN
from tests.redis_servers import NotReady, free_port, poll, start_server

_SCRIPT = Path(sys.executable).parent / "flashguard"
FLASHGUARD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]
LEASE = 10  # cluster.coordinator.LEASE: how long a dead gateway's reservations can outlive it

CONFIG = """
[settings]
hold_ttl = "15m"
locale = "en"

[[skus]]
sku_id = "S1"
spu_id = "P1"
category = "phone"
cost_price = 800
original_price = 1000

[[activities]]
activity_id = "A1"
budget = 7000
user_limit = 3

[[rules]]
rule_id = "R-ring"
subject = "device"
window = "1h"
max_quantity = 20
"""


class Gateway:
    """One `flashguard serve --redis` process and an HTTP session to it."""

    def __init__(self, url: str, directory: Path, *flags: str, token: str | None = TOKEN) -> None:
        self.port = free_port()
        self.log = directory / f"gateway-{self.port}.log"
        config = directory / "config.toml"
        config.write_text(CONFIG)
        env = {k: v for k, v in os.environ.items() if k != "FLASHGUARD_ADMIN_TOKEN"} | ({"FLASHGUARD_ADMIN_TOKEN": token} if token else {})
        command = [*FLASHGUARD, "serve", "--redis", url, "--port", str(self.port), "--data", str(directory / f"data-{self.port}"),
                   "--config", str(config), *flags]  # fmt: skip
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    def wait_listening(self) -> None:
        def listening() -> None:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}:\n{self.log.read_text()}")
            if "listening on" not in self.log.read_text():
                raise NotReady("not yet")

        poll("gateway listening", listening, 30)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/v1/admin/") else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status == 200, (status, data)
        return data

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    async def close(self) -> None:
        await self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[list[Gateway]]:
    """Gateways started by the test; all stopped after it."""
    started: list[Gateway] = []
    yield started
    for gw in started:
        await gw.close()


def start(started: list[Gateway], url: str, directory: Path, n: int, *flags: str) -> list[Gateway]:
    """`n` gateways; the first seeds the configuration store, the others find it seeded."""
    new = [Gateway(url, directory, *flags) for _ in range(n)]
    started.extend(new)
    for gw in new:
        gw.wait_listening()
    return new


def body(order_id: str, user: str, device: str, discount: int = 100) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "user_id": user,
        "device_id": device,
        "items": [{"sku_id": "S1", "quantity": 1, "unit_price": 1000,
                   "discounts": [{"id": "A1", "activity_id": "A1", "amount": discount}] if discount else []}],  # fmt: skip
    }


def reservations_leased(*primaries: str) -> list[str]:
    """Reservation ids still leased (a check's reservation not yet held) on these Redis nodes
    (every primary of a cluster)."""
    leased: list[str] = []
    for url in primaries:
        with redis.Redis.from_url(url) as client:
            for name in client.scan_iter(match="fg:*:r", count=1000):
                for rid, raw in client.hgetall(name).items():
                    assert isinstance(rid, bytes) and isinstance(raw, bytes)
                    if msgpack.unpackb(raw)[0] == "L":
                        leased.append(rid.decode())
    return leased


def orders_in_flight(*primaries: str) -> int:
    """Orders a gateway began and did not finish (each order bucket's set of orders in flight), on
    these Redis nodes: a dead gateway's stay until a sweeper gives back what they held."""
    total = 0
    for url in primaries:
        with redis.Redis.from_url(url) as client:
            total += sum(int(client.zcard(name)) for name in client.scan_iter(match="fg:{o:*}:inflight", count=1000))
    return total


async def test_three_gateways_under_concurrent_checks_never_pass_a_limit(
    redis_cluster_1_url: str, tmp_path: Path, gateways: list[Gateway]
) -> None:
    gws = start(gateways, redis_cluster_1_url, tmp_path, 3)
    # 300 concurrent checks of 30 users, 10 each, 100 off the budget each. The even users' orders
    # are all on one ring device: its rule allows 20 of them; the odd users' limit allows 3 each.
    # That is 65 at most, under the budget's 70, so a second burst of 60 new buyers spends it.
    orders = [body(f"o-{i}", f"u{i % 30}", "ring" if i % 2 == 0 else f"d{i}") for i in range(300)]
    answers = await asyncio.gather(*(gws[i % 3].call("POST", "/v1/orders/check", b) for i, b in enumerate(orders)))
    spenders = [body(f"b-{i}", f"buyer{i}", f"bd{i}") for i in range(60)]
    orders += spenders
    answers += await asyncio.gather(*(gws[i % 3].call("POST", "/v1/orders/check", b) for i, b in enumerate(spenders)))
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {200, 503}, statuses  # 503: contention, a brief false refusal
    allowed = [b for b, (status, a) in zip(orders, answers) if status == 200 and a["decision"] == "allow"]
    codes = Counter(r["code"] for status, a in answers if status == 200 for r in a["reasons"])
    assert {"ACTIVITY_BUDGET_EXHAUSTED", "ACTIVITY_USER_LIMIT", "RISK_RULE"} <= set(codes), codes  # every limit was reached
    assert len(allowed) <= 70
    assert max(Counter(b["user_id"] for b in allowed).values()) <= 3
    assert sum(b["device_id"] == "ring" for b in allowed) <= 20

    # Confirm a third of them and cancel a third, each through another gateway than its check's.
    confirmed, cancelled = allowed[0::3], allowed[1::3]
    for i, b in enumerate(confirmed):
        assert (await gws[(i + 1) % 3].ok("POST", f"/v1/orders/{b['order_id']}/confirm"))["state"] == "confirmed"
    for i, b in enumerate(cancelled):
        assert (await gws[(i + 2) % 3].ok("POST", f"/v1/orders/{b['order_id']}/cancel"))["state"] == "cancelled"
    held = len(allowed) - len(confirmed) - len(cancelled)
    for gw in gws:
        activity = await gw.ok("GET", "/v1/admin/activities/A1")
        assert (activity["spent"], activity["held"]) == (100 * len(confirmed), 100 * held)
    users = Counter(b["user_id"] for b in allowed if b not in cancelled)
    for user, n in users.items():
        assert (await gws[0].ok("GET", f"/v1/admin/users/{user}"))["counters"]["activity"] == {"A1": n}
    assert reservations_leased(redis_cluster_1_url) == []


async def test_an_order_id_sent_to_two_gateways_at_once_counts_once(
    redis_cluster_1_url: str, tmp_path: Path, gateways: list[Gateway]
) -> None:
    a, b = start(gateways, redis_cluster_1_url, tmp_path, 2)
    orders = [body(f"twice-{i}", f"u{i}", f"d{i}") for i in range(20)]
    pairs = await asyncio.gather(*(asyncio.gather(a.call("POST", "/v1/orders/check", o), b.call("POST", "/v1/orders/check", o)) for o in orders))
    for (status_a, first), (status_b, second) in pairs:
        assert status_a == status_b == 200
        assert first == second and first["decision"] == "allow"
    assert (await a.ok("GET", "/v1/admin/activities/A1"))["held"] == 100 * len(orders)
    status, error = await b.call("POST", "/v1/orders/check", {**orders[0], "user_id": "someone-else"})
    assert status == 409 and error["error"]["code"] == "order_id_reused"
    assert (await b.ok("GET", "/v1/orders/twice-0"))["state"] == "held"


async def test_an_admin_change_through_one_gateway_holds_on_the_others_within_a_second(
    redis_cluster_1_url: str, tmp_path: Path, gateways: list[Gateway]
) -> None:
    a, b = start(gateways, redis_cluster_1_url, tmp_path, 2)
    await a.ok("PUT", "/v1/admin/lists/blacklist/user/u-bad")
    changed = time.monotonic()
    while (await b.ok("POST", "/v1/orders/check", body(f"bl-{time.monotonic_ns()}", "u-bad", f"d-{time.monotonic_ns()}", 0)))["decision"] == "allow":
        assert time.monotonic() - changed < 1.0, "the change did not reach the other gateway within a second"
        await asyncio.sleep(0.02)
    refused = await b.ok("POST", "/v1/orders/check", body("bl-last", "u-bad", "d-last", 0))
    assert [r["code"] for r in refused["reasons"]] == ["BLACKLISTED"]
    assert (await b.ok("GET", "/v1/admin/lists"))["blacklist"]["user"] == ["u-bad"]


async def test_a_gateway_killed_mid_load_loses_nothing_it_acknowledged_and_leaks_no_quota(
    redis_cluster_1_url: str, tmp_path: Path, gateways: list[Gateway]
) -> None:
    victim, survivor = start(gateways, redis_cluster_1_url, tmp_path, 2, "--manual-clock")
    orders = [body(f"k-{i}", f"u{i % 40}", f"d{i}") for i in range(200)]
    acknowledged: dict[str, dict[str, Any]] = {}

    async def send(o: dict[str, Any]) -> None:
        try:
            status, answer = await victim.call("POST", "/v1/orders/check", o)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return  # the gateway died before it answered: not acknowledged
        if status == 200:
            acknowledged[o["order_id"]] = answer

    load = [asyncio.create_task(send(o)) for o in orders]
    while len(acknowledged) < 40:
        await asyncio.sleep(0.005)
    victim.kill()
    await asyncio.gather(*load)
    assert 40 <= len(acknowledged) < len(orders)

    # Every acknowledged decision is in Redis, as it was answered.
    for order_id, answer in acknowledged.items():
        view = await survivor.ok("GET", f"/v1/orders/{order_id}")
        assert (view["decision"], view["payable"]) == (answer["decision"], answer["payable"])
    # Past the lease, the survivor's sweeper gives back what the dead gateway's checks reserved,
    # and what those it killed between their holds and their commit held (a round of the sweeper
    # visits an eighth of the order buckets: up to 8 s with one gateway left).
    await survivor.ok("POST", "/v1/admin/clock", {"advance": LEASE + 1})

    def swept() -> None:
        if reservations_leased(redis_cluster_1_url):
            raise NotReady("reservations still leased")
        if orders_in_flight(redis_cluster_1_url):
            raise NotReady("orders of the dead gateway still in flight")

    await asyncio.to_thread(poll, "leases given back", swept, 15)
    held = 0
    for o in orders:
        status, view = await survivor.call("GET", f"/v1/orders/{o['order_id']}")
        assert status in (200, 404), (status, view)  # 404: in flight at the kill, given back
        held += status == 200 and view["state"] == "held"
    assert (await survivor.ok("GET", "/v1/admin/activities/A1"))["held"] == 100 * held
    assert held >= sum(a["decision"] == "allow" for a in acknowledged.values())


async def test_redis_unreachable_is_503_and_the_gateway_recovers_by_itself(tmp_path: Path, gateways: list[Gateway]) -> None:
    (tmp_path / "redis").mkdir()
    server = start_server(tmp_path / "redis")
    try:
        (gw,) = start(gateways, server.url, tmp_path, 1)
        assert (await gw.ok("POST", "/v1/orders/check", body("r-1", "u1", "d1")))["decision"] == "allow"
        await asyncio.to_thread(server.kill)
        status, error = await gw.call("POST", "/v1/orders/check", body("r-2", "u2", "d2"))
        assert status == 503 and error["error"]["code"] == "redis_unavailable", (status, error)
        status, error = await gw.call("GET", "/v1/admin/activities/A1")
        assert status == 503 and error["error"]["code"] == "redis_unavailable"
        assert (await gw.call("GET", "/healthz"))[0] == 503
        await asyncio.to_thread(server.start)  # the same port and data (AOF)
        deadline = time.monotonic() + 10
        while (answer := await gw.call("POST", "/v1/orders/check", body("r-2", "u2", "d2")))[0] != 200:
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)
        assert answer[1]["decision"] == "allow"
        assert (await gw.ok("GET", "/v1/admin/activities/A1"))["held"] == 200  # r-1 and r-2; nothing half-applied
        assert gw.process.poll() is None
        async with gw.session.get(gw.base + "/metrics") as resp:
            metrics = await resp.text()
        failed = next(line for line in metrics.splitlines() if line.startswith('flashguard_failures_total{code="redis_unavailable"}'))
        assert float(failed.split()[-1]) >= 3  # the check, the admin read and /healthz at least
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_gateways_starting_together_on_an_empty_redis_all_accept_the_one_library(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Workers start at once: all read "no library", one loads it, and the others' loads find it
    there ("already exists"). They must then judge the loaded library, not refuse to start."""
    url = request.getfixturevalue("redis_url" if kind == "single" else "redis_cluster_1_url")
    started = await asyncio.gather(*(connect(url) for _ in range(4)), return_exceptions=True)
    gateways = [g for g in started if not isinstance(g, BaseException)]
    try:
        assert len(gateways) == 4, [g for g in started if isinstance(g, BaseException)]
        for gateway in gateways:
            assert await gateway.client.fcall("fg_version", 0) is not None
    finally:
        for gateway in gateways:
            await gateway.close()


def test_a_gateway_refuses_to_start_against_another_library_version(redis_url: str, tmp_path: Path) -> None:
    other = redis.Redis.from_url(redis_url)
    with other:
        other.function_load("#!lua name=flashguard\nlocal VERSION = '0'\nredis.register_function('fg_version', function() return VERSION end)\n")
    proc = subprocess.run([*FLASHGUARD, "serve", "--redis", redis_url, "--port", str(free_port()), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "version 0" in out and "this gateway runs version" in out, out


def test_a_gateway_refuses_to_start_when_redis_is_unreachable(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    proc = subprocess.run([*FLASHGUARD, "serve", "--redis", url, "--port", str(free_port()), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert f"cannot reach Redis at {url}" in out and "Traceback" not in out, out


async def test_workers_share_the_port_and_a_killed_worker_is_started_again(
    redis_cluster_1_url: str, tmp_path: Path, gateways: list[Gateway]
) -> None:
    (gw,) = start(gateways, redis_cluster_1_url, tmp_path, 1, "--workers", "2")
    poll("both workers listening", lambda: _listening(gw, 2), 30)
    for i in range(20):
        assert (await gw.ok("POST", "/v1/orders/check", body(f"w-{i}", f"u{i}", f"d{i}")))["decision"] == "allow"
    workers = [int(p) for p in Path(f"/proc/{gw.process.pid}/task/{gw.process.pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    poll("the killed worker started again", lambda: _listening(gw, 3), 30)
    assert (await gw.ok("GET", "/v1/admin/activities/A1"))["held"] == 20 * 100
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(30) == 0
    assert "worker 0" in gw.log.read_text() and "starting it again" in gw.log.read_text()


def _listening(gw: Gateway, lines: int) -> None:
    if gw.log.read_text().count("listening on") < lines:
        raise NotReady("not yet")


def test_workers_need_redis(tmp_path: Path) -> None:
    proc = subprocess.run([*FLASHGUARD, "serve", "--workers", "2", "--port", str(free_port()), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "--workers needs --redis" in proc.stdout + proc.stderr


async def test_gateways_starting_together_on_an_empty_store_agree_on_one_admin_token(
    redis_cluster_1_url: str, tmp_path: Path, gateways: list[Gateway]
) -> None:
    new = [Gateway(redis_cluster_1_url, tmp_path, token=None) for _ in range(3)]
    gateways.extend(new)
    for gw in new:
        gw.wait_listening()
    printed = [line.rsplit(" ", 1)[1] for gw in new for line in gw.log.read_text().splitlines() if "admin token (set" in line]
    assert len(printed) == 1, printed  # one made it; the others learnt it
    for gw in new:
        async with gw.session.get(gw.base + "/v1/admin/config", headers={"Authorization": f"Bearer {printed[0]}"}) as resp:
            assert resp.status == 200
