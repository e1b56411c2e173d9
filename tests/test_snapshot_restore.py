"""Restore (SPEC section 7, issue 4): snapshots and the journal round-trip through the real Store.

Each test runs a coordinator against a data directory in `tmp_path` (driven through its methods or
through the HTTP app), then restores the directory into a fresh coordinator and compares the whole
state: orders with their states, ledger counters, risk windows, activity budgets, the
configuration (admin changes and lists included) and auto-blacklist totals.

The helpers at the top (a configuration, order bodies, `canonical`, `restore_dir`) are shared with
`test_corruption` and `test_disk_failure`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.orders import Order
from gateway.app import make_app
from domain.clock import Clock, ManualClock
from gateway.codec import digest
from domain.config import Config
from node.coordinator import Coordinator
from domain.document import build_config
from domain.errors import Gone
from domain.schema import CheckRequest, CheckResponse, ClaimRequest
from domain.types import Code, Decision, OrderState
from snapshots import journal, journal_files
from snapshots import snapshot as snapshot_files
from snapshots import state as state_codec
from snapshots.store import RestoreError, RestoreReport, Store
from tests.conftest import ADDRESS, TOKEN, Gateway

T0 = 1_800_000_000
TTL = 900  # durable_config's hold_ttl = "15m"
HOUR = 3600


# -- shared helpers -------------------------------------------------------------------------


def durable_config(**sections: Any) -> dict[str, Any]:
    """A configuration that exercises every kind of state: limits, SPU limits, an activity with a
    budget and user limits, a coupon, a risk rule with a window, lists and the auto-blacklist."""
    doc: dict[str, Any] = {
        "settings": {"hold_ttl": "15m", "locale": "en"},
        "skus": [
            {
                "sku_id": "S1",
                "spu_id": "P1",
                "category": "phone",
                "brand": "acme",
                "cost_price": 800,
                "original_price": 1000,
                "limits": {"user": 3, "device": 4},
            },
            {"sku_id": "S2", "spu_id": "P1", "category": "phone", "cost_price": 300, "original_price": 500},
        ],
        "spus": [{"spu_id": "P1", "limits": {"user": 6}}],
        "activities": [{"activity_id": "A1", "budget": 1_000_000, "user_limit": 5, "sku_limits": {"S1": 3}}],
        "coupons": [{"coupon_id": "C1", "activity_id": "A1", "per_user_limit": 2}],
        "rules": [
            {"rule_id": "R1", "subject": "device", "scope": {}, "window": "1h", "max_quantity": 20},
            {
                "rule_id": "R2",
                "subject": "address:city",
                "scope": {"category": "phone"},
                "window": "24h",
                "max_quantity": 50,
                "mode": "shadow",
            },
        ],
        "lists": {"blacklist": {"user": ["u-bad"]}, "whitelist": {"user": ["staff-1"]}},
        "auto_blacklist": {"discount_cost": 2000, "negative_margin": True},
    }
    doc.update(sections)
    return doc


def order_body(
    order_id: str,
    user: str = "u1",
    sku: str = "S1",
    quantity: int = 1,
    unit_price: int = 1000,
    discount: int = 0,
    device: str = "d1",
) -> dict[str, Any]:
    """A check body with a receiver; `discount` > 0 adds an A1 activity discount to the item."""
    item: dict[str, Any] = {"sku_id": sku, "quantity": quantity, "unit_price": unit_price}
    if discount:
        item["discounts"] = [{"id": "A1", "activity_id": "A1", "amount": discount}]
    return {
        "order_id": order_id,
        "user_id": user,
        "device_id": device,
        "ip": "10.0.0.1",
        "receiver": {"name": "Zhang San", "phone": "13900000000", "address": ADDRESS},
        "items": [item],
    }


def check(coordinator: Coordinator, body: dict[str, Any]) -> CheckResponse:
    """One check, as the HTTP handler makes it (the body validated, then its digest)."""
    req = msgspec.convert(body, CheckRequest)
    return coordinator.check(req, digest(req))[0]


def claim(coordinator: Coordinator, user: str, coupon: str = "C1") -> CheckResponse:
    return coordinator.claim(ClaimRequest(user_id=user, coupon_id=coupon))


def state_document(coordinator: Coordinator) -> list[Any]:
    """The msgpack document of a snapshot body of the coordinator's state (the archive of settled
    orders follows it: see `snapshots.state`)."""
    body = b"".join(state_codec.encode(coordinator.config, coordinator.ledger, coordinator.orders, coordinator.clock.now(), 3))
    length = int.from_bytes(body[1:9], "little")
    document = msgspec.msgpack.decode(body[9 : 9 + length])
    assert isinstance(document, list)
    return document


def new_coordinator(clock: Clock | None = None, config: dict[str, Any] | None = None) -> Coordinator:
    return Coordinator(build_config(config if config is not None else durable_config()), clock or ManualClock(T0))


def canonical(coordinator: Coordinator) -> Any:
    """The whole observable state as plain data: the configuration (secrets included), every actor,
    every order and the clock, with what nothing can observe normalised away (risk-window buckets
    that have left their window, windows and actors left empty, zero budgets), so that a live state
    and its restored copy compare equal exactly when they behave the same."""
    now = coordinator.clock.now()
    ledger = coordinator.ledger
    subjects: dict[str, Any] = {}
    for key, actor in ledger.all_subjects().items():
        live: dict[str, Any] = {}
        for wkey, window in actor.windows.items():
            pairs = window.buckets.items() if isinstance(window.buckets, dict) else window.buckets
            kept = sorted((t, q) for t, q in pairs if t > now - window.seconds and q)
            if kept:
                live[wkey] = [window.seconds, kept]
        counts = {c: q for c, q in actor.counts.items() if q}
        if counts or live or actor.discount_total or actor.margin_total:
            subjects[key] = [counts, live, actor.discount_total, actor.margin_total]
    state = {
        "now": now,
        "config": coordinator.config.to_doc(secrets=True),
        "subjects": subjects,
        "activities": {a: [x.held, x.spent] for a, x in ledger.activities.items() if x.held or x.spent},
        "skus": {s: [x.held, x.confirmed] for s, x in ledger.skus.items() if x.held or x.confirmed},
        "orders": {k: msgspec.to_builtins(o) for k, o in coordinator.orders.items()},
    }
    # through msgpack: tuples and lists, SortedDict pairs and tuples all become the same lists
    return msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False, strict_map_key=False)


async def restore_dir(
    directory: Path,
    clock: Clock | None = None,
    seed: Config | None = None,
    reload_config: bool = False,
    config: dict[str, Any] | None = None,
) -> tuple[Coordinator, RestoreReport]:
    """Restore `directory` into a fresh coordinator as a server start would, then close the journal
    (persisting what restore itself recorded). Raises RestoreError as the start would."""
    coordinator = new_coordinator(clock, config)
    store = Store(directory, fsync="always")
    try:
        report = store.restore(coordinator, seed or coordinator.config, reload_config)
    finally:
        if store.journal is not None:
            await store.journal.close()
    return coordinator, report


async def open_store(directory: Path, clock: Clock | None = None, fsync: journal.FsyncMode = "always") -> tuple[Coordinator, Store]:
    """A serving coordinator on `directory` (seeded from durable_config when it is empty)."""
    coordinator = new_coordinator(clock)
    store = Store(directory, fsync=fsync)
    store.restore(coordinator, coordinator.config)
    await journal_of(store).commit()
    return coordinator, store


def journal_of(store: Store) -> journal.Journal:
    assert store.journal is not None
    return store.journal


async def commit(coordinator: Coordinator) -> None:
    await coordinator.journal.commit()


def journal_records(directory: Path) -> list[list[Any]]:
    """Every record the journal holds from lsn 1 (the directory must still hold the whole journal)."""
    return journal_files.read(directory, 0).records


def state_of(coordinator: Coordinator, order_id: str) -> OrderState:
    return coordinator.orders[order_id].state


def advance(coordinator: Coordinator, seconds: int) -> None:
    """Move the clock as POST /v1/admin/clock does: the move is journaled, so a restart (and a
    snapshot, which is rebuilt from the journal) continues from it."""
    clock = coordinator.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)
    coordinator.journal.append(("clock", clock.now()))


async def first_half(coordinator: Coordinator) -> None:
    """Holds, a confirm, a cancel, a claim, a degrade-free deny: every kind of order record."""
    assert check(coordinator, order_body("o1", "u1", discount=100)).decision is Decision.ALLOW
    assert check(coordinator, order_body("o2", "u2", quantity=2, device="d2")).decision is Decision.ALLOW
    assert check(coordinator, order_body("o3", "u1", quantity=3)).decision is Decision.DENY  # SKU_LIMIT: 1 + 3 > 3
    await commit(coordinator)
    advance(coordinator, 60)
    coordinator.confirm("o1")
    coordinator.cancel("o2")
    assert claim(coordinator, "u1").decision is Decision.ALLOW
    await commit(coordinator)


async def second_half(coordinator: Coordinator) -> None:
    """Admin changes, an auto-blacklisting, an expiry, and a hold still open at the end."""
    advance(coordinator, 30)
    coordinator.change(("put", "skus", "S3", {"sku_id": "S3", "category": "tv", "cost_price": 100, "limits": {"user": 1}}))
    coordinator.change(("list", "blacklist", "device", "d-bad", True))
    coordinator.change(("list", "whitelist", "discount", "618-SUPER", True))
    coordinator.change(("settings", {"hold_ttl": "20m", "locale": "zh", "release_on_cancel": False}))
    coordinator.change(("delete", "rules", "R2"))
    # u3 gets 2500 counted discount on a 3000 order: auto-blacklisted (discount_cost 2000), margin < 0
    assert check(coordinator, order_body("o4", "u3", quantity=3, discount=2500, device="d3")).decision is Decision.ALLOW
    coordinator.confirm("o4")
    assert check(coordinator, order_body("o5", "u4", sku="S2", unit_price=500)).decision is Decision.ALLOW
    await commit(coordinator)
    advance(coordinator, 20 * 60)  # o5's 20-minute hold runs out; the next call expires it
    assert check(coordinator, order_body("o6", "u5", sku="S3", unit_price=200, device="d5")).decision is Decision.ALLOW
    assert coordinator.orders["o5"].state is OrderState.EXPIRED
    assert check(coordinator, order_body("o7", "u3", device="d7")).decision is Decision.DENY  # auto-blacklisted
    await commit(coordinator)


def assert_populated(coordinator: Coordinator) -> None:
    """The scenario's state really is there (so an equality with an empty state cannot pass)."""
    states = {k: o.state for k, o in coordinator.orders.items() if k in {"o1", "o2", "o3", "o4", "o5", "o6", "o7"}}
    assert states == {
        "o1": OrderState.CONFIRMED,
        "o2": OrderState.CANCELLED,
        "o3": OrderState.DENIED,
        "o4": OrderState.CONFIRMED,
        "o5": OrderState.EXPIRED,
        "o6": OrderState.HELD,
        "o7": OrderState.DENIED,
    }
    activity = coordinator.ledger.activities["A1"]
    assert (activity.held, activity.spent) == (0, 100 + 2500)
    u3 = coordinator.ledger.subject("user\x1fu3")
    assert (u3.discount_total, u3.margin_total) == (2500, 500 - 3 * 800)
    assert coordinator.ledger.subject("user\x1fu1").counts["coupon\x1fC1"] == 1
    assert "S3" in coordinator.config.skus and "R2" not in coordinator.config.rules
    assert coordinator.config.blacklist.has("device", "d-bad")
    assert coordinator.config.settings.hold_ttl == "20m" and coordinator.config.settings.release_on_cancel is False


def raw_windows(coordinator: Coordinator) -> dict[str, tuple[int, list[Any]]]:
    """Every subject's windows as stored, old buckets and all, with its next sweep."""
    return {
        k: (a.sweep_at, [(w, msgspec.to_builtins(x)) for w, x in sorted(a.windows.items())])
        for k, a in coordinator.ledger.all_subjects().items()
        if a.windows or a.sweep_at
    }


def assert_same_future(original: Coordinator, restored: Coordinator) -> None:
    """The restored state also behaves the same later: holds and risk windows run out together
    (the expiry heap and window sweeps were rebuilt), and a new order meets the same counters."""
    for coordinator in (original, restored):
        advance(coordinator, 2 * HOUR)
        coordinator.expire_due(coordinator.clock.now())
    assert canonical(restored) == canonical(original)
    assert restored.orders["o6"].state is OrderState.EXPIRED
    # not only the same counts: the sweeps dropped the same stale buckets (nothing leaks in memory)
    assert raw_windows(restored) == raw_windows(original)
    for coordinator in (original, restored):
        check(coordinator, order_body("o-next", "u1", quantity=2))
    assert canonical(restored) == canonical(original)


# -- round trips ------------------------------------------------------------------------------


async def test_journal_only_restore_rebuilds_the_whole_state(tmp_path: Path) -> None:
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    await second_half(coordinator)
    assert_populated(coordinator)
    assert not snapshot_files.snapshots(tmp_path)
    # kill -9: the journal is all there is
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot is None and not report.damaged and report.torn is None and not report.seeded
    assert report.replayed == journal_of(store).lsn
    assert_populated(restored)
    assert canonical(restored) == canonical(coordinator)
    assert_same_future(coordinator, restored)
    await journal_of(store).close()


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "in-process"])
async def test_snapshot_plus_the_journal_after_it(tmp_path: Path, forked: bool) -> None:
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    path = await store.snapshot(coordinator) if forked else store.snapshot_in_process(coordinator)
    covered = journal_of(store).lsn
    assert path == snapshot_files.snapshot_path(tmp_path, covered) and path.exists()
    assert not list(tmp_path.glob("*.tmp"))
    await second_half(coordinator)
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot == path and not report.damaged and report.torn is None
    assert report.replayed == journal_of(store).lsn - covered
    assert_populated(restored)
    assert canonical(restored) == canonical(coordinator)
    assert_same_future(coordinator, restored)
    await journal_of(store).close()


def test_the_snapshot_process_runs_below_a_realtime_server() -> None:
    """A server started under a realtime policy (`chrt -r`) passes it on to the snapshot process it
    starts; that process drops to the batch policy at nice 10, so it never takes turns with the
    server on its core."""
    code = "import os; from snapshots.compact import background; background(); print(os.sched_getscheduler(0), os.nice(0))"
    chrt = shutil.which("chrt")
    if chrt is None:
        pytest.skip("chrt (util-linux) is not installed")
    try:
        out = subprocess.run([chrt, "-r", "1", sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    except subprocess.CalledProcessError as e:
        if "Operation not permitted" in e.stderr or "failed to set pid" in e.stderr:
            pytest.skip("this user may not set a realtime policy")
        raise
    assert [int(x) for x in out] == [os.SCHED_BATCH, os.nice(0) + 10]


async def test_snapshot_alone_restores_everything(tmp_path: Path) -> None:
    """The final snapshot at shutdown, with no journal record after it."""
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    await second_half(coordinator)
    path = store.snapshot_in_process(coordinator)
    restored, report = await restore_dir(tmp_path)
    assert (report.snapshot, report.replayed, report.damaged, report.torn) == (path, 0, [], None)
    assert canonical(restored) == canonical(coordinator)
    assert_same_future(coordinator, restored)
    await journal_of(store).close()


async def test_subjects_and_settled_orders_stay_encoded_until_used_and_behave_the_same(tmp_path: Path) -> None:
    """A restore decodes the holds and leaves subject actors in msgpack form and settled orders in
    the archive (time and memory); used later, each acts as if it had never left memory, and a
    snapshot of the restored state carries the untouched ones through unchanged."""
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    await second_half(coordinator)
    store.snapshot_in_process(coordinator)
    restored, _ = await restore_dir(tmp_path)
    archived = [restored.orders.archive.entry(i) for i in range(len(restored.orders.archive))]
    settled = {k for k, o in coordinator.orders.items() if o.state is not OrderState.HELD}
    assert settled and {k for k, _ in archived} == settled
    assert set(restored.orders._orders) == {o.order_id for o in coordinator.orders.held()}
    assert restored.held == coordinator.held == len(restored.orders.held())
    assert not restored.ledger.subjects and set(restored.ledger.cold) == set(coordinator.ledger.subjects)
    # a snapshot of the restored state (as compaction takes one) carries them through unchanged
    now = restored.clock.now()
    again = new_coordinator(ManualClock(now))
    again.adopt(*state_codec.decode(b"".join(state_codec.encode(restored.config, restored.ledger, restored.orders, now, 1)))[:3])
    assert [again.orders.archive.entry(i) for i in range(len(again.orders.archive))] == archived
    assert again.ledger.cold == restored.ledger.cold
    assert canonical(again) == canonical(coordinator)
    # a confirmed order cancelled after the restore gives back what it took, as it would have
    for c in (coordinator, restored):
        assert c.cancel("o1").state is OrderState.CANCELLED
    assert isinstance(restored.orders._orders["o1"], Order)
    assert "user\x1fu1" in restored.ledger.subjects and "user\x1fu1" not in restored.ledger.cold
    assert canonical(restored) == canonical(coordinator)
    await journal_of(store).close()


async def test_a_check_after_a_restore_counts_what_cold_subjects_hold(tmp_path: Path) -> None:
    """Right after a restore every subject is cold; a check still sees what each one bought."""
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)  # u1 bought 1 of S1 on device d1: S1's limits are 3 per user, 4 per device
    store.snapshot_in_process(coordinator)
    restored, _ = await restore_dir(tmp_path)
    assert {"user\x1fu1", "device\x1fd1"} <= set(restored.ledger.cold)
    for c in (coordinator, restored):
        for order_id, user, quantity, subject in (("o-user", "u1", 3, "user"), ("o-device", "u9", 4, "device")):
            response = check(c, order_body(order_id, user, quantity=quantity))
            assert response.decision is Decision.DENY
            assert (Code.SKU_LIMIT, subject, 1, quantity) in [(r.code, r.subject, r.used, r.requested) for r in response.reasons]
    assert canonical(restored) == canonical(coordinator)
    await journal_of(store).close()


async def test_several_snapshots_keep_only_what_restore_needs(tmp_path: Path) -> None:
    """Older snapshots are pruned to the last KEEP, journal segments below the oldest kept one are
    deleted, and the directory still restores exactly."""
    coordinator, store = await open_store(tmp_path)
    taken = []
    for n in range(5):
        assert check(coordinator, order_body(f"s{n}", f"user{n}", device=f"dev{n}")).decision is Decision.ALLOW
        await commit(coordinator)
        taken.append(await store.snapshot(coordinator))
    assert check(coordinator, order_body("tail", "tail-user", device="tail-dev")).decision is Decision.ALLOW
    await commit(coordinator)
    kept = [p for _, p in snapshot_files.snapshots(tmp_path)]
    assert kept == taken[::-1][: snapshot_files.KEEP]
    oldest = snapshot_files.snapshots(tmp_path)[-1][0]
    firsts = [first for first, _ in journal_files.segments(tmp_path)]
    assert firsts[0] <= oldest + 1 and all(f > 1 for f in firsts)  # the first segments are gone
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot == taken[-1] and report.replayed == 1
    assert canonical(restored) == canonical(coordinator)
    await journal_of(store).close()


async def test_a_snapshot_with_nothing_changed_since_the_last_is_not_written_again(tmp_path: Path) -> None:
    """An idle server's periodic snapshots, and its final one, would rewrite the same state: the
    last snapshot stands (unless its file is gone), and the next change makes a new one."""
    coordinator, store = await open_store(tmp_path, fsync="batch")
    check(coordinator, order_body("s1", "u1"))
    await commit(coordinator)
    first = await store.snapshot(coordinator)
    written = first.stat().st_mtime_ns
    assert await store.snapshot(coordinator) == first
    assert store.stats.taken == 1 and first.stat().st_mtime_ns == written
    check(coordinator, order_body("s2", "u2", device="d2"))
    await commit(coordinator)
    second = await store.snapshot(coordinator)
    assert second != first and store.stats.taken == 2
    second.unlink()  # an operator removed it: it is written again (from the first and the journal)
    assert await store.snapshot(coordinator) == second and second.exists() and store.stats.taken == 3
    assert await store.close(coordinator) == second and store.stats.taken == 3  # the final snapshot too
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot == second and canonical(restored) == canonical(coordinator)


async def test_http_snapshot_request_says_when_nothing_changed(tmp_path: Path) -> None:
    gw = await start(tmp_path)
    await gw.check(order_body("h1", "u1"))
    taken = await gw.admin("POST", "snapshot")
    assert taken["unchanged"] is False and taken["bytes"] == Path(taken["path"]).stat().st_size
    again = await gw.admin("POST", "snapshot")
    assert again == {**taken, "seconds": 0.0, "unchanged": True}
    await gw.check(order_body("h2", "u2", device="d2"))
    fresh = await gw.admin("POST", "snapshot")
    assert fresh["unchanged"] is False and fresh["path"] != taken["path"]
    await gw.client.close()


async def test_big_risk_windows_round_trip(tmp_path: Path) -> None:
    """Windows past their small form (a sorted map of many seconds) restore exactly and keep
    sliding: buckets leave at the same moments in the original and the restored state."""
    coordinator, store = await open_store(tmp_path)
    coordinator.change(("put", "rules", "R3", {"rule_id": "R3", "subject": "ip", "window": "1h", "max_quantity": 1000}))
    for n in range(80):
        body = order_body(f"w{n}", f"wu{n}", sku="S2", unit_price=500, device=f"wd{n}")
        assert check(coordinator, body).decision is Decision.ALLOW
        coordinator.confirm(f"w{n}")  # confirmed: it stays in the windows until they slide past it
        advance(coordinator, 30)
    await commit(coordinator)
    window = coordinator.ledger.subject("ip\x1f10.0.0.1").windows
    assert any(isinstance(w.buckets, dict) and len(w.buckets) == 80 for w in window.values())
    await store.snapshot(coordinator)
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot is not None and report.replayed == 0
    assert canonical(restored) == canonical(coordinator)
    for step in (600, 1200, 1800, 3600):
        for c in (coordinator, restored):
            advance(c, step)
            c.expire_due(c.clock.now())
        assert canonical(restored) == canonical(coordinator)
    await journal_of(store).close()


# -- through the HTTP app ------------------------------------------------------------------


async def start(
    directory: Path,
    seed: dict[str, Any] | None = None,
    reload_config: bool = False,
    clock: ManualClock | None = None,
    fsync: journal.FsyncMode = "batch",
) -> Gateway:
    """A gateway serving over HTTP on `directory` (restored by the app's cleanup context)."""
    clock = clock or ManualClock(T0)
    coordinator = Coordinator(build_config(seed or durable_config()), clock)
    app = make_app(
        coordinator,
        admin_token=TOKEN,
        store=Store(directory, fsync=fsync),
        seed=build_config(seed or durable_config()),
        reload_config=reload_config,
        snapshot_every=0,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return Gateway(client, app, clock)


async def serve_scenario(gw: Gateway) -> None:
    """Checkout and admin traffic, with a snapshot taken through the API half way."""
    await gw.check(order_body("h1", "u1", discount=100))
    await gw.check(order_body("h2", "u2", quantity=2, device="d2"))
    await gw.confirm("h1")
    await gw.cancel("h2")
    await gw.claim({"user_id": "u1", "coupon_id": "C1"})
    await gw.admin("PUT", "skus/S9", {"category": "tv", "cost_price": 50, "limits": {"user": 2}})
    await gw.admin("PUT", "lists/blacklist/address/" + "Zhejiang%2FHangzhou%2FBinjiang")
    await gw.admin("PUT", "lists/whitelist/user/vip-7")
    await gw.admin("PATCH", "settings", {"risk_multiplier": "2", "hold_ttl": "10m"})
    taken = await gw.admin("POST", "snapshot")
    assert Path(taken["path"]).exists()
    await gw.admin("PUT", "activities/A2", {"budget": 5000, "user_limit": 1})
    await gw.admin("DELETE", "coupons/C1")
    await gw.advance(30)
    await gw.check(order_body("h3", "u3", quantity=3, discount=2500, device="d3"))
    await gw.confirm("h3")  # u3 auto-blacklisted
    await gw.check(order_body("h4", "u4", sku="S9", unit_price=80, device="d4"))
    await gw.advance(11 * 60)  # h4's 10-minute hold runs out (the clock endpoint expires it)
    await gw.check(order_body("h5", "u5", device="d5"))


async def observe(gw: Gateway) -> dict[str, Any]:
    """What an operator sees through the API."""
    return {
        "config": await gw.admin("GET", "config"),
        "lists": await gw.admin("GET", "lists"),
        "orders": {o: await gw.get(o) for o in ("h1", "h2", "h3", "h4", "h5")},
        "users": {u: await gw.user(u) for u in ("u1", "u2", "u3", "u4", "u5")},
        "activity": await gw.activity("A1"),
        "now": (await gw.call("GET", "/healthz"))["now"],
    }


async def test_http_restart_restores_orders_counters_and_admin_changes(tmp_path: Path) -> None:
    gw = await start(tmp_path)
    await serve_scenario(gw)
    before, state = await observe(gw), canonical(gw.coordinator)
    assert before["users"]["u3"]["auto"] is True
    assert before["orders"]["h4"]["state"] == "expired"
    assert before["config"]["settings"]["risk_multiplier"] == "2"
    await gw.client.close()  # the final snapshot
    assert snapshot_files.snapshots(tmp_path)[0][1].exists()
    # a restart with another --config: the restored configuration stands
    again = await start(tmp_path, seed=durable_config(coupons=[]))
    assert await observe(again) == before
    assert canonical(again.coordinator) == state
    # and it goes on counting from there: u1 holds 1 of S1 (limit 3) already
    res = await again.check(order_body("h6", "u1", quantity=3))
    assert res["decision"] == "deny" and res["reasons"][0]["code"] == "SKU_LIMIT"
    await again.client.close()


async def test_http_kill_without_final_snapshot_recovers_everything(tmp_path: Path) -> None:
    """kill -9 after the snapshot: the directory as it is while serving (no final snapshot) holds
    every acknowledged decision."""
    gw = await start(tmp_path)
    await serve_scenario(gw)
    before, state = await observe(gw), canonical(gw.coordinator)
    crashed = tmp_path.parent / (tmp_path.name + "-crashed")
    shutil.copytree(tmp_path, crashed)  # every answer above was sent: all of it is durable now
    await gw.client.close()
    again = await start(crashed)
    assert await observe(again) == before
    assert canonical(again.coordinator) == state
    await again.client.close()


# -- damage -------------------------------------------------------------------------------------


async def test_torn_last_record_is_dropped_reported_and_cut(tmp_path: Path) -> None:
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    expected = canonical(coordinator)
    assert check(coordinator, order_body("torn", "u9", device="d9")).decision is Decision.ALLOW
    await commit(coordinator)
    await journal_of(store).close()
    (_, segment), = journal_files.segments(tmp_path)
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 5)  # the last record loses its end: a crash in the middle of its write
    restored, report = await restore_dir(tmp_path)
    assert report.torn is not None and segment.name in report.torn
    assert "torn" not in restored.orders
    assert canonical(restored) == expected
    assert report.replayed == len(journal_records(tmp_path))
    # the torn bytes were cut off, so records written after the restart follow good ones
    for_next = await open_store(tmp_path)
    assert check(for_next[0], order_body("after", "u8", device="d8")).decision is Decision.ALLOW
    await commit(for_next[0])
    after = canonical(for_next[0])
    await journal_of(for_next[1]).close()
    again, report2 = await restore_dir(tmp_path)
    assert report2.torn is None and not report2.damaged
    assert canonical(again) == after


async def test_torn_segment_header_is_dropped(tmp_path: Path) -> None:
    """A crash right after a rotation can leave a new segment shorter than its magic."""
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    await store.snapshot(coordinator)
    expected = canonical(coordinator)
    await journal_of(store).close()
    newest = journal_files.segments(tmp_path)[-1][1]
    newest.write_bytes(journal_files.MAGIC[:3])
    restored, report = await restore_dir(tmp_path)
    assert report.torn is not None and not report.damaged
    assert canonical(restored) == expected


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


async def two_snapshots(directory: Path) -> tuple[Coordinator, Store, Path, Path, int]:
    """first_half, snapshot A, second_half, snapshot B, one more order: (.., A, B, lsn of A)."""
    coordinator, store = await open_store(directory)
    await first_half(coordinator)
    older = await store.snapshot(coordinator)
    older_lsn = journal_of(store).lsn
    await second_half(coordinator)
    newer = await store.snapshot(coordinator)
    assert check(coordinator, order_body("last", "u6", device="d6")).decision is Decision.ALLOW
    await commit(coordinator)
    return coordinator, store, older, newer, older_lsn


async def test_corrupt_newest_snapshot_falls_back_to_the_previous_one_and_its_journal(tmp_path: Path) -> None:
    coordinator, store, older, newer, older_lsn = await two_snapshots(tmp_path)
    await journal_of(store).close()
    flip(newer, newer.stat().st_size - 10)  # inside the body: the checksum catches it
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot == older
    assert len(report.damaged) == 1 and newer.name in report.damaged[0]
    assert report.replayed == journal_of(store).lsn - older_lsn
    assert report.torn is None
    assert_populated(restored)
    assert canonical(restored) == canonical(coordinator)


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "bad-magic", "bad-version", "huge-length", "trailing-garbage", "header-lsn", "reserved"],
)
async def test_every_kind_of_snapshot_damage_is_reported(tmp_path: Path, damage: str) -> None:
    """Each damage to the newest snapshot is detected and reported, and the state comes from the
    previous snapshot and the journal since then. The header fields (lsn, reserved) are part of
    the file too: a snapshot whose header disagrees with its name is not the file that was written."""
    coordinator, store, older, newer, _ = await two_snapshots(tmp_path)
    await journal_of(store).close()
    data = bytearray(newer.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    elif damage == "empty":
        del data[:]
    elif damage == "bad-magic":
        data[0:8] = b"NOTSNAP!"
    elif damage == "bad-version":
        data[8:10] = (2).to_bytes(2, "little")
    elif damage == "huge-length":
        data[20:28] = (2**63).to_bytes(8, "little")
    elif damage == "trailing-garbage":
        data += b"\x00garbage"
    elif damage == "header-lsn":
        data[12] ^= 0x01  # the lsn in the header no longer matches the file's name
    else:
        data[10] ^= 0x01  # the reserved field is always written as zero
    newer.write_bytes(bytes(data))
    restored, report = await restore_dir(tmp_path)
    assert len(report.damaged) == 1 and newer.name in report.damaged[0], report
    assert report.snapshot == older
    assert canonical(restored) == canonical(coordinator)


async def test_every_snapshot_corrupt_and_journal_pruned_refuses_to_start(tmp_path: Path) -> None:
    coordinator, store, older, newer, _ = await two_snapshots(tmp_path)
    await journal_of(store).close()
    assert journal_files.segments(tmp_path)[0][0] > 1  # the journal no longer reaches back to lsn 1
    for path in (older, newer):
        flip(path, path.stat().st_size - 1)
    with pytest.raises(RestoreError) as info:
        await restore_dir(tmp_path)
    message = str(info.value)
    assert "refusing to start" in message
    assert str(tmp_path) in message
    # nothing was seeded or written over the damaged directory
    assert older.exists() and newer.exists()
    assert not journal_files.segment_path(tmp_path, 1).exists()


async def test_every_snapshot_corrupt_and_no_journal_after_them_refuses_to_start(tmp_path: Path) -> None:
    """The snapshot was taken at shutdown after a rotation: the journal holds no record at all."""
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    path = await store.snapshot(coordinator)
    await journal_of(store).close()
    flip(path, 40)  # inside the header's digest
    with pytest.raises(RestoreError) as info:
        await restore_dir(tmp_path)
    assert path.name in str(info.value) and "refusing to start on empty state" in str(info.value)


async def test_http_server_refuses_to_start_on_unrecoverable_directory(tmp_path: Path) -> None:
    coordinator, store, older, newer, _ = await two_snapshots(tmp_path)
    await journal_of(store).close()
    for path in (older, newer):
        path.write_bytes(b"")
    app = make_app(new_coordinator(), admin_token=TOKEN, store=Store(tmp_path), snapshot_every=0)
    server = TestServer(app)
    with pytest.raises(RestoreError, match="refusing to start"):
        await server.start_server()
    await server.close()


async def test_damage_in_the_middle_of_the_journal_refuses_to_start(tmp_path: Path) -> None:
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    await journal_of(store).close()
    (_, segment), = journal_files.segments(tmp_path)
    data = segment.read_bytes()
    first_payload = len(journal_files.MAGIC) + journal_files.FRAME.size
    flip(segment, first_payload + 2)  # the first record's payload: its checksum no longer matches
    with pytest.raises(RestoreError, match="refusing to start"):
        await restore_dir(tmp_path)
    assert segment.read_bytes()[len(journal_files.MAGIC) + 64 :] == data[len(journal_files.MAGIC) + 64 :]


# -- holds that ran out while the server was down -----------------------------------------


class WallClock:
    """A wall clock this test sets: like SystemClock, not a ManualClock, so restore does not move
    it to the restored state's time."""

    def __init__(self, now: int) -> None:
        self.t = now

    def now(self) -> int:
        return self.t


async def test_holds_whose_expiry_passed_while_down_expire_at_restore(tmp_path: Path) -> None:
    clock = WallClock(T0)
    coordinator, store = await open_store(tmp_path, clock)
    assert check(coordinator, order_body("early", "u1", quantity=2, discount=100)).decision is Decision.ALLOW
    clock.t = T0 + 600
    assert check(coordinator, order_body("late", "u2", device="d2", discount=50)).decision is Decision.ALLOW
    await commit(coordinator)
    await journal_of(store).close()
    # down from T0+600 to T0+TTL+1: "early" (expires T0+900) ran out, "late" (T0+1500) did not
    restored, _ = await restore_dir(tmp_path, WallClock(T0 + TTL + 1))
    assert restored.orders["early"].state is OrderState.EXPIRED
    assert restored.orders["late"].state is OrderState.HELD
    assert restored.ledger.activities["A1"].held == 50
    u1 = restored.ledger.find("user\x1fu1")
    assert u1 is None or not u1.counts
    # the expiry was journaled: a later restart agrees, even at an earlier wall time
    kinds = [(r[0], r[1]) for r in journal_records(tmp_path)]
    assert kinds.count(("expire", "early")) == 1
    again, _ = await restore_dir(tmp_path, WallClock(T0 + TTL + 1))
    assert again.orders["early"].state is OrderState.EXPIRED
    assert canonical(again) == canonical(restored)
    # and confirming it now is 410, as for any expired hold
    with pytest.raises(Gone):
        again.confirm("early")


async def test_holds_expire_across_a_restart_of_a_snapshot_too(tmp_path: Path) -> None:
    clock = WallClock(T0)
    coordinator, store = await open_store(tmp_path, clock)
    assert check(coordinator, order_body("held", "u1", discount=100)).decision is Decision.ALLOW
    await commit(coordinator)
    store.snapshot_in_process(coordinator)
    await journal_of(store).close()
    restored, report = await restore_dir(tmp_path, WallClock(T0 + TTL))
    assert report.snapshot is not None and report.replayed == 0
    assert restored.orders["held"].state is OrderState.EXPIRED  # a hold ends when now >= expires_at
    assert restored.ledger.activities["A1"].held == 0


async def test_manual_clock_continues_from_the_restored_time(tmp_path: Path) -> None:
    """With a manual clock (tests, replays) time does not pass while down: the clock resumes at the
    restored time, and a hold runs out once the clock is moved past it."""
    coordinator, store = await open_store(tmp_path)
    assert check(coordinator, order_body("h", "u1")).decision is Decision.ALLOW
    advance(coordinator, 100)
    await journal_of(store).close()
    restored, _ = await restore_dir(tmp_path, ManualClock(T0 + 10 * HOUR))
    assert restored.clock.now() == T0 + 100  # the last journaled time: the clock move
    assert state_of(restored, "h") is OrderState.HELD
    advance(restored, TTL)
    assert restored.expire_due(restored.clock.now()) == 1
    assert state_of(restored, "h") is OrderState.EXPIRED


# -- --config and --reload-config -------------------------------------------------------------


async def test_config_seeds_only_an_empty_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seeded, report = await restore_dir(tmp_path, seed=build_config(durable_config()))
    assert report.seeded and report.snapshot is None and report.replayed == 0
    assert seeded.config.to_doc(secrets=True) == build_config(durable_config()).to_doc(secrets=True)
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    coordinator.change(("put", "spus", "P2", {"spu_id": "P2", "limits": {"user": 9}}))
    await commit(coordinator)
    await journal_of(store).close()
    other = build_config(durable_config(spus=[], coupons=[]))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flashguard"):
        restored, report = await restore_dir(tmp_path, seed=other)
    assert not report.seeded
    assert any("not applied" in r.getMessage() for r in caplog.records)  # the server says so
    assert "P2" in restored.config.spus and "C1" in restored.config.coupons
    assert canonical(restored) == canonical(coordinator)


async def test_reload_config_applies_the_file_and_keeps_counters_and_holds(tmp_path: Path) -> None:
    coordinator, store = await open_store(tmp_path)
    await first_half(coordinator)
    assert check(coordinator, order_body("open", "u7", device="d7", discount=10)).decision is Decision.ALLOW
    coordinator.change(("put", "spus", "P2", {"spu_id": "P2", "limits": {"user": 9}}))
    await commit(coordinator)
    before = canonical(coordinator)
    await journal_of(store).close()
    file_doc = durable_config(spus=[], coupons=[], settings={"hold_ttl": "5m", "locale": "en"})
    restored, report = await restore_dir(tmp_path, seed=build_config(file_doc), reload_config=True)
    assert not report.seeded
    assert restored.config.to_doc() == build_config(file_doc).to_doc()
    after = canonical(restored)
    assert after["config"] != before["config"]
    for part in ("subjects", "activities", "skus", "orders", "now"):
        assert after[part] == before[part], part
    assert restored.orders["open"].state is OrderState.HELD
    # the reload is itself journaled: the next plain restart keeps the file's configuration
    again, _ = await restore_dir(tmp_path, seed=build_config(durable_config()))
    assert canonical(again) == after


async def test_http_reload_config_over_restored_admin_changes(tmp_path: Path) -> None:
    gw = await start(tmp_path)
    await gw.check(order_body("r1", "u1", quantity=2))
    await gw.admin("PUT", "skus/S9", {"category": "tv"})
    user_before = await gw.user("u1")
    await gw.client.close()
    file_doc = durable_config(settings={"hold_ttl": "30m", "locale": "zh"})
    again = await start(tmp_path, seed=file_doc, reload_config=True)
    config = await again.admin("GET", "config")
    assert [s["sku_id"] for s in config["skus"]] == ["S1", "S2"]  # the file's, not the admin change
    assert config["settings"]["hold_ttl"] == "30m"
    assert await again.user("u1") == user_before
    assert (await again.get("r1"))["state"] == "held"
    await again.client.close()


HOLDER = "import sys; from pathlib import Path; from snapshots.store import Store; Store(Path(sys.argv[1])).claim(); print('held', flush=True); sys.stdin.read()"


async def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    # Two servers on one directory would interleave journal records that no restart could replay.
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            coordinator = new_coordinator()
            with pytest.raises(RestoreError, match=f"another process \\(pid {holder.pid}\\) is serving from"):
                Store(tmp_path).restore(coordinator, coordinator.config)
            assert [p.name for p in tmp_path.iterdir()] == ["LOCK"]  # nothing written: no journal, no seed
        finally:
            holder.kill()  # as kill -9: the kernel drops its lock, nothing is left to clear by hand
    coordinator = new_coordinator()
    store = Store(tmp_path)
    assert store.restore(coordinator, coordinator.config).seeded
    await store.close(coordinator)
