"""Snapshot files: the state's msgpack body (see `state`) behind a header that makes damage detectable.

Layout: `MAGIC (8) | version u16 | reserved u16 | lsn u64 | body length u64 | blake2b-128 of
body (16)` then the body. A file is written to a temporary name, fsynced, renamed, and the
directory fsynced, so a crash leaves either the old set of snapshots or the new one, never half a
file under a snapshot's name. The last `KEEP` snapshots are kept, so a damaged newest one can
be skipped for the one before it (with the journal since then).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from snapshots.journal_files import fsync_dir, numbered

T = TypeVar("T")

MAGIC = b"FGSNAP\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sHHQQ16s")
KEEP = 3
MAX_BODY = 16 * 1024**3


class SnapshotCorrupt(Exception):
    """A snapshot file that cannot be trusted; the loader falls back to an older one."""


def snapshot_path(directory: Path, lsn: int) -> Path:
    return directory / f"snapshot-{lsn:016d}.fgs"


def snapshots(directory: Path) -> list[tuple[int, Path]]:
    """Snapshot files by the journal position they cover, newest first."""
    return numbered(directory, "snapshot-*.fgs")[::-1]


def write(directory: Path, lsn: int, body: Iterable[bytes | memoryview]) -> Path:
    """Write a snapshot atomically and durably; returns its path. Raises OSError on failure, having
    removed its temporary file, so the snapshots already there stay as they were. `body` comes
    as buffers, written (and checksummed) as they come: the header, which holds the length and
    the checksum, is written last, before the fsync."""
    final = snapshot_path(directory, lsn)
    tmp = final.with_suffix(".tmp")
    checksum, length = hashlib.blake2b(digest_size=16), 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.lseek(fd, HEADER.size, os.SEEK_SET)
            for chunk in body:
                checksum.update(chunk)
                length += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.pwrite(fd, HEADER.pack(MAGIC, VERSION, 0, lsn, length, checksum.digest()), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def read(path: Path, decode: Callable[[memoryview], T]) -> tuple[int, T]:
    """(lsn, decode(body)) of a snapshot file, or SnapshotCorrupt saying what is wrong with it.

    The file is mapped, not read: a read would copy gigabytes into fresh memory first, and on a VM
    every new page costs a fault (3 GB took 8 s here). What `decode` keeps as a view of the body
    (the settled orders' archive) reads the file's pages in place; the mapping lives as long as
    such a view (a snapshot file is never changed once written, only removed, which leaves a
    mapped file's blocks until the process lets go). The checksum is computed in a thread while
    `decode` runs (hashlib lets go of the GIL; a gigabyte takes a second or two), and nothing
    decoded is returned unless the checksum matches: a decode error over a body whose checksum
    fails is reported as the checksum failure it is. Then the pages the checksum read are let go
    of (they stay in the page cache, not in this process's resident memory)."""
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size < HEADER.size:
                data: bytes | mmap.mmap = f.read()
            else:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise SnapshotCorrupt(f"{path.name}: unreadable: {getattr(e, 'strerror', None) or e}") from None
    if len(data) < HEADER.size:
        raise SnapshotCorrupt(f"{path.name}: truncated header ({len(data)} bytes)")
    magic, version, reserved, lsn, length, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotCorrupt(f"{path.name}: not a flashguard snapshot (bad magic)")
    if version != VERSION or reserved != 0:
        raise SnapshotCorrupt(f"{path.name}: format version {version}.{reserved}, this build reads {VERSION}.0")
    if path.name.startswith("snapshot-") and snapshot_path(path.parent, lsn) != path:
        raise SnapshotCorrupt(f"{path.name}: the header says it covers record {lsn}, the name says otherwise")
    if length > MAX_BODY or HEADER.size + length != len(data):
        raise SnapshotCorrupt(f"{path.name}: body length {length} does not match the file ({len(data) - HEADER.size})")
    body = memoryview(data)[HEADER.size :]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flashguard-checksum") as pool:
        checksum = pool.submit(lambda: hashlib.blake2b(body, digest_size=16).digest())
        try:
            value = decode(body)
        finally:
            if checksum.result() != digest:
                raise SnapshotCorrupt(f"{path.name}: checksum mismatch")  # it outranks what decode raised
    if isinstance(data, mmap.mmap):
        data.madvise(mmap.MADV_DONTNEED)
    return lsn, value


def prune(directory: Path, keep: int = KEEP) -> int | None:
    """Remove all but the newest `keep` snapshots (and stray temporaries); returns the lsn of the
    oldest one kept, below which the journal is no longer needed."""
    for tmp in directory.glob("snapshot-*.tmp"):
        tmp.unlink(missing_ok=True)
    found = snapshots(directory)
    for _, path in found[keep:]:
        path.unlink(missing_ok=True)
    kept = found[:keep]
    return kept[-1][0] if kept else None
