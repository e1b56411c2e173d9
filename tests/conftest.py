"""Test harness: the real aiohttp app on a manual clock, driven over HTTP.

`gw` builds a gateway from a config document (a dict, as the JSON config file would hold) and
returns a `Gateway` with helpers for the calls the SPEC names. Time starts at `T0` and moves only
through `advance` (the admin clock endpoint), so every edge is exact.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from actors.subject import SubjectActor
from cluster.config_store import ConfigStore
from cluster.connection import Redis, connect
from cluster.coordinator import ClusterCoordinator
from domain.clock import ManualClock
from domain.document import build_config
from domain.types import key
from gateway.app import make_app
from gateway.keys import COORDINATOR, SERVICE
from gateway.service import ClusterService
from node.coordinator import Coordinator

# Real redis-server fixtures: redis_single, redis_url, redis_cluster_1(_url), redis_cluster_6.
pytest_plugins = ["tests.redis_servers"]

T0 = 1_800_000_000
TOKEN = "test-admin-token"
ADDRESS = {"province": "Zhejiang", "city": "Hangzhou", "district": "Xihu", "town": "Lingyin", "detail": "1 Lake Rd"}

_ids = itertools.count(1)


def order(
    *items: dict[str, Any],
    user: str = "u1",
    order_id: str | None = None,
    device: str | None = None,
    ip: str | None = None,
    name: str | None = None,
    phone: str | None = None,
    address: dict[str, str] | None = None,
    on_refusal: str | None = None,
) -> dict[str, Any]:
    """A check body; items default to one S1 at 1000 with no discounts."""
    body: dict[str, Any] = {
        "order_id": order_id or f"o-{next(_ids)}",
        "user_id": user,
        "items": list(items) or [item()],
    }
    if device is not None:
        body["device_id"] = device
    if ip is not None:
        body["ip"] = ip
    if name is not None or phone is not None or address is not None:
        receiver: dict[str, Any] = {}
        if name is not None:
            receiver["name"] = name
        if phone is not None:
            receiver["phone"] = phone
        if address is not None:
            receiver["address"] = address
        body["receiver"] = receiver
    if on_refusal is not None:
        body["on_refusal"] = on_refusal
    return body


def item(sku: str = "S1", quantity: int = 1, unit_price: int = 1000, *discounts: dict[str, Any]) -> dict[str, Any]:
    return {"sku_id": sku, "quantity": quantity, "unit_price": unit_price, "discounts": list(discounts)}


def discount(
    amount: int, activity: str | None = "A1", ident: str | None = None, funded_by: str | None = None
) -> dict[str, Any]:
    d: dict[str, Any] = {"id": ident or (activity or "D"), "amount": amount}
    if activity is not None:
        d["activity_id"] = activity
    if funded_by is not None:
        d["funded_by"] = funded_by
    return d


class Gateway:
    """One running gateway and the calls a test makes on it."""

    def __init__(self, client: TestClient[Any, Any], app: web.Application, clock: ManualClock) -> None:
        self.client = client
        self.app = app
        self.clock = clock  # the gateway's own clock; in cluster mode it follows the one in Redis
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    async def call(self, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        resp = await self.client.request(method, path, json=body, **kw)
        data = await resp.json()
        assert resp.status == status, (resp.status, data)
        return data

    async def check(self, body: dict[str, Any], status: int = 200) -> Any:
        return await self.call("POST", "/v1/orders/check", body, status)

    async def confirm(self, order_id: str, status: int = 200) -> Any:
        return await self.call("POST", f"/v1/orders/{order_id}/confirm", status=status)

    async def cancel(self, order_id: str, status: int = 200) -> Any:
        return await self.call("POST", f"/v1/orders/{order_id}/cancel", status=status)

    async def get(self, order_id: str, status: int = 200) -> Any:
        return await self.call("GET", f"/v1/orders/{order_id}", status=status)

    async def claim(self, body: dict[str, Any], status: int = 200) -> Any:
        return await self.call("POST", "/v1/coupons/claim-check", body, status)

    async def admin(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        return await self.call(method, "/v1/admin/" + path.lstrip("/"), body, status, headers=self.auth)

    @property
    def coordinator(self) -> Coordinator:
        """The single node's coordinator, for the tests that look into its memory."""
        return self.app[COORDINATOR]

    async def subject(self, kind: str, value: str) -> SubjectActor | None:
        """A subject's actor as the state holds it now (in cluster mode: read from Redis)."""
        service, subject = self.app[SERVICE], key(kind, value)
        if isinstance(service, ClusterService):
            return (await service.coordinator.subject_ledger(subject)).find(subject)
        return self.coordinator.ledger.find(subject)

    async def orders(self) -> int:
        """How many orders the state records."""
        service = self.app[SERVICE]
        if isinstance(service, ClusterService):
            client = service.coordinator.redis.client
            names = [k async for k in client.scan_iter(match="fg:{o:*}:*", count=1000)]
            return sum(1 for k in names if not k.endswith((b":inflight", b":holds")))
        return len(self.coordinator.orders)

    async def advance(self, seconds: int) -> Any:
        moved = await self.admin("POST", "clock", {"advance": seconds})
        if moved["now"] != self.clock.now():
            self.clock.set(moved["now"])
        return moved

    async def user(self, user_id: str) -> Any:
        return await self.admin("GET", f"users/{user_id}")

    async def activity(self, activity_id: str) -> Any:
        return await self.admin("GET", f"activities/{activity_id}")


MakeGateway = Callable[..., Awaitable[Gateway]]


def base_config(**sections: Any) -> dict[str, Any]:
    """A small config: one SKU S1 (cost 800, original 1000) of SPU P1, activity A1; extend per test."""
    doc: dict[str, Any] = {
        "settings": {"hold_ttl": "15m", "locale": "en"},
        "skus": [{"sku_id": "S1", "spu_id": "P1", "category": "phone", "brand": "acme", "cost_price": 800, "original_price": 1000}],
        "activities": [{"activity_id": "A1", "budget": 1_000_000}],
    }
    doc.update(sections)
    return doc


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test module marked `both_modes` runs every test against the single node and against
    cluster mode (a gateway over a one-node Redis Cluster, which refuses any key that escaped
    its slot), but for its tests marked `node_only` (they look into the single node's memory);
    the others run on the single node."""
    marked = metafunc.definition.get_closest_marker("both_modes") and not metafunc.definition.get_closest_marker("node_only")
    if "mode" in metafunc.fixturenames and marked:
        metafunc.parametrize("mode", ["node", "cluster"])


@pytest.fixture
def mode() -> str:
    return "node"


@pytest.fixture
async def gw_factory(mode: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeGateway]:
    """Gateways on a manual clock starting at `start`. In cluster mode they share one flushed
    Redis, so a second gateway of a test serves the same state, and its configuration is
    applied over the stored one (as `--reload-config` does)."""
    clients: list[TestClient[Any, Any]] = []
    connections: list[Redis] = []

    async def make(config: dict[str, Any] | None = None, *, start: int = T0, max_inflight: int = 1024) -> Gateway:
        clock = ManualClock(start)
        cfg = build_config(config if config is not None else base_config())
        app: web.Application
        if mode == "cluster":
            redis = await connect(request.getfixturevalue("redis_cluster_1_url"))
            connections.append(redis)
            cluster = ClusterCoordinator(redis, ConfigStore(redis), clock, manual_clock=True)
            app = make_app(cluster, admin_token=TOKEN, seed=cfg, reload_config=bool(clients), max_inflight=max_inflight)
        else:
            app = make_app(Coordinator(cfg, clock), admin_token=TOKEN, max_inflight=max_inflight)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return Gateway(client, app, clock)

    yield make
    for client in clients:
        await client.close()
    for redis in connections:
        await redis.close()


@pytest.fixture
async def gw(gw_factory: MakeGateway) -> Gateway:
    return await gw_factory()
