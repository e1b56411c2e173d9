"""Snapshot and restore at sale scale, and what the journal costs.

Builds a state of `--users` users (each with a confirmed or held order), `--skus` SKUs and
`--holds` live holds through the real coordinator, then measures: the forked snapshot's time, the
longest event-loop stall while it is written (a 1 ms ticker records how late it wakes), the file
size, the restore time, and check throughput with the journal on (group commit, fsync) versus off.
Prints one JSON line.

    python -m bench.snapshot [--users 1000000] [--skus 100000] [--holds 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.scenario import Scenario
from domain.clock import ManualClock
from gateway.codec import digest
from node.coordinator import Coordinator
from domain.document import build_config
from domain.schema import CheckRequest
from snapshots.store import Store

T0 = 1_800_000_000
ROUNDS, ROUND = 8, 10_000  # the journal on/off comparison: alternating rounds of checks


async def build(users: int, skus: int, holds: int, data: Path) -> tuple[Coordinator, Store]:
    scenario = Scenario(users=users, skus=skus, rings=0)
    config = build_config(scenario.config())
    coordinator = Coordinator(config, ManualClock(T0))
    store = Store(data, "batch")
    store.restore(coordinator, config)
    bodies = scenario.bodies(users, prefix="b")
    for i, body in enumerate(bodies):
        body["user_id"] = f"u{i}"  # every user once: `users` distinct users
        req = msgspec.convert(body, CheckRequest)
        res, _ = coordinator.check(req, digest(req))
        if res.decision.value != "deny" and i >= holds:
            coordinator.confirm(req.order_id)
        if i % 10_000 == 0:
            coordinator.clock.advance(1)  # type: ignore[attr-defined]
            await coordinator.journal.commit()  # made durable in batches, as a server would
    return coordinator, store


async def stall_during(coro: Any) -> tuple[Any, float, float]:
    """Run `coro` while a 1 ms ticker measures how late the loop wakes it; (result, worst
    lateness, seconds from the start to when it happened)."""
    worst = worst_at = 0.0
    done = False
    began = time.perf_counter()

    async def ticker() -> None:
        nonlocal worst, worst_at
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            late = time.perf_counter() - t - 0.001
            if late > worst:
                worst, worst_at = late, t - began

    task = asyncio.create_task(ticker())
    try:
        result = await coro
    finally:
        done = True
        await task
    return result, worst, worst_at


async def throughput(coordinator: Coordinator, bodies: list[CheckRequest], journal_on: bool, callers: int) -> float:
    """Checks/s with concurrent callers, each awaiting the journal's commit as a handler does (the
    server has up to --max-inflight requests in flight; group commit needs them to batch)."""
    it = iter(bodies)

    async def caller() -> None:
        for req in it:
            coordinator.check(req, digest(req))
            if journal_on:
                await coordinator.journal.commit()
            else:
                await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(bodies) / (time.perf_counter() - start)


async def run(users: int, skus: int, holds: int, callers: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="flashguard-bench-"))
    try:
        start = time.perf_counter()
        coordinator, store = await build(users, skus, holds, root / "data")
        built = time.perf_counter() - start
        gc.collect()
        gc.freeze()
        live = coordinator.held
        path, stall, stall_at = await stall_during(store.snapshot(coordinator))
        size = path.stat().st_size
        snapshot_s, fork_pause = store.stats.last_seconds, store.stats.last_fork_pause

        start = time.perf_counter()
        fresh = Coordinator(build_config({}), ManualClock(T0))
        Store(root / "data", "off").restore(fresh, build_config({}))
        restore_s = time.perf_counter() - start
        assert len(fresh.orders) == len(coordinator.orders)
        del fresh  # a server freezes what it restored (gc.freeze); left unfrozen here, every full
        gc.collect()  # collection below would walk its millions of entries

        scenario = Scenario(users=users, skus=skus, rings=0, seed=99)
        extra = [msgspec.convert(b, CheckRequest) for b in scenario.bodies(ROUNDS * ROUND, prefix="t")]
        batch = Store(root / "on", "batch")
        on = Coordinator(coordinator.config, ManualClock(T0))
        batch.restore(on, coordinator.config)
        off = Coordinator(coordinator.config, ManualClock(T0))
        warm = Coordinator(coordinator.config, ManualClock(T0))
        for req in extra:  # fills the configuration's per-SKU caches, which the first side to meet
            warm.check(req, digest(req))  # a SKU would otherwise pay for alone (100k SKUs here)
        del warm
        os.sync()  # the build's journal and snapshot reach the disk now, not during the fsyncs below
        rates: dict[bool, list[float]] = {True: [], False: []}
        for n in range(ROUNDS):  # alternated, so that neither side gets the quieter moments of the machine
            journal_on = n % 2 == 0
            bodies = extra[n * ROUND : (n + 1) * ROUND]
            rates[journal_on].append(await throughput(on if journal_on else off, bodies, journal_on, callers))
        with_journal, without = (statistics.fmean(rates[side]) for side in (True, False))
        assert batch.journal is not None
        fsyncs, fsync_ms = batch.journal.fsyncs, batch.journal.write_seconds * 1000 / max(batch.journal.fsyncs, 1)
        await batch.journal.close()
        await store.close(coordinator)
        return {
            "bench": "snapshot",
            "users": users,
            "skus": skus,
            "live_holds": live,
            "orders": len(coordinator.orders),
            "build_s": round(built, 1),
            "snapshot_s": round(snapshot_s, 3),
            "fork_pause_ms": round(fork_pause * 1000, 2),
            "max_loop_stall_ms": round(stall * 1000, 2),
            "max_loop_stall_at_s": round(stall_at, 2),  # after the snapshot began
            "snapshot_mb": round(size / 2**20, 1),
            "restore_s": round(restore_s, 2),
            "checks_per_s_journal_batch": round(with_journal),
            "checks_per_s_no_journal": round(without),
            "journal_fsyncs": fsyncs,
            "journal_fsync_ms_mean": round(fsync_ms, 2),
            "callers": callers,
            "journal_cost_pct": round((1 - with_journal / without) * 100, 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--holds", type=int, default=200_000)
    parser.add_argument("--callers", type=int, default=256, help="concurrent checks for the journal comparison")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.users, args.skus, args.holds, args.callers))))


if __name__ == "__main__":
    main()
