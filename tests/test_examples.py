"""examples/: every file passes `flashguard check-config` cleanly (no error, no warning), and the
Double-11 example answers as its comments say, on the real HTTP app (tests/conftest.py's gateway,
a manual clock set inside the sale)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from domain.document import parse_document
from tests.conftest import MakeGateway, discount, item, order

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOUBLE11 = EXAMPLES / "double11-phone-launch.toml"


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.is_file())


def test_there_are_examples() -> None:
    assert DOUBLE11 in example_files()


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_check_config_passes_without_warnings(path: Path) -> None:
    # The command an operator runs; warnings (`FILE: warning: ...` on stderr, and "(N warning(s))"
    # after the counts) would be a reference that does not resolve.
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert re.fullmatch(
        rf"{re.escape(str(path))}: ok \(\d+ skus, \d+ spus, \d+ activities, \d+ coupons, \d+ rules\)\n", done.stdout
    ), done.stdout


def double11() -> dict[str, Any]:
    doc: dict[str, Any] = parse_document(DOUBLE11.read_text(encoding="utf-8"), ".toml")
    return doc


def receiver(town: str, district: str = "西湖区", city: str = "杭州市", province: str = "浙江省") -> dict[str, Any]:
    return {"province": province, "city": city, "district": district, "town": town, "detail": "1号"}


def launch_discounts() -> list[dict[str, Any]]:
    """The 256 GB at 00:05: 500 off (D11-LAUNCH), the 300 coupon of the same activity, the first
    hour's 200 (D11-EARLY)."""
    return [
        {**discount(50000, "D11-LAUNCH"), "kind": "activity"},
        {**discount(30000, "D11-LAUNCH", "D11-C300"), "kind": "coupon"},
        {**discount(20000, "D11-EARLY"), "kind": "activity"},
    ]


async def test_double11_answers_as_its_comments_say(gw_factory: MakeGateway) -> None:
    doc = double11()
    launch = next(a for a in doc["activities"] if a["activity_id"] == "D11-LAUNCH")
    now = launch["starts_at"] + 300  # 2026-11-11 00:05 Beijing time
    gw = await gw_factory(doc, start=now)
    buyer = {"user": "u-10001", "device": "dev-a1", "ip": "10.8.0.1", "name": "张三", "phone": "13900001111"}

    # Allowed: every planned discount of the first hour, 4,999 - 1,000 = 3,999 >= the cost of 3,800.
    first = await gw.check(order(item("X20-BLK-256", 1, 499900, *launch_discounts()), address=receiver("灵隐街道"), **buyer))
    assert first["decision"] == "allow", first
    assert (first["reasons"], first["shadow"], first["warnings"]) == ([], [], [])
    assert first["payable"] == 399900
    assert first["hold"] == {"expires_at": now + 600}  # hold_ttl = "10m"

    # Refused: a second 256 GB black at the launch price (sku_limits: one of each SKU), and the
    # limit is stated, in Chinese (disclose_limits, locale = "zh").
    again = item("X20-BLK-256", 1, 499900, {**discount(50000, "D11-LAUNCH"), "kind": "activity"})
    second = await gw.check(order(again, address=receiver("灵隐街道"), **buyer))
    assert second["decision"] == "deny", second
    assert [(r["code"], r["activity_id"], r["sku_id"], r["limit"], r["used"]) for r in second["reasons"]] == [
        ("ACTIVITY_SKU_LIMIT", "D11-LAUNCH", "X20-BLK-256", 1, 1)
    ]
    assert second["message"] == "当前商品限购数量为1，您已超过限购数量"
    assert second["hold"] is None

    # The listed county refuses every town under it with the vague message, except the
    # whitelisted town of the official store.
    county = {"province": "甲省", "city": "乙市", "district": "丙县"}
    listed = await gw.check(order(item("X20-WHT-256", 1, 499900), user="u-20002", address=receiver("丁镇", **county)))
    assert listed["decision"] == "deny", listed
    assert [(r["code"], r["subject"], r["value"]) for r in listed["reasons"]] == [("BLACKLISTED", "address", "甲省/乙市/丙县")]
    assert listed["message"] == "抢购太火爆啦，请稍后再试"
    store = await gw.check(order(item("X20-WHT-256", 1, 499900), user="u-20003", address=receiver("戊镇", **county)))
    assert store["decision"] == "allow", store

    # The first order's discounts are held against both budgets.
    assert (await gw.activity("D11-LAUNCH"))["held"] == 80000
    assert (await gw.activity("D11-EARLY"))["held"] == 20000
