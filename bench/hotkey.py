"""The hot key: every order of a sale on one activity, whose budget is one slot, one Redis core.

On a fresh 3+3 Redis Cluster (see `bench.cluster`), one in-process cluster coordinator runs
`--concurrency` checks at a time, every one with a discount from activity A1, until A1's budget
is spent (orders asking 70, 110 or 150 of it; the last ones sell the rest). Rows: A1 as one slot
(`buckets = 1`) and split over `--buckets` slots. For each row:

- checks/s end to end (bound here by the one gateway's CPU, which shares 2 cores with Redis);
- the hot slot's cost: Redis CPU-us per check on the busiest primary (from `INFO commandstats`,
  every Function call it ran, divided by the checks), and the ceiling it implies: the checks/s at
  which that primary's one core is full. With buckets the activity's calls spread over the
  primaries holding them, so the busiest one carries a share of every check's activity work;
- the audit: spent + held never above the budget, and at the end less than one order's worth of
  it unsold (the budget is sold out: what is left is below the smallest order).

    .venv/bin/python -m bench.hotkey                      # ~1 minute
    .venv/bin/python -m bench.hotkey --buckets 16 --budget 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from bench.cluster import redis_cli, start_cluster
from bench.flash_sale import HOST, Servers
from cluster.config_store import ConfigStore
from cluster.connection import connect
from cluster.coordinator import ClusterCoordinator
from domain.clock import SystemClock
from domain.document import build_config
from domain.errors import Unavailable
from domain.schema import CheckRequest
from domain.types import Decision
from gateway.codec import digest

AMOUNTS = (70, 110, 150)


def config(budget: int, buckets: int) -> dict[str, Any]:
    return {
        "settings": {"hold_ttl": "15m", "locale": "en"},
        "skus": [{"sku_id": "S1", "spu_id": "P1", "cost_price": 100, "original_price": 1000}],
        "activities": [{"activity_id": "A1", "budget": budget, "buckets": buckets}],
    }


def order(i: int) -> CheckRequest:
    amount = AMOUNTS[i % len(AMOUNTS)]
    body = {
        "order_id": f"hot-{i}",
        "user_id": f"u{i}",
        "items": [{"sku_id": "S1", "quantity": 1, "unit_price": 1000, "discounts": [{"id": "A1", "activity_id": "A1", "amount": amount}]}],
    }
    return msgspec.convert(body, CheckRequest)


def fcall_usec(cli: str, port: int) -> float:
    """The Function calls' CPU time a primary has spent, in microseconds (INFO commandstats)."""
    for line in redis_cli(cli, port, "info", "commandstats").splitlines():
        if line.startswith("cmdstat_fcall:"):
            return float(dict(part.split("=") for part in line.split(":", 1)[1].split(","))["usec"])
    return 0.0


async def sale(primaries: list[int], cli: str, budget: int, buckets: int, concurrency: int) -> dict[str, Any]:
    redis = await connect(f"redis://{HOST}:{primaries[0]}")
    for port in primaries:
        redis_cli(cli, port, "flushall")
        redis_cli(cli, port, "config", "resetstat")
    store = ConfigStore(redis)
    await store.start(build_config(config(budget, buckets)), reload_config=True)
    coordinator = ClusterCoordinator(redis, store, SystemClock())
    decisions: Counter[str] = Counter()
    ids = iter(range(10**9))
    sold_out = asyncio.Event()

    async def buyer() -> None:
        while not sold_out.is_set():
            req = order(next(ids))
            try:
                response, _ = await coordinator.check(req, digest(req))
            except Unavailable:
                decisions["503"] += 1
                continue
            decisions[response.decision.value] += 1
            if response.decision is Decision.DENY:
                activity = (await coordinator.activity_ledger(["A1"])).activities["A1"]
                if budget - activity.held - activity.spent < min(AMOUNTS):
                    sold_out.set()

    start = time.perf_counter()
    await asyncio.gather(*(buyer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    activity = (await coordinator.activity_ledger(["A1"])).activities["A1"]
    usec = {port: fcall_usec(cli, port) for port in primaries}
    await redis.close()
    checks = sum(decisions.values())
    hottest = max(usec.values()) / checks
    used = activity.held + activity.spent
    return {
        "buckets": buckets,
        "budget": budget,
        "checks": checks,
        "decisions": dict(decisions),
        "checks_per_s": round(checks / elapsed),
        "redis_us_per_check": {str(p): round(u / checks, 1) for p, u in usec.items()},
        "hottest_primary_us_per_check": round(hottest, 1),
        "hot_key_ceiling_checks_per_s": round(1e6 / hottest),
        "used": used,
        "unsold": budget - used,
        "audit": "clean" if used <= budget and budget - used < min(AMOUNTS) else "FAILED",
        "contention_rounds": coordinator.stats.contention,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.hotkey", description=__doc__.split("\n\n")[0])
    parser.add_argument("--buckets", type=int, default=8, help="the split row's buckets (default: %(default)s)")
    parser.add_argument("--budget", type=int, default=300_000, help="A1's budget (default: %(default)s, about 2,700 orders)")
    parser.add_argument("--concurrency", type=int, default=32, help="checks in flight (default: %(default)s)")
    args = parser.parse_args(argv)
    redis_bin, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not redis_bin or not cli:
        raise SystemExit("needs redis-server and redis-cli (Debian: apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="flashguard-hotkey-"))
    servers = Servers(workdir, None)
    try:
        primaries = start_cluster(servers, workdir, redis_bin, cli)
        rows = [asyncio.run(sale(primaries, cli, args.budget, n, args.concurrency)) for n in (1, args.buckets)]
    finally:
        servers.stop()
    for row in rows:
        print(json.dumps(row))
    print("\n| buckets | checks/s (one gateway) | Redis CPU-us per check, busiest primary | hot-key ceiling, checks/s | unsold | audit |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['buckets']} | {r['checks_per_s']:,} | {r['hottest_primary_us_per_check']} | {r['hot_key_ceiling_checks_per_s']:,} | {r['unsold']} | {r['audit']} |")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r["audit"] == "clean" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
