"""Memory per user: a million user actors, each with its lifetime counters and two risk windows.

Holds one order's worth of state per user through the real ledger (SKU, SPU, activity and
activity-SKU counters, interned as the check path interns them, and events in a 1 h and a 24 h
window), and reports the growth of the
process's resident memory divided by the number of users. Prints one JSON line.

    python -m bench.memory [--users 1000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os

from actors.ledger import Ledger
from actors.orders import Footprint
from domain.types import counter_key, key

T0 = 1_800_000_000


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(users: int) -> dict[str, object]:
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
    return {
        "bench": "memory",
        "users": users,
        "windows_per_user": 2,
        "counters_per_user": 4,
        "rss_growth_mb": round(grown / 2**20, 1),
        "bytes_per_user": round(grown / users),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    print(json.dumps(run(parser.parse_args().users)))


if __name__ == "__main__":
    main()
