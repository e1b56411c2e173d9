"""The journal's reader on the leftovers of a crash: a zero-filled tail is a torn tail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from snapshots import journal


async def write_records(directory: Path, n: int) -> Path:
    j = journal.Journal(directory, 1, "always")
    for i in range(n):
        j.append(("clock", 1_800_000_000 + i))
    await j.commit()
    await j.close()
    return journal.segment_path(directory, 1)


def test_a_zero_filled_tail_is_dropped_as_torn(tmp_path: Path) -> None:
    path = asyncio.run(write_records(tmp_path, 5))
    good = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\0" * 4096)  # a crash can leave the file extended with zeroed blocks
    replay = journal.read(tmp_path, 0)
    assert [r[1] for r in replay.records] == [1_800_000_000 + i for i in range(5)]
    assert replay.torn is not None and "zero-filled" in replay.torn
    assert replay.torn_offset == good
    replay.cut_torn_tail()
    assert path.stat().st_size == good


def test_zeros_followed_by_a_record_are_damage_not_a_tail(tmp_path: Path) -> None:
    path = asyncio.run(write_records(tmp_path, 3))
    data = path.read_bytes()
    magic = len(journal.MAGIC)
    first_end = magic + journal.FRAME.size + journal.FRAME.unpack_from(data, magic)[0]
    path.write_bytes(data[:first_end] + b"\0" * 8 + data[first_end:])
    with pytest.raises(journal.JournalCorrupt, match="followed by more records"):
        journal.read(tmp_path, 0)
