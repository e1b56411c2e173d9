"""Bad input never crashes the server and never changes state (SPEC section 1), over random input:
hypothesis takes a valid body of every endpoint that reads one, replaces, drops or adds one field
(or the whole body) with a random value, and sends it as JSON or MessagePack. Every answer is
below 500; a 4xx has the error shape and leaves the whole state (`canonical`) as it was; what is
still valid may be accepted."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import make_app
from domain.clock import ManualClock
from node.coordinator import Coordinator
from domain.document import build_config
from tests.conftest import ADDRESS, T0, TOKEN, base_config, discount, item, order
from tests.test_snapshot_restore import canonical

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

TARGETS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/orders/check", order(item("S1", 2, 1000, discount(100)), device="d1", name="Zhang San", phone="139", address=ADDRESS)),
    ("POST", "/v1/coupons/claim-check", {"user_id": "u1", "coupon_id": "C1", "device_id": "d1", "phone": "13900000000"}),
    ("PUT", "/v1/admin/skus/S2", {"cost_price": 800, "price_fuse": {"base": "cost", "ratio": "0.5"}, "limits": {"user": 2}}),
    ("PUT", "/v1/admin/rules/R1", {"subject": "address:town", "scope": {"category": "phone"}, "window": "1h", "max_quantity": 5}),
    ("PUT", "/v1/admin/activities/A2", {"budget": 500, "starts_at": T0, "user_limit": 3, "sku_limits": {"S1": 1}}),
    ("PATCH", "/v1/admin/settings", {"hold_ttl": "10m", "risk_multiplier": "1.5", "messages": {"busy": "wait"}}),
    ("PUT", "/v1/admin/config", base_config()),
    ("POST", "/v1/admin/clock", {"advance": 0}),
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, template: Any) -> Any:
    how = draw(st.sampled_from(["replace", "drop", "add", "whole"]))
    if how == "whole":
        return draw(VALUES)
    body = copy.deepcopy(template)
    *parents, last = draw(st.sampled_from(list(_paths(body))))
    parent = body
    for key in parents:
        parent = parent[key]
    if how == "replace":
        parent[last] = draw(VALUES)
    elif isinstance(parent, dict) and how == "drop":
        del parent[last]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(VALUES)
    return body


def _encoded(body: Any, as_msgpack: bool) -> tuple[bytes, str]:
    if as_msgpack:
        try:
            return msgpack.packb(body), "application/msgpack"
        except (OverflowError, ValueError):  # an int past 64 bits has no msgpack form: send JSON
            pass
    return json.dumps(body).encode(), "application/json"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[asyncio.AbstractEventLoop, TestClient[Any, Any], Coordinator]]:
    """One server for every example (a sync test: hypothesis drives the loop itself)."""
    coordinator = Coordinator(build_config(base_config()), ManualClock(T0))

    async def start() -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(coordinator, admin_token=TOKEN)))
        await client.start_server()
        return client

    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(start())
        yield loop, client, coordinator
        loop.run_until_complete(client.close())
    finally:
        loop.close()


async def _send(client: TestClient[Any, Any], method: str, path: str, raw: bytes, content_type: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type, "Accept": "application/json"}
    resp = await client.request(method, path, data=raw, headers=headers)
    return resp.status, await resp.json()


@settings(max_examples=1000, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_input_is_refused_cleanly_or_accepted(
    server: tuple[asyncio.AbstractEventLoop, TestClient[Any, Any], Coordinator], data: st.DataObject
) -> None:
    loop, client, coordinator = server
    method, path, template = data.draw(st.sampled_from(TARGETS))
    raw, content_type = _encoded(data.draw(mutated(template)), data.draw(st.booleans()))
    before = canonical(coordinator)
    status, answer = loop.run_until_complete(_send(client, method, path, raw, content_type))
    assert status < 500, answer
    if status >= 400:
        assert list(answer) == ["error"] and isinstance(answer["error"]["code"], str), answer
        assert isinstance(answer["error"]["message"], str), answer
        assert canonical(coordinator) == before, answer
