"""The data directory: restore at start, snapshots while serving, the final snapshot at stop.

Restore takes the newest snapshot that verifies (falling back to older ones, each reported) and
replays the journal after it. A torn last journal record is dropped and reported. If no
consistent state can be rebuilt (damage in the middle of the journal, or every snapshot damaged
and the journal no longer reaching back) the server refuses to start: it never starts on
silently wrong or empty state.

Snapshots while serving are written by another process that rebuilds the state from the last
snapshot and the journal segments closed at that moment (log compaction): the serving process
only rotates its journal and starts the process, so its loop pauses for milliseconds, however
large the state. (A forked child, as Redis does it, pauses the loop for the fork's page-table copy:
measured 0.6 s at a million users.) The final snapshot at shutdown is written in-process.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from domain.clock import ManualClock
from domain.config import Config
from node.coordinator import Coordinator
from snapshots import journal_files
from snapshots import snapshot as snapshot_files
from snapshots.journal import FsyncMode, Journal
from snapshots.journal_files import JournalCorrupt, Replay
from snapshots.snapshot import SnapshotCorrupt
from snapshots.state import StateInvalid, decode, encode

log = logging.getLogger("flashguard.store")


class RestoreError(RuntimeError):
    """No consistent state can be rebuilt from the data directory."""


class SnapshotFailed(RuntimeError):
    pass


@dataclass(slots=True)
class RestoreReport:
    snapshot: Path | None = None
    replayed: int = 0
    damaged: list[str] = field(default_factory=list)
    torn: str | None = None
    seeded: bool = False


@dataclass(slots=True)
class SnapshotStats:
    taken: int = 0
    failed: int = 0
    last_seconds: float = 0.0
    last_fork_pause: float = 0.0  # the loop's pause to start the snapshot process


class Store:
    def __init__(
        self, directory: Path, fsync: FsyncMode = "batch", *, reload_command: str | None = "restore(reload_config=True)"
    ) -> None:
        self.directory = directory
        self.fsync: FsyncMode = fsync
        # How to apply the start-up configuration when a restart keeps the restored one: the log
        # names it. `serve` gives its own command line with --reload-config, or None without
        # --config (the start-up configuration is then the demo: nothing to apply, nothing to say).
        self.reload_command = reload_command
        self.journal: Journal | None = None
        self.stats = SnapshotStats()
        self._lock = asyncio.Lock()
        self._last: tuple[int, Path] | None = None  # the journal position and file of the last snapshot written here
        self._claim: int | None = None  # the descriptor of the data directory's LOCK file (see `claim`)

    def claim(self) -> None:
        """One server per data directory: two would interleave their journal records, and both
        acknowledge decisions that no restart could then replay. A POSIX lock on `LOCK`, which the
        kernel drops when the process ends, `kill -9` included: no stale lock to clear by hand. It
        belongs to the process, so only other processes are refused (tests and `bench` reopen a
        directory in one process to play a restart)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RestoreError(
                f"another process (pid {holder}) is serving from {self.directory}; refusing to start on its data"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._claim = fd

    def rebuild(self, coordinator: Coordinator, upto: int | None = None) -> tuple[RestoreReport, Replay, int]:
        """Load the newest snapshot that verifies and replay the journal after it (up to `upto`)
        into `coordinator`, changing nothing on disk; returns the report, the replay and the
        state's time. Raises RestoreError when no consistent state can be rebuilt."""
        report = RestoreReport()
        base_lsn = 0
        now = 0
        for lsn, path in snapshot_files.snapshots(self.directory):
            if upto is not None and lsn > upto:
                continue
            try:
                _, (config, ledger, orders, now) = snapshot_files.read(path, decode)
            except (SnapshotCorrupt, StateInvalid) as e:
                log.error("snapshot %s is damaged (%s); trying the one before it", path.name, e)
                report.damaged.append(f"{path.name}: {e}")
                continue
            coordinator.adopt(config, ledger, orders)
            report.snapshot, base_lsn = path, lsn
            break
        try:
            replay = journal_files.read(self.directory, base_lsn, upto)
        except JournalCorrupt as e:
            raise RestoreError(f"the journal in {self.directory} is damaged: {e}; refusing to start") from None
        if report.damaged and report.snapshot is None and base_lsn == 0 and not replay.records:
            raise RestoreError(
                f"every snapshot in {self.directory} is damaged and no journal reaches back to the start; "
                "refusing to start on empty state: " + "; ".join(report.damaged)
            )
        try:
            for record in replay.records:
                now = max(now, coordinator.replay(record))
        except Exception as e:
            raise RestoreError(f"the journal does not replay onto the snapshot ({type(e).__name__}: {e}); refusing to start") from None
        report.replayed = len(replay.records)
        return report, replay, now

    def restore(self, coordinator: Coordinator, seed: Config, reload_config: bool = False) -> RestoreReport:
        """Bring `coordinator` to the state the data directory holds (or seed it), and open the journal."""
        self.claim()
        report, replay, now = self.rebuild(coordinator)
        if replay.torn is not None:
            report.torn = replay.torn
            log.warning("dropped a torn journal tail: %s", replay.torn)
            replay.cut_torn_tail()
        if isinstance(coordinator.clock, ManualClock) and now:
            coordinator.clock.restore(now)
        self.journal = Journal(self.directory, replay.last_lsn + 1, self.fsync)
        coordinator.journal = self.journal
        if report.snapshot is not None and not replay.records:
            self._last = (replay.last_lsn, report.snapshot)  # it holds the state: see `unchanged`
        has_state = report.snapshot is not None or replay.last_lsn > 0
        if not has_state:
            coordinator.change(("config", seed.to_doc(secrets=True)))
            report.seeded = True
        elif reload_config:
            coordinator.change(("config", seed.to_doc(secrets=True)))
            log.info("applied the --config file over the restored configuration (--reload-config)")
        elif self.reload_command is not None:
            log.info(
                "the restored configuration stands; the start-up configuration was not applied; to apply it: %s",
                self.reload_command,
            )
        coordinator.expire_due(coordinator.clock.now())  # holds that ran out while the server was down
        return report

    def unchanged(self) -> Path | None:
        """The snapshot this process wrote or restored last, if nothing was journaled since and the
        file is still there. Taking another would write the same state again: at a million users, two
        minutes of a core every `--snapshot-every` on a server that sits idle."""
        journal = self._journal()
        if self._last is not None and self._last[0] == journal.lsn and self._last[1].exists():
            return self._last[1]
        return None

    async def snapshot(self, coordinator: Coordinator) -> Path:
        """Write a snapshot without pausing the loop: the journal moves to a new segment, and a
        separate process (`python -m snapshots.compact`) rebuilds the state from the last
        snapshot and the closed segments, and writes it. Returns the snapshot's path (the last
        one's, when nothing changed since: see `unchanged`)."""
        journal = self._journal()
        async with self._lock:
            if (path := self.unchanged()) is not None:
                return path
            start = time.perf_counter()
            lsn = await journal.rotate()
            spawn = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "snapshots.compact", str(self.directory), str(lsn), stderr=asyncio.subprocess.PIPE
            )
            self.stats.last_fork_pause = time.perf_counter() - spawn
            _, err = await proc.communicate()
            if proc.returncode != 0:
                self.stats.failed += 1
                detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise SnapshotFailed(f"the snapshot process failed ({detail[0]}); older snapshots are intact")
            path = snapshot_files.snapshot_path(self.directory, lsn)
            # Off the loop: unlinking a gigabyte of old journal takes the file system a while.
            await asyncio.get_running_loop().run_in_executor(None, self._retire, lsn, path, time.perf_counter() - start)
            return path

    def snapshot_in_process(self, coordinator: Coordinator) -> Path:
        """The final snapshot at shutdown: nothing else runs, so no fork is needed."""
        lsn = self._journal().lsn
        path = snapshot_files.write(self.directory, lsn, self._dump(coordinator, lsn))
        self._retire(lsn, path, 0.0)
        return path

    def _dump(self, coordinator: Coordinator, lsn: int) -> Iterator[bytes | memoryview]:
        return encode(coordinator.config, coordinator.ledger, coordinator.orders, coordinator.clock.now(), lsn)

    def _retire(self, lsn: int, path: Path, seconds: float) -> None:
        """Record a snapshot taken; drop old snapshots and the journal segments none of the kept ones need."""
        self._last = (lsn, path)
        self.stats.taken += 1
        self.stats.last_seconds = seconds
        oldest = snapshot_files.prune(self.directory)
        if oldest is None:
            return
        files = journal_files.segments(self.directory)
        for (first, seg), (next_first, _) in zip(files, files[1:]):
            if next_first - 1 <= oldest:
                seg.unlink(missing_ok=True)

    async def periodic(self, coordinator: Coordinator, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.unchanged() is not None:
                continue  # nothing to write (see `unchanged`)
            try:
                path = await self.snapshot(coordinator)
                log.info("snapshot %s written", path.name)
            except (SnapshotFailed, OSError) as e:
                log.error("periodic snapshot failed: %s", e)

    async def close(self, coordinator: Coordinator) -> Path | None:
        """Final snapshot and journal close; a failure is logged, the journal still holds everything."""
        journal = self._journal()
        path = None
        async with self._lock:
            try:
                await journal.commit()
                path = self.unchanged()
                if path is None:
                    path = self.snapshot_in_process(coordinator)
                    log.info("final snapshot %s written", path.name)
                else:
                    log.info("final snapshot: nothing new to write (%s holds the state)", path.name)
            except OSError as e:
                log.error("final snapshot failed (%s); the journal holds every change", e)
            await journal.close()
        if self._claim is not None:
            os.close(self._claim)  # the lock goes with it
            self._claim = None
        return path

    def _journal(self) -> Journal:
        if self.journal is None:
            raise RuntimeError("the store was not restored")
        return self.journal
