"""Order retention (issue 15): settled orders older than `settings.order_retention` leave memory
and the snapshots; their ids stay known, so a re-check never counts twice.

A settled order (confirmed, cancelled, expired, denied) whose last change is `order_retention` old
is retired: a check reusing its id is a 409 `order_retired`, a confirm, cancel or read of it a 404
`order_retired`; counters, budgets and windows are untouched. A held order never retires. Cluster
mode keeps its order records in Redis and does not retire them.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import msgspec
import pytest

from actors.orders import OrderBook
from actors.retired import RetiredIds, fingerprint
from bench.crash import TOKEN, start_server
from domain.errors import NotFound
from node.coordinator import Coordinator
from snapshots import state as state_codec
from snapshots.store import Store
from domain.types import Decision, OrderState
from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order
from tests.test_snapshot_restore import advance, check, new_coordinator, open_store, order_body, restore_dir, state_document

DAY = 86_400


def retained(retention: str = "1d", **settings: Any) -> dict[str, Any]:
    cfg = base_config(
        skus=[{"sku_id": "S1", "spu_id": "P1", "category": "phone", "cost_price": 800, "original_price": 1000, "limits": {"user": 1}}]
    )
    cfg["settings"].update(order_retention=retention, **settings)
    return cfg


def code(data: Any) -> str:
    assert set(data) == {"error"} and data["error"]["message"], data
    return str(data["error"]["code"])


# -- what retires, and when --------------------------------------------------------------------


@pytest.mark.node_only
async def test_a_confirmed_order_retires_once_its_last_change_is_the_retention_old(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(retained("1d"))
    body = order(item("S1", 1, 1000, discount(100)), order_id="o1", user="u1")
    assert (await gw.check(body))["decision"] == "allow"
    await gw.advance(600)
    assert (await gw.confirm("o1"))["state"] == "confirmed"
    await gw.advance(DAY - 1)  # one second short of a day after the confirm
    assert (await gw.get("o1"))["state"] == "confirmed"
    assert (await gw.check(body))["decision"] == "allow"  # a repeat, answered as the first time
    await gw.advance(1)
    assert code(await gw.get("o1", status=404)) == "order_retired"
    assert code(await gw.confirm("o1", status=404)) == "order_retired"
    assert code(await gw.cancel("o1", status=404)) == "order_retired"
    assert code(await gw.check(body, status=409)) == "order_retired"  # the same body: its first answer is gone
    other = order(item("S1", 1, 1000), order_id="o1", user="u2")
    assert code(await gw.check(other, status=409)) == "order_retired"
    # counters and budget as the confirmed order left them: retirement and the refusals changed nothing
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 1}
    assert "u2" not in json.dumps((await gw.user("u2"))["counters"])
    activity = await gw.activity("A1")
    assert (activity["spent"], activity["held"]) == (100, 0)
    assert code(await gw.get("o-never", status=404)) == "unknown_order"


@pytest.mark.node_only
async def test_a_held_order_never_retires_and_an_expired_one_does(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(retained("1m", hold_ttl="15m"))
    assert (await gw.check(order(item("S1"), order_id="o1", user="u1")))["decision"] == "allow"
    await gw.advance(600)  # ten minutes: held, though older than the retention
    assert (await gw.get("o1"))["state"] == "held"
    await gw.advance(300)  # the hold expires now
    assert (await gw.get("o1"))["state"] == "expired"
    await gw.advance(60)
    assert code(await gw.get("o1", status=404)) == "order_retired"
    assert (await gw.user("u1"))["counters"]["sku"] == {}  # the expiry gave the unit back, as before


@pytest.mark.node_only
async def test_denied_and_cancelled_orders_retire_and_their_ids_are_refused(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(retained("1h"))
    assert (await gw.check(order(item("S1"), order_id="held", user="u1")))["decision"] == "allow"
    assert (await gw.check(order(item("S1"), order_id="denied", user="u1")))["decision"] == "deny"  # SKU limit 1
    assert (await gw.cancel("held"))["state"] == "cancelled"
    await gw.advance(3600)
    for order_id in ("held", "denied"):
        assert code(await gw.check(order(item("S1"), order_id=order_id, user="u1"), status=409)) == "order_retired"
    assert (await gw.user("u1"))["counters"]["sku"] == {}
    assert (await gw.check(order(item("S1"), order_id="new", user="u1")))["decision"] == "allow"


@pytest.mark.node_only
async def test_the_sweeper_moves_retired_orders_out_of_memory_in_bounded_steps(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(retained("1h", hold_ttl="15m"))
    for n in range(10):
        assert (await gw.check(order(item("S1"), order_id=f"o{n}", user=f"u{n}")))["decision"] == "allow"
        await gw.confirm(f"o{n}")
    assert (await gw.check(order(item("S1"), order_id="live", user="u-live")))["decision"] == "allow"
    await gw.advance(3600)
    assert (await gw.check(order(item("S1"), order_id="young", user="u-young")))["decision"] == "allow"
    coordinator = gw.coordinator
    looked, retired, more = coordinator.retire_step(3)
    assert (looked, retired, more) == (3, 3, True)  # never more than its chunk in one synchronous step
    while more:
        looked, step_retired, more = coordinator.retire_step(3)
        assert looked <= 3
        retired += step_retired
    assert retired == 10 and len(coordinator.orders.retired) == 10
    assert "o0" not in coordinator.orders and "o0" in coordinator.orders.retired
    assert coordinator.orders["live"].state is OrderState.EXPIRED  # expired at 15 min, settled 45 min ago: kept
    assert coordinator.orders["young"].state is OrderState.HELD
    assert code(await gw.check(order(item("S1"), order_id="o3", user="u3"), status=409)) == "order_retired"
    assert (await gw.user("u3"))["counters"]["sku"] == {"S1": 1}


@pytest.mark.node_only
async def test_a_settled_order_is_packed_after_a_minute_and_reads_back_the_same(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(retained("7d"))
    body = order(item("S1", 1, 1000, discount(100)), order_id="o1", user="u1")
    first = await gw.check(body)
    await gw.confirm("o1")
    view = await gw.get("o1")
    await gw.advance(OrderBook.PACK_AFTER)
    coordinator = gw.coordinator
    assert coordinator.pack_step(100)[1] == 1
    assert isinstance(coordinator.orders._orders["o1"], bytes)  # packed
    assert await gw.get("o1") == view
    assert await gw.check(body) == first  # the repeat's answer survived the packing
    assert (await gw.cancel("o1"))["state"] == "cancelled"  # and the footprint: the quota comes back
    assert (await gw.user("u1"))["counters"]["sku"] == {}


async def test_the_setting_defaults_to_seven_days_and_is_validated(gw_factory: MakeGateway) -> None:
    gw = await gw_factory()
    assert (await gw.admin("GET", "config"))["settings"]["order_retention"] == "7d"
    bad = await gw.admin("PATCH", "settings", {"order_retention": "soon"}, status=400)
    assert "order_retention" in bad["error"]["message"]
    assert (await gw.admin("PATCH", "settings", {"order_retention": "30d"}))["order_retention"] == "30d"


# -- the retired ids ---------------------------------------------------------------------------


def test_retired_ids_are_found_and_round_trip_through_their_stored_form() -> None:
    ids = RetiredIds()
    for n in range(5000):
        assert ids.add(f"order-{n}")
    assert not ids.add("order-7")  # known already
    assert len(ids) == 5000 and "order-4999" in ids and "order-5000" not in ids
    again = RetiredIds.from_bytes(ids.to_bytes())
    assert len(again) == 5000 and all(f"order-{n}" in again for n in range(0, 5000, 97))
    assert ids.nbytes() >= 5000 * 8 and len(ids.to_bytes()) == 4096 * 4 + 5000 * 8
    assert fingerprint("o1") == fingerprint("o1") != fingerprint("o2")  # stable: not Python's salted hash()


# -- durability --------------------------------------------------------------------------------


async def _o1_retired_o2_held(directory: Path) -> tuple[Coordinator, Store]:
    """A serving state (journaled) in which o1 was confirmed an hour ago (retention 1h) and o2 is held."""
    coordinator, store = await open_store(directory)
    coordinator.change(("settings", {"order_retention": "1h"}))
    assert check(coordinator, order_body("o1", "u1")).decision is Decision.ALLOW
    coordinator.confirm("o1")
    advance(coordinator, 3600)
    assert check(coordinator, order_body("o2", "u2")).decision is Decision.ALLOW
    await coordinator.journal.commit()
    return coordinator, store


async def test_a_snapshot_leaves_retired_orders_out_and_restore_keeps_their_ids(tmp_path: Path) -> None:
    coordinator, store = await _o1_retired_o2_held(tmp_path)
    store.snapshot_in_process(coordinator)
    assert "o1" not in coordinator.orders and "o1" in coordinator.orders.retired  # the snapshot retired it as it wrote
    await store.close(coordinator)

    restored, report = await restore_dir(tmp_path)
    assert report.snapshot is not None
    assert "o1" in restored.orders.retired and "o1" not in restored.orders
    assert restored.orders["o2"].state is OrderState.HELD
    assert restored.ledger.activities == coordinator.ledger.activities


async def test_journal_replay_retires_as_the_serving_process_did(tmp_path: Path) -> None:
    """No snapshot: the journal alone gives back the same retired orders (kill -9 before any)."""
    coordinator, store = await _o1_retired_o2_held(tmp_path)
    assert store.journal is not None
    await store.journal.close()  # kill -9: no final snapshot
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot is None
    with pytest.raises(NotFound) as refused:
        restored.order("o1")
    assert refused.value.code == "order_retired"
    assert restored.orders["o2"].state is OrderState.HELD


async def test_a_retired_id_stays_refused_across_a_kill_9(tmp_path: Path) -> None:
    """The real server: orders retire by the wall clock (retention 1s); a snapshot takes the
    retired ids, the server is killed with SIGKILL, and the restarted one still refuses the id."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(retained("1s")))
    data = tmp_path / "data"
    server = await start_server(data, config, tmp_path / "server.log", "batch", 1.0)
    body = order(item("S1"), order_id="o1", user="u1")
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:

            async def call(method: str, path: str, payload: Any = None) -> tuple[int, Any]:
                async with session.request(method, server.base + path, json=payload) as resp:
                    return resp.status, await resp.json()

            assert (await call("POST", "/v1/orders/check", body))[1]["decision"] == "allow"
            assert (await call("POST", "/v1/orders/o1/confirm"))[1]["state"] == "confirmed"
            deadline = time.monotonic() + 10
            while (await call("GET", "/v1/orders/o1"))[0] != 404:
                assert time.monotonic() < deadline, "o1 did not retire"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # a snapshot round (every second) after the retirement
            server.kill()
            server = await start_server(data, config, tmp_path / "server.log", "batch", 1.0)
            status, answer = await call("POST", "/v1/orders/check", body)
            assert (status, answer["error"]["code"]) == (409, "order_retired")
            status, user = await call("GET", "/v1/admin/users/u1")
            assert status == 200 and user["counters"]["sku"] == {"S1": 1}
    finally:
        server.kill_group()


# -- cluster mode ------------------------------------------------------------------------------


@pytest.mark.both_modes
async def test_cluster_mode_keeps_its_orders(gw_factory: MakeGateway, mode: str) -> None:
    """The setting is part of the shared configuration; only the single node retires."""
    gw: Gateway = await gw_factory(retained("1h"))
    assert (await gw.check(order(item("S1"), order_id="o1", user="u1")))["decision"] == "allow"
    await gw.confirm("o1")
    await gw.advance(7200)
    if mode == "cluster":
        assert (await gw.get("o1"))["state"] == "confirmed"
    else:
        assert code(await gw.get("o1", status=404)) == "order_retired"


def test_new_coordinator_default_is_seven_days() -> None:
    assert new_coordinator().config.settings.order_retention_seconds == 7 * DAY


def test_a_format_2_snapshot_body_is_still_read() -> None:
    """The body an earlier build wrote: nine fields, settled orders as their plain msgpack form."""
    coordinator = new_coordinator()
    assert check(coordinator, order_body("o1", "u1")).decision is Decision.ALLOW
    coordinator.confirm("o1")
    assert check(coordinator, order_body("o2", "u2")).decision is Decision.ALLOW
    fields = state_document(coordinator)
    assert len(fields) == 11
    old = [2, *fields[1:8], {"o1": msgspec.msgpack.encode(coordinator.orders["o1"])}]
    config, ledger, orders, now = state_codec.decode(msgpack.packb(old, use_bin_type=True))
    assert orders["o1"].state is OrderState.CONFIRMED and orders["o2"].state is OrderState.HELD
    assert not orders.retired and now == coordinator.clock.now()
    with pytest.raises(state_codec.StateInvalid):  # a document one field short
        state_codec.decode(msgpack.packb(fields[:10], use_bin_type=True))
