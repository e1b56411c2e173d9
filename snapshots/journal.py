"""The journal: every acknowledged state change, appended and made durable before the answer.

Records go to segment files in frames (see `journal_files`, which also reads them back). The
coordinator `append`s records inside its synchronous step; the HTTP layer awaits `commit()` before
it answers.

Fsync modes:
- `always`: each commit writes and fsyncs inline, one request at a time. Loses nothing.
- `batch` (default): group commit. A writer thread writes and fsyncs whatever is pending, round
  after round; every record appended while one round runs joins the next, so concurrent requests
  share an fsync and the loop never waits for the disk. Loses nothing.
- `off`: each commit write()s to the OS without fsync. Survives a crash of the process
  (kill -9), but a power loss or kernel crash may lose the last seconds of acknowledged changes.

A failed write or fsync (disk full, I/O error) puts the journal in a failed state: the file is cut
back to its last good length, the pending records stay buffered, `commit` raises `DiskError`,
and `writable()` is false until a retry succeeds. Nothing unpersisted is ever acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from domain.types import Record
from snapshots.journal_files import MAGIC, encode, fsync_dir, segment_path

log = logging.getLogger("flashguard.journal")

FsyncMode = Literal["always", "batch", "off"]
# The writer thread needs the GIL after each write and fsync, and CPython makes a thread that asks
# for it wait up to the switch interval while the loop runs Python. At the default 5 ms a round of
# group commit took 8-17 ms on a disk that needs about 1, and callers waited on that; at 1 ms
# rounds took about 2 ms. The setting only matters while another thread wants the GIL.
WRITER_SWITCH_INTERVAL = 0.001


class DiskError(OSError):
    """The journal could not persist; the change was not acknowledged."""


class Journal:
    """Appended to by the event loop; in `batch` mode persisted by one writer thread that loops
    for as long as records are pending: it takes whatever was appended while its previous fsync
    ran, so the loop keeps checking while a batch is on its way to disk (a pipeline, not
    stop-and-go). A snapshot's segment switch is the writer's work too (`rotate`). The lock guards
    only the pending buffer, a rotation's split and the writer's flags; it is never held across an
    await, and the loop holds it for a buffer append."""

    def __init__(self, directory: Path, next_lsn: int, mode: FsyncMode = "batch") -> None:
        self.directory = directory
        self.mode = mode
        self.lsn = next_lsn - 1  # last appended
        self.durable = self.lsn  # last known persisted (in the OS for `off`, on disk otherwise)
        self.error: OSError | None = None
        self.fsyncs = 0
        self.write_seconds = 0.0  # spent in write() and fsync(): how slow the disk is under load
        self._pending = bytearray()
        self._pending_lsn = self.lsn
        self._fd = -1
        self._size = 0
        self._abandoned = False
        self._cond = threading.Condition()
        self._held = False  # after a failure the writer waits for a commit or retry
        self._stopping = False
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        # A rotation asked of the writer: the byte length of `_pending` and the lsn at which the
        # segment ends, and the future that `rotate` awaits.
        self._split: tuple[int, int, asyncio.Future[None]] | None = None
        # Rotations the writer finished (or failed), settled with the commits of the same round.
        self._rotated: list[tuple[asyncio.Future[None], DiskError | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.before_rotate: Callable[[], None] | None = None  # see `rotate`
        self._open_segment(next_lsn)

    def _open_segment(self, first_lsn: int) -> None:
        """Switch to the segment starting at `first_lsn`; on failure nothing is left behind and
        the current segment stays in use."""
        path = segment_path(self.directory, first_lsn)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                if os.write(fd, MAGIC) != len(MAGIC):
                    raise OSError("short write of the segment header")
                os.fsync(fd)
                fsync_dir(self.directory)
                size = len(MAGIC)
        except OSError:
            os.close(fd)
            if path.stat().st_size <= len(MAGIC):
                path.unlink(missing_ok=True)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size = fd, size

    # -- the coordinator's side: synchronous ---------------------------------------------

    def append(self, record: Record) -> None:
        frame = encode(self.lsn + 1, record)  # first: a record that cannot be encoded changes nothing
        with self._cond:
            self.lsn += 1
            self._pending += frame
            self._pending_lsn = self.lsn

    def writable(self) -> bool:
        return self.error is None

    # -- the HTTP layer's side: await durability -----------------------------------------

    async def commit(self) -> None:
        """Return once every record appended so far is persisted (per the mode), or raise DiskError."""
        target = self.lsn
        if self.durable >= target:
            return
        await self._persist(target)
        if self.durable < target:
            raise DiskError(f"journal write failed: {self.error}")

    async def retry(self) -> bool:
        """Try to flush what a failure left pending; True when the journal is writable again."""
        if self.error is not None:
            await self._persist(self.lsn)
        return self.error is None

    async def _persist(self, target: int) -> None:
        """One attempt to persist up to `target`: inline for `always` and `off`, by the writer for
        `batch` (woken if it waits, released if a failure held it)."""
        if self.mode != "batch":
            self._flush_now(fsync=self.mode == "always")
            return
        waiter = self._start_writer().create_future()
        self._waiters.append((target, waiter))
        self._wake_writer()
        await waiter

    def _start_writer(self) -> asyncio.AbstractEventLoop:
        """The loop whose futures the writer settles (the one awaiting now); the thread starts on first use."""
        self._loop = loop = asyncio.get_running_loop()
        if self._thread is None:
            sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL))
            self._thread = threading.Thread(target=self._writer, name="flashguard-journal", daemon=True)
            self._thread.start()
        return loop

    def _wake_writer(self) -> None:
        """Wake the writer for new work, releasing it if a failure held it (the work is a retry)."""
        with self._cond:
            self._held = False
            self._cond.notify()

    def _settle(self) -> None:
        """In the loop, after each round: wake the commits it covered (after a failure, all of
        them: they find their records not durable and raise DiskError) and the rotation it
        finished. Together and only now, so that whoever learns of a failure finds the writer
        already held by it, and a retry is a new round rather than this one."""
        durable, failed = self.durable, self.error is not None
        while self._waiters and (failed or self._waiters[0][0] <= durable):
            waiter = self._waiters.popleft()[1]
            if not waiter.done():
                waiter.set_result(None)
        with self._cond:
            rotated, self._rotated = self._rotated, []
        for future, error in rotated:
            if future.done():  # cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _writer(self) -> None:
        """The writer thread: write and fsync whatever is pending, round after round."""
        assert self._loop is not None
        while True:
            with self._cond:
                while not self._stopping and (self._held or not (self._pending or self._split or self.error is not None)):
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                self._flush_now(fsync=True)
            except Exception:  # a bug, recorded as a failed write: this round's commits fail, the writer lives on
                log.exception("the journal writer failed")
            with self._cond:
                self._held = self.error is not None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._settle)

    def _flush_now(self, fsync: bool) -> None:
        """Write (and fsync) every pending record, or those up to a rotation's split and then switch
        segments; the I/O runs outside the lock, so the loop keeps appending meanwhile."""
        with self._cond:
            split, self._split = self._split, None
            cut, upto = (len(self._pending), self._pending_lsn) if split is None else split[:2]
            data = bytes(self._pending[:cut])
            del self._pending[:cut]
        try:
            if self._abandoned:  # a failed write could not be cut back: continue in a fresh segment
                self._open_segment(self.durable + 1)
                self._abandoned = False
            start = time.perf_counter()
            self._write(data, fsync)
            self.write_seconds += time.perf_counter() - start
        except OSError as e:
            self._failed(data, e, split)
            return
        except Exception as e:  # a bug, not the disk: keep the records and fail as for the disk
            self._failed(data, OSError(f"the journal writer failed: {e!r}"), split)
            raise
        self._done(upto, len(data))
        if split is not None:
            self._switch(upto + 1, split[2])

    def _switch(self, first_lsn: int, done: asyncio.Future[None]) -> None:
        """The second half of a rotation, in the writer: the new segment's fsyncs (slow while a
        snapshot's gigabyte is written back) never stall the loop."""
        error = None
        try:
            self._open_segment(first_lsn)
        except OSError as e:
            error = DiskError(f"could not start a new journal segment: {e}")
        with self._cond:
            self._rotated.append((done, error))

    def _write(self, data: bytes, fsync: bool) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if fsync:
            os.fsync(self._fd)

    def _done(self, upto: int, written: int) -> None:
        with self._cond:
            self._size += written
            self.durable = max(self.durable, upto)
            self.fsyncs += 1
            if self.error is not None:
                log.warning("journal writes succeed again")
            self.error = None

    def _failed(self, data: bytes, error: OSError, split: tuple[int, int, asyncio.Future[None]] | None) -> None:
        """Cut a torn write back off, keep the records pending, and refuse until a retry succeeds.
        A rotation fails with it: the one this write was for, and one asked for meanwhile, whose
        split no longer holds once the failed bytes are back at the front of the buffer."""
        with self._cond:
            if self.error is None:
                log.error("journal write failed, answering 503 to changes until it recovers: %s", error)
            self.error = error
            self._pending[:0] = data
            asked, self._split = self._split, None
            if not self._abandoned:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._abandoned = True  # the next attempt starts a fresh segment
            for rotation in (split, asked):
                if rotation is not None:
                    self._rotated.append((rotation[2], DiskError(f"journal write failed: {error}")))

    async def rotate(self) -> int:
        """Persist every record appended so far into the current segment, then start a new one
        after the last of them; returns that record's lsn (what a snapshot taken now covers).
        Raises DiskError if it cannot, and the current segment stays in use. One at a time (the
        store's snapshot lock). In `batch` mode the writer does it: the records appended while it
        works go into the new segment, and the loop never waits for the disk.

        It first calls `before_rotate`, with which the decision log writes out its buffer: the
        snapshots that will prune this segment then never take records whose log lines a crash
        could still lose (a restart writes those lines from the journal)."""
        if self.before_rotate is not None:
            self.before_rotate()
        lsn = self.lsn
        done = asyncio.get_running_loop().create_future()
        if self.mode == "batch":
            self._start_writer()
        with self._cond:
            assert self._split is None, "one rotation at a time"
            self._split = (len(self._pending), lsn, done)
            # Woken in the same step: a wake after the writer took the split would release it from
            # a failure of that very round and start another, whose outcome a retry would get.
            self._held = False
            self._cond.notify()
        if self.mode != "batch":
            self._flush_now(fsync=True)  # `off` too: the closing segment must be on disk
            self._settle()
        await done
        return lsn

    async def close(self) -> None:
        try:
            await self.commit()
        except DiskError:
            log.error("journal closed with %d unpersisted bytes", len(self._pending))
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self._thread.join()
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


