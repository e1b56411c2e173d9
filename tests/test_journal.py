"""The journal: group commit pipelines its writes (records appended while one fsync runs go to disk
in the next, without waiting for the loop), the writer switches segments for a snapshot while the
loop goes on, a bug in the writer fails its commits instead of hanging them, and the reader treats
a zero-filled tail as a torn tail."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from snapshots import journal, journal_files


async def write_records(directory: Path, n: int) -> Path:
    j = journal.Journal(directory, 1, "always")
    for i in range(n):
        j.append(("clock", 1_800_000_000 + i))
    await j.commit()
    await j.close()
    return journal_files.segment_path(directory, 1)


def test_a_zero_filled_tail_is_dropped_as_torn(tmp_path: Path) -> None:
    path = asyncio.run(write_records(tmp_path, 5))
    good = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\0" * 4096)  # a crash can leave the file extended with zeroed blocks
    replay = journal_files.read(tmp_path, 0)
    assert [r[1] for r in replay.records] == [1_800_000_000 + i for i in range(5)]
    assert replay.torn is not None and "zero-filled" in replay.torn
    assert replay.torn_offset == good
    replay.cut_torn_tail()
    assert path.stat().st_size == good


def test_zeros_followed_by_a_record_are_damage_not_a_tail(tmp_path: Path) -> None:
    path = asyncio.run(write_records(tmp_path, 3))
    data = path.read_bytes()
    magic = len(journal_files.MAGIC)
    first_end = magic + journal_files.FRAME.size + journal_files.FRAME.unpack_from(data, magic)[0]
    path.write_bytes(data[:first_end] + b"\0" * 8 + data[first_end:])
    with pytest.raises(journal_files.JournalCorrupt, match="followed by more records"):
        journal_files.read(tmp_path, 0)


class SlowDisk:
    """An fsync that blocks until the test releases it, recording how many bytes each one covered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            self.sizes.append(os.fstat(fd).st_size)
            self.entered.set()
            self.release.wait(timeout=10)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)


async def test_records_appended_during_an_fsync_go_out_in_the_next_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = journal.Journal(tmp_path, 1, "batch")
    disk = SlowDisk(monkeypatch)
    j.append(("clock", 1))
    first = asyncio.ensure_future(j.commit())
    await asyncio.to_thread(disk.entered.wait, 10)  # the writer is inside the first round's fsync
    later = []
    for _ in range(3):
        j.append(("clock", 2))
        later.append(asyncio.ensure_future(j.commit()))
    await asyncio.sleep(0.01)
    assert not first.done() and not any(c.done() for c in later)
    assert j.durable == 0 and j.lsn == 4
    disk.release.set()
    await asyncio.gather(first, *later)
    assert j.durable == 4
    assert j.fsyncs == 2  # one round for the first record, one for the three appended meanwhile
    assert disk.sizes[1] > disk.sizes[0]
    await j.close()
    assert [r[0] for r in journal_files.read(tmp_path, 0).records] == ["clock"] * 4


async def test_a_bug_in_the_writer_fails_its_commits_and_the_next_commit_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = journal.Journal(tmp_path, 1, "batch")
    real_write = os.write
    broken = True

    def write(fd: int, data: bytes | memoryview) -> int:
        if broken:
            raise RuntimeError("a bug, not an I/O error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    j.append(("clock", 1))
    with pytest.raises(journal.DiskError, match="writer failed"):
        await asyncio.wait_for(j.commit(), 5)
    assert not j.writable()
    broken = False
    assert await asyncio.wait_for(j.retry(), 5)
    assert j.durable == 1
    await j.close()
    assert len(journal_files.read(tmp_path, 0).records) == 1


async def test_a_rotation_switches_segments_in_the_writer_while_the_loop_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The closing segment's fsync blocks (a disk busy writing back a snapshot): the loop is not
    held, what it appends meanwhile goes into the new segment, and the closing one holds exactly
    the records up to the rotation's lsn."""
    j = journal.Journal(tmp_path, 1, "batch")
    disk = SlowDisk(monkeypatch)
    j.append(("clock", 1))
    j.append(("clock", 2))
    rotation = asyncio.ensure_future(j.rotate())
    await asyncio.to_thread(disk.entered.wait, 10)  # the writer is inside the closing segment's fsync
    j.append(("clock", 3))
    later = asyncio.ensure_future(j.commit())
    await asyncio.sleep(0.01)
    assert not rotation.done() and not later.done() and j.durable == 0
    disk.release.set()
    assert await rotation == 2
    await later
    await j.close()
    # segments are named by their first lsn and read without gaps: the first holds 1-2, the second 3
    assert [first for first, _ in journal_files.segments(tmp_path)] == [1, 3]
    assert [r[1] for r in journal_files.read(tmp_path, 0).records] == [1, 2, 3]


async def test_a_rotation_that_cannot_start_a_segment_fails_and_the_journal_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = journal.Journal(tmp_path, 1, "batch")
    real_open = os.open
    new_segment = str(journal_files.segment_path(tmp_path, 2))

    def open_(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if os.fspath(path) == new_segment:
            raise OSError(28, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_)
    j.append(("clock", 1))
    with pytest.raises(journal.DiskError, match="new journal segment"):
        await asyncio.wait_for(j.rotate(), 5)
    assert j.writable() and j.durable == 1  # the record is on disk; only the switch failed
    j.append(("clock", 2))
    await asyncio.wait_for(j.commit(), 5)
    await j.close()
    assert [first for first, _ in journal_files.segments(tmp_path)] == [1]
    assert [r[1] for r in journal_files.read(tmp_path, 0).records] == [1, 2]


async def test_a_rotation_asked_during_a_failing_write_fails_and_the_journal_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write in flight when a snapshot asks for a rotation fails: its records go back in front
    of those the rotation was to close the segment after, so the rotation fails too; after the
    retry every record is on disk once, in order, and the next rotation works."""
    j = journal.Journal(tmp_path, 1, "batch")
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync
    calls = 0

    def fsync(fd: int) -> None:  # the first one blocks until released, then fails
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(timeout=10)
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    j.append(("clock", 1))
    first = asyncio.ensure_future(j.commit())
    await asyncio.to_thread(entered.wait, 10)
    j.append(("clock", 2))
    j.append(("clock", 3))
    rotation = asyncio.ensure_future(j.rotate())
    await asyncio.sleep(0.01)
    release.set()
    for call in (first, rotation):
        with pytest.raises(journal.DiskError):
            await asyncio.wait_for(call, 5)
    assert await asyncio.wait_for(j.retry(), 5) and j.durable == 3
    assert await asyncio.wait_for(j.rotate(), 5) == 3
    j.append(("clock", 4))
    await asyncio.wait_for(j.commit(), 5)
    await j.close()
    assert [first for first, _ in journal_files.segments(tmp_path)] == [1, 4]
    assert [r[1] for r in journal_files.read(tmp_path, 0).records] == [1, 2, 3, 4]


async def test_a_failed_rotation_is_reported_after_its_round_so_a_retry_right_away_is_a_new_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot's rotation fails on a full disk; the disk recovers and the very next call retries.
    The retry must be a round of its own, not one that learns the failed round's outcome."""
    j = journal.Journal(tmp_path, 1, "batch")
    real_fsync = os.fsync
    full = True

    def fsync(fd: int) -> None:
        if full:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for n in range(20):
        full = True
        j.append(("clock", n))
        with pytest.raises(journal.DiskError):
            await asyncio.wait_for(j.rotate(), 5)
        full = False
        assert await asyncio.wait_for(j.retry(), 5), f"round {n}: the retry was told of the failed round"
    await j.close()
    assert [r[1] for r in journal_files.read(tmp_path, 0).records] == list(range(20))
