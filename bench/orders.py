"""What a settled order costs, and a restore of many of them (issue 15).

Prints one JSON line: bytes per settled order decoded (as a check leaves it: the struct, its
footprint and first answer, strings shared with the rest of the state counted once), packed (the
book's form once it has settled for a minute: the bytes object, plus the dict entry, key and
queue slot), in the snapshot, and retired (a fingerprint); how long packing takes per order; and
and a snapshot file holding `--orders` settled orders: its write (the book's dict into an archive),
its restore (the file mapped, the archive read in place), a lookup in the archive, and a rewrite
from the restored state with a thousand of its orders used since (as compaction writes the next
snapshot).

    python -m bench.orders [--orders 10000000] [--sample 20000]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from actors.ledger import Ledger
from actors.orders import Order, OrderBook, pack
from bench.scenario import Scenario
from domain.clock import ManualClock
from domain.document import build_config
from domain.schema import CheckRequest
from domain.types import OrderState
from gateway.codec import digest
from node.coordinator import Coordinator
from snapshots import snapshot as snapshot_files
from snapshots import state as state_codec

T0 = 1_800_000_000


def _deep(value: object, seen: set[int]) -> int:
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, (tuple, list)):
        size += sum(_deep(x, seen) for x in value)
    elif isinstance(value, dict):
        size += sum(_deep(k, seen) + _deep(v, seen) for k, v in value.items())
    elif isinstance(value, msgspec.Struct):
        size += sum(_deep(getattr(value, f), seen) for f in value.__struct_fields__)
    return size


def _rss_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def settled_sample(n: int) -> list[Order]:
    """n orders of the scenario's sale as checked, the held ones confirmed: settled orders as a
    sale leaves them (10 subjects, SKU and SPU counters, windows, a real first answer)."""
    scenario = Scenario(users=100_000)
    clock = ManualClock(T0)
    coordinator = Coordinator(build_config(scenario.config()), clock)
    for i, doc in enumerate(scenario.bodies(n)):
        if i % 2000 == 0:
            clock.advance(1)
        req = msgspec.convert(doc, CheckRequest)
        coordinator.check(req, digest(req))
    for order in list(coordinator.orders.values()):
        if order.state is OrderState.HELD:
            coordinator.confirm(order.order_id)
    return list(coordinator.orders.values())


def measure(orders: int, sample: int) -> dict[str, Any]:
    settled = settled_sample(sample)
    seen: set[int] = set()
    decoded = sum(_deep(o, seen) for o in settled) / sample
    start = time.perf_counter()
    packed = [pack(o) for o in settled]
    pack_us = (time.perf_counter() - start) / sample * 1e6
    entry = sys.getsizeof({o.order_id: o for o in settled}) / sample + sum(sys.getsizeof(o.order_id) for o in settled) / sample + 8
    in_memory = sum(sys.getsizeof(p) for p in packed) / sample + entry

    book = OrderBook({f"o-{i:09d}": bytes(packed[i % sample]) for i in range(orders)})
    gc.collect()
    gc.disable()  # as a start does (`gc.freeze` follows)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        path = snapshot_files.write(Path(directory), 1, state_codec.encode(build_config({}), Ledger(), book, T0, 1))
        write_s = time.perf_counter() - start
        del book
        rss_before = _rss_mb()
        start = time.perf_counter()
        _, (_, ledger, restored, _) = snapshot_files.read(path, state_codec.decode)
        restore_s = time.perf_counter() - start
        assert len(restored) == orders
        rss_growth = _rss_mb() - rss_before
        lookups = {}
        for kind, ids in (("hit", (f"o-{i:09d}" for i in range(0, orders, orders // 10_000))), ("miss", (f"n-{i}" for i in range(10_000)))):
            start = time.perf_counter()
            assert sum(order_id in restored for order_id in ids) == (10_000 if kind == "hit" else 0)
            lookups[kind] = round((time.perf_counter() - start) / 10_000 * 1e6, 1)
        for i in range(0, orders, orders // 1000):  # used since: decoded into the book, written anew
            restored.get(f"o-{i:09d}")
        start = time.perf_counter()
        again = snapshot_files.write(Path(directory), 2, state_codec.encode(build_config({}), ledger, restored, T0, 2))
        rewrite_s = time.perf_counter() - start
        size = again.stat().st_size
    return {
        "bench": "orders",
        "sample": sample,
        "decoded_bytes_per_order": round(decoded),
        "packed_bytes_per_order_in_memory": round(in_memory),
        "snapshot_bytes_per_order": round(size / orders),
        "retired_bytes_per_order": 8,
        "pack_us_per_order": round(pack_us, 1),
        "restore_orders": orders,
        "snapshot_write_s": round(write_s, 2),
        "restore_s": round(restore_s, 2),
        "restore_rss_growth_mb": rss_growth,
        "snapshot_rewrite_s": round(rewrite_s, 2),
        "archive_lookup_us": lookups,  # a hit reads its entry from the file's pages (a page fault the first time), a miss only the index
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--sample", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps(measure(args.orders, args.sample)))


if __name__ == "__main__":
    main()
