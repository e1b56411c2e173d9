"""The journal's files: segment names, the record frame, and reading the records back.

Records are msgpack arrays `[lsn, kind, ...]` (orders as their compact struct arrays) in frames
`u32 length | u32 crc32 | payload`, in segment files `journal-<first lsn>.log` that each start with
a magic. `journal.Journal` writes them; `read` gives them back at restore (and to the snapshot
process), telling a torn tail, which a crash leaves and is dropped, from damage in the middle,
which stops the server.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from domain.types import Record

MAGIC = b"FGJRNL\x00\x01"
FRAME = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024


class JournalCorrupt(Exception):
    """A record in the middle of the journal is unreadable: no consistent state can be rebuilt."""


def segment_path(directory: Path, first_lsn: int) -> Path:
    return directory / f"journal-{first_lsn:016d}.log"


def numbered(directory: Path, pattern: str) -> list[tuple[int, Path]]:
    """Files named `<kind>-<number>.<ext>` matching `pattern`, by number, lowest first."""
    out = []
    for p in directory.glob(pattern):
        try:
            out.append((int(p.stem.split("-", 1)[1]), p))
        except ValueError:
            continue
    return sorted(out)


def segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment files by their first LSN, oldest first."""
    return numbered(directory, "journal-*.log")


_encoder = msgspec.msgpack.Encoder()


def encode(lsn: int, record: Record) -> bytes:
    payload = _encoder.encode((lsn, *record))
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Replay:
    records: list[list[Any]]
    last_lsn: int
    torn: str | None = None  # what was dropped at the tail, if anything
    torn_file: Path | None = None
    torn_offset: int = 0  # where the good part of torn_file ends

    def cut_torn_tail(self) -> None:
        """Truncate the torn record away, so that later segments never follow a bad frame."""
        if self.torn_file is not None:
            with open(self.torn_file, "r+b") as f:
                f.truncate(self.torn_offset)
                f.flush()
                os.fsync(f.fileno())


def read(directory: Path, after_lsn: int, upto: int | None = None) -> Replay:
    """Every record with after_lsn < lsn (<= upto), in order. A torn last record is dropped and reported; any
    other damage (a bad record followed by good ones, a gap in LSNs) raises JournalCorrupt.

    Two leftovers of a failed write are understood: an empty segment (its creation failed) holds
    nothing, and records repeated exactly (the journal moved on to a new segment after a write it
    could not cut back, and wrote them again there) count once; a torn tail just before such a
    segment is no damage. A record repeated with other contents is."""
    files = [(first, path) for first, path in segments(directory) if upto is None or first <= upto]
    out = Replay([], after_lsn)
    for index, (first, path) in enumerate(files):
        is_last = index == len(files) - 1
        following = files[index + 1][0] if not is_last else None
        if following is not None and following <= after_lsn + 1:
            continue  # wholly covered by the snapshot
        data = path.read_bytes()
        if not data and not is_last:
            continue
        for lsn, payload, end, problem in _frames(data, path):
            if problem is not None:
                if following is not None and following <= out.last_lsn + 1:
                    break  # the next segment rewrote from here on
                if not is_last:
                    raise JournalCorrupt(problem)
                out.torn, out.torn_file, out.torn_offset = problem, path, end
                break
            if lsn <= after_lsn:
                continue
            if upto is not None and lsn > upto:
                break
            if lsn <= out.last_lsn:  # a rewrite after a failed write repeats records exactly
                if payload != out.records[lsn - after_lsn - 1]:
                    raise JournalCorrupt(f"{path.name}: record {lsn} appears twice with different contents")
                continue
            if lsn != out.last_lsn + 1:
                raise JournalCorrupt(f"{path.name}: record {lsn} follows {out.last_lsn}: records are missing")
            out.records.append(payload)
            out.last_lsn = lsn
    return out


def _frames(data: bytes, path: Path) -> Iterator[tuple[int, list[Any], int, str | None]]:
    """(lsn, record, end of the good data, problem) per frame; a problem ends the segment."""
    if len(data) < len(MAGIC):
        yield 0, [], 0, f"{path.name}: the segment header is torn ({len(data)} bytes)"
        return
    if data[: len(MAGIC)] != MAGIC:
        raise JournalCorrupt(f"{path.name}: not a flashguard journal (bad magic)")
    pos = len(MAGIC)
    while pos < len(data):
        if pos + FRAME.size > len(data):
            yield 0, [], pos, f"{path.name}: a torn frame header at byte {pos}"
            return
        length, crc = FRAME.unpack_from(data, pos)
        if length == 0 and data.count(0, pos) == len(data) - pos:  # no record is empty: a zeroed tail
            yield 0, [], pos, f"{path.name}: a zero-filled tail at byte {pos}"
            return
        end = pos + FRAME.size + length
        if length > MAX_RECORD or end > len(data):
            yield 0, [], pos, f"{path.name}: a torn record at byte {pos}"
            return
        payload = data[pos + FRAME.size : end]
        problem = None
        record: Any = None
        if zlib.crc32(payload) != crc:
            problem = f"{path.name}: a record with a bad checksum at byte {pos}"
        else:
            try:
                record = msgspec.msgpack.decode(payload)
            except Exception:
                problem = f"{path.name}: an undecodable record at byte {pos}"
            else:
                if not isinstance(record, list) or len(record) < 2 or type(record[0]) is not int:
                    problem = f"{path.name}: a malformed record at byte {pos}"
        if problem is not None:
            if end < len(data):
                raise JournalCorrupt(problem + ", followed by more records")
            yield 0, [], pos, problem
            return
        yield record[0], record[1:], end, None
        pos = end
