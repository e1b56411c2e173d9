"""Memory per user: a million user actors, each with its lifetime counters and two risk windows;
and with `--orders N`, a sale's N settled orders on top: kept packed in the order book (as the
sweeper leaves them a minute after they settle), or with `--retired` retired (8-byte fingerprints).

Holds one order's worth of state per user through the real ledger (SKU, SPU, activity and
activity-SKU counters, interned as the check path interns them, and events in a 1 h and a 24 h
window), and reports the growth of the
process's resident memory divided by the number of users. Prints one JSON line.

    python -m bench.memory [--users 1000000] [--orders 10000000 [--retired]]
"""

from __future__ import annotations

import argparse
import gc
import json
import os

from actors.ledger import Ledger
from actors.orders import Footprint, OrderBook, pack
from actors.retired import RetiredIds
from bench.orders import settled_sample
from domain.types import counter_key, key

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=0)
    parser.add_argument("--retired", action="store_true", help="the orders retired (order_retention passed), not kept")
    args = parser.parse_args()
    print(json.dumps(run(args.users, args.orders, args.retired)))


if __name__ == "__main__":
    main()
