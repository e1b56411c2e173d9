"""The decision log and the decision figures across a restart (issue 16, points 4 and 5).

A `kill -9` loses the log lines of the last second (the log is flushed once a second); the journal
still holds their records, and the next start writes the lines for them. The console's and
/metrics' decision figures are rebuilt at start from the log, so a restart keeps the sale's.
The first two tests drive the real server (`flashguard serve`) and kill it within the flush second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.crash import TOKEN, Server, start_server
from gateway import decisions
from domain.document import build_config
from gateway.keys import DECISIONS
from gateway.replay import replay
from gateway.stats import Stats
from tests.conftest import base_config, item, order
from tests.test_snapshot_restore import order_body, start

DONGGUAN = {"province": "Guangdong", "city": "Dongguan", "district": "Humen", "town": "Town", "detail": "2 Rd"}
CONFIG = base_config(
    settings={"hold_ttl": "2s", "locale": "en"},
    skus=[{"sku_id": "S1", "spu_id": "P1", "category": "phone", "cost_price": 800, "original_price": 1000, "limits": {"user": 1}}],
    coupons=[{"coupon_id": "C1", "activity_id": "A1", "per_user_limit": 2}],
    rules=[{"rule_id": "R9", "subject": "device", "window": "1h", "max_quantity": 0, "mode": "shadow"}],
    lists={"blacklist": {"user": ["u-bad"], "address": ["Guangdong/Dongguan"]}},
)


class Served:
    """`flashguard serve` on one data directory, restarted at will, and calls to it."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.config = tmp / "config.json"
        self.config.write_text(json.dumps(CONFIG))
        self.logs = tmp
        self.starts = 0
        self.server: Server | None = None
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})

    async def start(self) -> None:
        self.starts += 1
        self.server = await start_server(self.data, self.config, self.logs / f"server-{self.starts}.log", "batch", 60.0)

    def kill(self) -> None:
        assert self.server is not None
        self.server.kill()

    def stop(self) -> None:
        assert self.server is not None
        assert self.server.stop() == 0, self.server.log_tail()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.server is not None
        async with self.session.request(method, self.server.base + path, json=body) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            return await resp.json()

    async def metrics(self) -> dict[str, float]:
        """The decision counters of /metrics (and the latency count, which restarts)."""
        assert self.server is not None
        async with self.session.get(self.server.base + "/metrics") as resp:
            text = await resp.text()
        wanted = ("flashguard_checks_total", "flashguard_reasons_total", "flashguard_shadow_hits_total", "flashguard_check_seconds_count")
        return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()) if name.startswith(wanted)}

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for path in sorted((self.data / "decisions").glob("decisions-*.jsonl")) for line in path.read_text().splitlines()]

    async def flushed(self, order_id: str) -> None:
        """Wait for the line of `order_id` to reach the file: a flush just happened, the next is a second away."""
        deadline = time.monotonic() + 5
        while not any(line.get("order_id") == order_id for line in self.lines()):
            assert time.monotonic() < deadline, "the decision log was not flushed"
            await asyncio.sleep(0.01)


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    s = Served(tmp_path)
    yield s
    if s.server is not None:
        s.server.kill_group()
    await s.session.close()


def _what(line: dict[str, Any]) -> tuple[str, str]:
    return line["kind"], line.get("order_id") or line["user_id"]


async def test_a_kill_within_the_flush_second_loses_no_log_line(served: Served) -> None:
    await served.start()
    a, d, f, g = (order(item("S1"), user=u, device="d" + u) for u in ("u1", "u2", "u1", "u4"))
    assert (await served.call("POST", "/v1/orders/check", a))["decision"] == "allow"
    assert (await served.call("POST", "/v1/orders/check", d))["decision"] == "allow"
    assert (await served.call("POST", "/v1/orders/check", f))["decision"] == "deny"
    held_until = time.time() + 2  # a's hold (hold_ttl 2s)
    await served.flushed(f["order_id"])
    await served.call("POST", f"/v1/orders/{a['order_id']}/confirm")
    await served.call("POST", f"/v1/orders/{d['order_id']}/cancel")
    assert (await served.call("POST", "/v1/orders/check", g))["decision"] == "allow"
    assert (await served.call("POST", "/v1/coupons/claim-check", {"user_id": "u5", "coupon_id": "C1"}))["decision"] == "allow"
    await served.call("POST", f"/v1/orders/{g['order_id']}/confirm")
    served.kill()
    burst = [("confirm", a["order_id"]), ("cancel", d["order_id"]), ("check", g["order_id"]), ("claim", "u5"), ("confirm", g["order_id"])]
    assert not set(burst) & {_what(line) for line in served.lines()}, "killed after the flush: the test proves nothing"

    await served.start()
    lines = served.lines()
    assert Counter(_what(line) for line in lines) == Counter(
        [("check", a["order_id"]), ("check", d["order_id"]), ("check", f["order_id"]), *burst]
    )  # every line once
    assert [_what(line) for line in lines if line.get("recovered")] == burst
    assert all(isinstance(line["lsn"], int) for line in lines)
    recovered_check = next(line for line in lines if _what(line) == ("check", g["order_id"]))
    assert recovered_check["decision"] == "allow" and recovered_check["shadow"][0]["rule_id"] == "R9"
    assert "request" not in recovered_check  # the journal holds the answer, not the request

    await asyncio.sleep(max(held_until + 1.1 - time.time(), 0))  # past a's hold: only its confirm keeps u1's quota used
    b = order(item("S1"), user="u1")
    assert (await served.call("POST", "/v1/orders/check", b))["decision"] == "deny"
    served.stop()
    report = replay(build_config(CONFIG), sorted((served.data / "decisions").glob("decisions-*.jsonl")))
    assert report.checks == 4  # a, d, f, b: the recovered g has no request to re-run
    assert not report.changed  # b is refused again: replay saw a's confirm


async def test_figures_after_a_restart_equal_those_before(served: Served) -> None:
    await served.start()
    bodies = [
        order(item("S1"), user="u1", device="d1"),  # allow, a shadow hit
        order(item("S1"), user="u1"),  # SKU_LIMIT
        order(item("S1"), user="u-bad", address=DONGGUAN),  # user and address blacklisted
        order(item("S1"), user="u3", address=DONGGUAN),
    ]
    for body in bodies:
        await served.call("POST", "/v1/orders/check", body)
    await served.flushed(bodies[-1]["order_id"])
    await served.call("POST", "/v1/orders/check", order(item("S1"), user="u-bad"))  # lines the kill loses
    await served.call("POST", "/v1/orders/check", order(item("S1"), user="u6", device="d6"))

    async def figures() -> tuple[dict[str, Any], dict[str, float]]:
        view = await served.call("GET", "/v1/admin/overview")
        keys = ("decisions", "reasons", "shadow_hits", "top_refused_users", "top_refused_addresses")
        return {k: view[k] for k in keys}, {k: v for k, v in (await served.metrics()).items() if "seconds" not in k}

    before = await figures()
    served.kill()
    assert before[0]["decisions"] == {"allow": 2, "deny": 4}
    assert before[0]["top_refused_users"][0] == {"user_id": "u-bad", "refused": 2}
    assert before[0]["top_refused_addresses"] == [{"address": "guangdong/dongguan/humen/town", "refused": 2}]
    assert before[1]['flashguard_checks_total{decision="deny"}'] == 4

    await served.start()
    assert await figures() == before
    assert (await served.metrics())["flashguard_check_seconds_count"] == 0  # the latency histogram restarts
    served.stop()
    await served.start()  # a clean restart: from the checkpoint of the file the last start began
    assert await figures() == before
    await served.call("POST", "/v1/orders/check", order(item("S1"), user="u7"))
    assert (await figures())[0]["decisions"] == {"allow": 3, "deny": 4}


# -- in-process: what the start reads, and what a recovered line holds --------------------------


async def test_a_start_reads_only_the_lines_after_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "ROTATE_BYTES", 4000)  # a few lines a file
    gw = await start(tmp_path)
    for n in range(30):
        await gw.check(order_body(f"o{n}", f"u{n % 4}", device="d1"))
        gw.client.app[DECISIONS].flush()
    before = await gw.admin("GET", "overview")
    await gw.client.close()
    files = sorted((tmp_path / "decisions").glob("decisions-*.jsonl"))
    assert len(files) > 5
    read: list[bytes] = []
    count = decisions._count

    def counting(stats: Stats, line: bytes) -> int | None:
        read.append(line)
        return count(stats, line)

    monkeypatch.setattr(decisions, "_count", counting)
    again = await start(tmp_path)
    assert (await again.admin("GET", "overview"))["decisions"] == before["decisions"]
    assert sum(before["decisions"].values()) == 30
    checkpoint = json.loads((tmp_path / "decisions" / "figures.json").read_text())
    assert checkpoint["file"] == files[-1].name
    assert 0 < len(read) < 4  # the lines of the last file after its checkpoint, not the 30
    await again.client.close()


async def test_recovered_lines_after_an_admin_change_name_the_version(tmp_path: Path) -> None:
    gw = await start(tmp_path)
    await gw.check(order_body("h1", "u1"))
    gw.client.app[DECISIONS].flush()
    await gw.check(order_body("h2", "u2"))  # before the change: its version is not known at restart
    await gw.admin("PATCH", "settings", {"risk_multiplier": "2"})
    await gw.check(order_body("h3", "u3"))
    await gw.claim({"user_id": "u3", "coupon_id": "C1"})
    await gw.cancel("h3")
    crashed = tmp_path.parent / (tmp_path.name + "-crashed")
    shutil.copytree(tmp_path, crashed)  # what kill -9 leaves: the lines after the flush are in memory only
    version = gw.coordinator.config.version
    await gw.client.close()
    again = await start(crashed)
    lines = [json.loads(line) for path in sorted((crashed / "decisions").glob("decisions-*.jsonl")) for line in path.read_text().splitlines()]
    recovered = [(line["kind"], line.get("order_id"), line.get("config_version")) for line in lines if line.get("recovered")]
    assert recovered == [("check", "h2", None), ("check", "h3", version), ("claim", None, version), ("cancel", "h3", None)]
    assert [line["lsn"] for line in lines] == sorted(line["lsn"] for line in lines)
    found = await again.admin("GET", "decisions?user_id=u3")
    assert [d["kind"] for d in found["decisions"]] == ["cancel", "claim", "check"]
    await again.client.close()


async def test_a_log_an_earlier_version_wrote_starts_the_figures_from_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No checkpoint and no `lsn`: which journal records the log lacks cannot be told, so none is
    written again, and the figures start from zero (as they did at every start before) rather
    than read the whole log (about 10 s for a million lines)."""
    gw = await start(tmp_path)
    await gw.check(order_body("h1", "u1"))
    await gw.check(order_body("h2", "u-bad"))
    await gw.client.close()
    log_dir = tmp_path / "decisions"
    (log_dir / "figures.json").unlink()
    for path in log_dir.glob("decisions-*.jsonl"):
        old = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "lsn"}) + "\n" for line in old))
    with caplog.at_level(logging.WARNING, "flashguard.decisions"):
        again = await start(tmp_path)
    assert "no checkpoint" in caplog.text
    assert (await again.admin("GET", "overview"))["decisions"] == {}
    await again.check(order_body("h3", "u-bad"))
    await again.client.close()
    assert not any(json.loads(line).get("recovered") for p in log_dir.glob("*.jsonl") for line in p.read_text().splitlines())
    third = await start(tmp_path)  # this version's checkpoint is there now
    view = await third.admin("GET", "overview")
    assert view["decisions"] == {"deny": 1} and view["top_refused_users"] == [{"user_id": "u-bad", "refused": 1}]
    await third.client.close()


async def test_a_snapshot_writes_the_log_out_first(tmp_path: Path) -> None:
    """The snapshots that later prune a journal segment must not take records whose lines are
    still only in the log's buffer: the journal's rotation flushes the log first."""
    gw = await start(tmp_path)
    await gw.check(order_body("h1", "u1"))
    assert not list((tmp_path / "decisions").glob("decisions-*.jsonl"))  # buffered (flushed once a second)
    await gw.admin("POST", "snapshot")
    lines = [json.loads(line) for path in (tmp_path / "decisions").glob("decisions-*.jsonl") for line in path.read_text().splitlines()]
    assert [line["order_id"] for line in lines] == ["h1"]
    await gw.client.close()
