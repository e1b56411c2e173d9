"""`python -m snapshots.compact DATA LSN`: write the snapshot that covers journal record LSN.

Started by the serving process (see `store.Store.snapshot`) after it moved its journal to a new
segment: this process rebuilds the state from the newest snapshot and the closed segments, never
touching the live one, and writes `snapshot-<LSN>.fgs`. Exit status 0 on success; on failure a
message on stderr and status 1, and the older snapshots stay as they were.

It runs at a lower CPU priority (`background`): a snapshot is background work that may take
longer, while a check that waits for a CPU is a slow answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from domain.clock import ManualClock
from domain.config import Config
from node.coordinator import Coordinator
from snapshots import snapshot as snapshot_files
from snapshots.state import encode
from snapshots.store import Store

NICE = 10


def compact(directory: Path, lsn: int) -> Path:
    clock = ManualClock(0)
    coordinator = Coordinator(Config(), clock)
    report, replay, now = Store(directory).rebuild(coordinator, upto=lsn)
    if replay.last_lsn != lsn:
        raise RuntimeError(f"the journal holds records up to {replay.last_lsn}, not {lsn}")
    clock.restore(now)
    body = encode(coordinator.config, coordinator.ledger, coordinator.orders, now, lsn)
    return snapshot_files.write(directory, lsn, body)


def background() -> None:
    """Nice `NICE`, and the batch policy: a server run under a realtime policy (`chrt`) passes it
    on over fork, and a snapshot process at the server's own realtime priority on the server's
    core (its affinity is inherited too) took turns with it 100 ms at a time: 250 ms answers."""
    os.nice(NICE)
    if hasattr(os, "sched_setscheduler"):  # Linux
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def main(argv: list[str]) -> int:
    background()
    try:
        compact(Path(argv[0]), int(argv[1]))
    except Exception as e:  # reported to the server, which keeps the older snapshots
        print(f"snapshot failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
