"""Memory per user: a million user actors, each with its lifetime counters and two risk windows;
and with `--orders N`, a sale's N settled orders on top: kept packed in the order book (as the
sweeper leaves them a minute after they settle), or with `--retired` retired (8-byte fingerprints).

Holds one order's worth of state per user through the real ledger (SKU, SPU, activity and
activity-SKU counters, interned as the check path interns them, and events in a 1 h and a 24 h
window), and reports the growth of the
process's resident memory divided by the number of users. Prints one JSON line.

With `--sale N` the state is a real sale's instead: N checks of the benchmark scenario (every rule
kind, `--users` buyers and the scalper rings, 2,000 checks a simulated second) through the
coordinator, 70% of the held orders confirmed at once and 10% cancelled, the rest left to expire,
the sweeper's own steps packing settled orders and putting idle subjects to rest as the sale goes;
then the clock moves past the holds, the packing delay and two rest periods, so every settled
order is packed and every subject at rest (with `--retired`, past the retention too, and the
orders retired). It reports the growth of resident memory over the whole sale, per order and in
all.

    python -m bench.memory [--users 1000000] [--orders 10000000 [--retired]]
    python -m bench.memory --sale 10000000 [--retired]
"""

from __future__ import annotations

import argparse
import gc
import json
import os

import msgspec

from actors.ledger import REST_AFTER, Ledger
from actors.orders import Footprint, OrderBook, pack
from actors.retired import RetiredIds
from bench.orders import settled_sample
from bench.scenario import Scenario
from domain.clock import ManualClock
from domain.document import build_config
from domain.schema import CheckRequest
from domain.types import Decision, counter_key, key
from gateway.codec import digest
from node.coordinator import Coordinator

T0 = 1_800_000_000


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(users: int, orders: int, retired: bool) -> dict[str, object]:
    windows = (key("", "", "3600"), key("category", "phone", "86400"))
    gc.collect()
    before = rss()
    ledger = Ledger()
    seconds = [T0 + s for s in range(users // 1000 + 1)]  # one int per second, as the clock gives
    for i in range(users):
        user = key("user", f"u{i}")
        sku = i % 1000
        ledger.hold(
            seconds[i // 1000],
            Footprint(
                subjects=(user,),
                shared=((counter_key("sku", f"S{sku}"), 1), (counter_key("spu", f"P{sku // 4}"), 1)),
                user=((counter_key("act", "A1"), 1), (counter_key("actsku", "A1", f"S{sku}"), 1)),
                windows=((user, windows[0], 3600, 1), (user, windows[1], 86400, 1)),
            ),
        )
    gc.collect()
    grown = rss() - before
    out: dict[str, object] = {
        "bench": "memory",
        "users": users,
        "windows_per_user": 2,
        "counters_per_user": 4,
        "rss_growth_mb": round(grown / 2**20, 1),
        "bytes_per_user": round(grown / users),
    }
    if orders:
        sample = [pack(o) for o in settled_sample(1000)]
        book, gone = OrderBook(), RetiredIds()
        start = rss()
        for i in range(orders):
            if retired:
                gone.add(f"o-{i:09d}")
            else:
                book._orders[f"o-{i:09d}"] = bytes(memoryview(sample[i % 1000]))  # a copy of its own, as each order has
        gc.collect()
        out.update(orders=orders, retired=retired, orders_rss_growth_mb=round((rss() - start) / 2**20, 1),
                   bytes_per_order=round((rss() - start) / orders), total_rss_mb=round(rss() / 2**20))  # fmt: skip
    return out


def tidy(coordinator: Coordinator) -> None:
    """What the sweeper does at a round: pack the orders settled a minute ago, rest idle subjects."""
    for step in (coordinator.pack_step, coordinator.rest_step):
        while step(100_000)[2]:
            pass


def sale(users: int, orders: int, retired: bool) -> dict[str, object]:
    scenario = Scenario(users=users)
    clock = ManualClock(T0)
    coordinator = Coordinator(build_config(scenario.config()), clock)
    gc.collect()
    before = rss()
    chunk, n, decisions = 100_000, 0, {d.value: 0 for d in Decision}
    while n < orders:  # bodies a chunk at a time (all at once would take more memory than the sale)
        bodies = Scenario(users=users, seed=scenario.seed + n).bodies(min(chunk, orders - n), prefix=f"o{n}")
        for body in bodies:
            if n % 2_000 == 0:
                clock.advance(1)
            req = msgspec.convert(body, CheckRequest)
            response, _ = coordinator.check(req, digest(req))
            decisions[response.decision.value] += 1
            if response.decision is not Decision.DENY:
                if n % 10 < 7:
                    coordinator.confirm(req.order_id)
                elif n % 10 == 7:
                    coordinator.cancel(req.order_id)
            n += 1
        tidy(coordinator)
    clock.advance(coordinator.config.settings.hold_ttl_seconds + OrderBook.PACK_AFTER)
    coordinator.expire_due(clock.now())
    for _ in range(2):  # the last buyers' subjects rest too, two periods on
        tidy(coordinator)
        clock.advance(REST_AFTER)
    tidy(coordinator)
    if retired:
        clock.advance(coordinator.config.settings.order_retention_seconds + 1)
        while coordinator.retire_step(100_000)[2]:
            pass
    gc.collect()
    grown = rss() - before
    return {
        "bench": "memory",
        "sale": orders,
        "users": users,
        "retired": retired,
        "decisions": decisions,
        "subjects": {"in_use": len(coordinator.ledger.subjects), "idle": len(coordinator.ledger.idle), "cold": len(coordinator.ledger.cold)},
        "orders_in_book": len(coordinator.orders),
        "rss_growth_mb": round(grown / 2**20),
        "bytes_per_order": round(grown / orders),
        "total_rss_mb": round(rss() / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=0)
    parser.add_argument("--sale", type=int, default=0, help="a real sale of this many checks instead (see above)")
    parser.add_argument("--retired", action="store_true", help="the orders retired (order_retention passed), not kept")
    args = parser.parse_args()
    print(json.dumps(sale(args.users, args.sale, args.retired) if args.sale else run(args.users, args.orders, args.retired)))


if __name__ == "__main__":
    main()
