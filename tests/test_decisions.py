"""The decision log (why was this buyer refused?) and replay of a rule change on logged traffic."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import make_app
from gateway.cli import main
from gateway.decisions import DecisionLog
from gateway.stats import Stats
from domain.schema import OrderView
from domain.types import Decision, OrderState
from domain.clock import ManualClock
from node.coordinator import Coordinator
from domain.document import build_config
from gateway.keys import DECISIONS
from gateway.replay import replay
from snapshots.store import Store
from tests.conftest import T0, TOKEN, Gateway, MakeGateway, base_config, item, order


def limited(user_limit: int) -> dict[str, Any]:
    return base_config(skus=[{"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "limits": {"user": user_limit}}])


async def test_support_finds_why_a_buyer_was_refused(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(1))
    first, second = order(user="u1"), order(user="u1")
    await gw.check(first)
    refused = await gw.check(second)
    assert refused["decision"] == "deny"
    found = await gw.admin("GET", "decisions?user_id=u1")
    assert found["count"] == 2
    newest = found["decisions"][0]
    assert newest["order_id"] == second["order_id"] and newest["decision"] == "deny"
    assert newest["reasons"][0]["code"] == "SKU_LIMIT" and newest["reasons"][0]["limit"] == 1
    assert newest["config_version"] == gw.coordinator.config.version
    assert newest["request"]["items"][0]["sku_id"] == "S1"
    by_code = await gw.admin("GET", "decisions?code=SKU_LIMIT")
    assert [d["order_id"] for d in by_code["decisions"]] == [second["order_id"]]
    by_order = await gw.admin("GET", f"decisions?order_id={first['order_id']}")
    assert by_order["decisions"][0]["decision"] == "allow"
    assert (await gw.admin("GET", "decisions?user_id=nobody"))["count"] == 0
    await gw.check(first)  # a checkout retry: answered again, logged once
    assert (await gw.admin("GET", "decisions?user_id=u1"))["count"] == 2


async def test_confirms_cancels_and_claims_are_logged(gw: Gateway) -> None:
    body = order(user="u2")
    await gw.check(body)
    await gw.confirm(body["order_id"])
    await gw.cancel(body["order_id"])
    await gw.claim({"user_id": "u2", "coupon_id": "C9"})
    kinds = [d["kind"] for d in (await gw.admin("GET", "decisions?user_id=u2"))["decisions"]]
    assert kinds == ["claim", "cancel", "confirm", "check"]


@pytest.mark.parametrize("query", ["since=yesterday", "limit=0", "limit=x", "limit=10001", "user=u1", "user_id=u1&sicne=1"])
async def test_a_bad_query_is_400_and_the_token_is_required(gw: Gateway, query: str) -> None:
    err = await gw.admin("GET", f"decisions?{query}", status=400)
    assert err["error"]["code"] == "invalid_query"
    resp = await gw.client.get("/v1/admin/decisions")
    assert resp.status == 401


async def test_the_log_is_written_to_rotating_files_in_the_data_directory(tmp_path: Path) -> None:
    config = build_config(limited(1))
    coordinator = Coordinator(config, ManualClock(T0))
    client: TestClient[Any, Any] = TestClient(
        TestServer(make_app(coordinator, admin_token=TOKEN, store=Store(tmp_path), seed=config, snapshot_every=0))
    )
    await client.start_server()
    try:
        for _ in range(3):
            assert (await client.post("/v1/orders/check", json=order(user="u3"))).status == 200
    finally:
        await client.close()  # the lifecycle flushes the log on the way out
    lines = [json.loads(line) for f in sorted((tmp_path / "decisions").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert [line["decision"] for line in lines] == ["allow", "deny", "deny"]
    assert all(line["now"] == T0 for line in lines)


def _confirmed(n: int) -> OrderView:
    return OrderView(order_id=f"o{n}", state=OrderState.CONFIRMED, decision=Decision.ALLOW, user_id="u1",
                     created_at=T0, updated_at=T0, expires_at=None, payable=None, stripped=[], reasons=[])  # fmt: skip


async def test_the_sweepers_flush_writes_on_a_thread_of_its_own_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second of a sale's lines is megabytes: the loop hands them to the log's writer thread and
    goes on answering. Hand-offs land in the order they were made, and one whose sweeper is
    cancelled (at shutdown) is still written."""
    writers: set[str] = set()
    writev = os.writev

    def recording(fd: int, buffers: list[bytes]) -> int:
        writers.add(threading.current_thread().name)
        return writev(fd, buffers)

    monkeypatch.setattr(os, "writev", recording)
    log = DecisionLog(tmp_path, Stats())
    flushes = []
    for n in range(2000):
        log.transition("confirm", _confirmed(n), T0)
        if n % 500 == 499:
            await asyncio.sleep(0)  # the tick's drain
            flushes.append(asyncio.ensure_future(log.flush_soon()))
    await asyncio.sleep(0)  # the last one is awaiting its write now
    flushes[-1].cancel()
    await asyncio.gather(*flushes, return_exceptions=True)
    log.close()
    lines = [json.loads(line) for f in sorted(tmp_path.glob("decisions-*.jsonl")) for line in f.read_text().splitlines()]
    assert [line["order_id"] for line in lines] == [f"o{n}" for n in range(2000)]
    assert writers and all(name.startswith("flashguard-decisions") for name in writers)


async def test_a_full_disk_costs_the_log_those_lines_and_the_next_write_goes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is an observer: a write that fails (the disk full) is logged and its lines are lost
    from the files (the journal still has their records); the sweeper's round goes on, and so does
    the next write."""
    log = DecisionLog(tmp_path, Stats())
    writev = os.writev

    def full(fd: int, buffers: list[bytes]) -> int:
        raise OSError(28, "No space left on device")

    log.transition("confirm", _confirmed(0), T0)
    await log.flush_soon()  # the file and its checkpoint
    monkeypatch.setattr(os, "writev", full)
    log.transition("confirm", _confirmed(1), T0)
    await log.flush_soon()
    assert "No space left on device" in caplog.text
    monkeypatch.setattr(os, "writev", writev)
    log.transition("confirm", _confirmed(2), T0)
    await log.flush_soon()
    log.close()
    lines = [json.loads(line) for f in sorted(tmp_path.glob("decisions-*.jsonl")) for line in f.read_text().splitlines()]
    assert [line["order_id"] for line in lines] == ["o0", "o2"]
    assert [e["order_id"] for e in log.search(None, None, None, None, 10)] == ["o2", "o1", "o0"]  # memory kept them all


async def test_a_search_skips_a_file_pruned_after_it_was_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old files are pruned by the writer thread while the loop may be searching."""
    log = DecisionLog(tmp_path, Stats())
    log.transition("confirm", _confirmed(0), T0)
    log.flush()
    listed = log.files()
    monkeypatch.setattr(log, "files", lambda: [tmp_path / "decisions-00000000-000000-000000000.jsonl", *listed])
    log.recent.clear()  # everything from the files
    assert [e["order_id"] for e in log.search(None, None, None, None, 10)] == ["o0"]
    log.close()


async def _log_traffic(gw: Gateway) -> None:
    """Five users buy two units each, one at a time; each first order is confirmed."""
    for u in range(5):
        for n in range(2):
            body = order(item("S1", 1), user=f"u{u}")
            res = await gw.check(body)
            if n == 0 and res["decision"] == "allow":
                await gw.confirm(body["order_id"])
            await gw.advance(10)


def _recent(gw: Gateway) -> list[dict[str, Any]]:
    app = gw.client.app
    assert app is not None
    return [json.loads(line) for line in app[DECISIONS].recent]


async def test_replay_reports_what_a_tighter_limit_would_refuse(gw_factory: MakeGateway, tmp_path: Path) -> None:
    gw = await gw_factory(limited(2))
    await _log_traffic(gw)
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in _recent(gw)) + "\n")
    report = replay(build_config(limited(1)), [log])
    assert report.checks == 10
    assert report.changed == {"allow->deny": 5}
    assert report.newly_refused_by == {"SKU_LIMIT:S1": 5}
    looser = replay(build_config(limited(2)), [log])
    assert looser.unchanged == 10 and not looser.changed


async def test_replay_reports_what_a_looser_limit_would_allow_through_the_cli(
    gw_factory: MakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await gw_factory(limited(1))
    await _log_traffic(gw)
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in _recent(gw)) + "\n")
    new = tmp_path / "new.json"
    new.write_text(json.dumps(limited(3)))
    assert main(["replay", "--json", "--config", str(new), str(log)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["changed"] == {"deny->allow": 5}
    assert summary["newly_allowed_was"] == {"SKU_LIMIT:S1": 5}

