"""Settled orders as one immutable block, read in place: what a snapshot restores them into.

A restore that makes a key and a bytes object per settled order took 20-40 s at ten million
orders on our VM, most of it fresh memory (every new page is a fault: 3 GB cost 8 s) and object
allocation. The archive is one bytes-like block (the snapshot file's own pages, mapped): its
index is built when the snapshot is written, so a restore reads three arrays and makes no object
per order. A lookup is one `bisect` over the sorted fingerprints; the order itself is decoded
when it is used (`OrderBook` then keeps it, and the archive's copy is shadowed).

Layout (`build`; little-endian): `count u64 | fingerprints count x u64, ascending | updated_at
count x u64 | end offsets count x u64 | entries`. Entry i spans `ends[i-1]..ends[i]` of the
entries (from 0 for the first): `id length u16 | id (UTF-8) | the packed order`
(`actors.orders.pack`). The fingerprint is `actors.retired.fingerprint` of the id, so an order
that retires passes its fingerprint to `RetiredIds` as it is; two ids sharing one are told apart
by the id stored in the entry. `updated_at` lets a snapshot writer drop the retired orders
without reading an entry.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from itertools import accumulate

_COUNT = struct.Struct("<Q")
_ID = struct.Struct("<H")
_SWAP = sys.byteorder != "little"  # the stored form is little-endian


class ArchiveInvalid(ValueError):
    """Stored bytes that are not an archive."""


def entry(order_id: str, packed: bytes) -> bytes:
    """The stored form of one order: its id, then its packed form."""
    raw = order_id.encode("utf-8", "surrogatepass")
    return _ID.pack(len(raw)) + raw + packed


class Archive:
    __slots__ = ("fingerprints", "updated", "_ends", "_data")

    def __init__(self, blob: bytes | memoryview = b"") -> None:
        """The archive `build` wrote (`blob` is kept, not copied); ArchiveInvalid if the layout is
        wrong. (The snapshot's checksum covers the bytes: this catches a wrong layout, not every
        flipped bit; an entry that does not decode fails the one call that reads it.)"""
        self.fingerprints, self.updated, self._ends = array("Q"), array("Q"), array("Q")
        self._data = memoryview(blob)
        if not blob:
            return
        if len(blob) < _COUNT.size:
            raise ArchiveInvalid(f"archive: {len(blob)} bytes is no header")
        (count,) = _COUNT.unpack_from(blob)
        head = _COUNT.size + 24 * count
        if head > len(blob):
            raise ArchiveInvalid(f"archive: the header counts {count} orders, {len(blob)} bytes cannot index them")
        view = memoryview(blob)
        for i, column in enumerate((self.fingerprints, self.updated, self._ends)):
            start = _COUNT.size + 8 * count * i
            column.frombytes(view[start : start + 8 * count])
            if _SWAP:
                column.byteswap()
        self._data = view[head:]
        if count and self._ends[-1] != len(self._data):
            raise ArchiveInvalid(f"archive: the entries end at {self._ends[-1]}, the block holds {len(self._data)} bytes")

    def __len__(self) -> int:
        return len(self.fingerprints)

    def __bool__(self) -> bool:
        return len(self.fingerprints) > 0

    def raw(self, i: int) -> memoryview:
        """Entry i as stored (id and packed order)."""
        return self._data[self._ends[i - 1] if i else 0 : self._ends[i]]

    def entry(self, i: int) -> tuple[str, bytes]:
        """(id, packed order) of entry i."""
        raw = self.raw(i)
        (n,) = _ID.unpack_from(raw)
        return str(raw[2 : 2 + n], "utf-8", "surrogatepass"), bytes(raw[2 + n :])

    def find(self, order_id: str, fp: int) -> int | None:
        """The index of `order_id` (whose fingerprint is `fp`), or None."""
        fps = self.fingerprints
        i = bisect_left(fps, fp)
        while i < len(fps) and fps[i] == fp:
            if self.entry(i)[0] == order_id:
                return i
            i += 1
        return None


def build(entries: list[tuple[int, int, bytes | memoryview]]) -> bytes:
    """The stored form of (fingerprint, updated_at, `entry`) triples sorted by fingerprint."""
    columns = [array("Q", [e[0] for e in entries]), array("Q", [e[1] for e in entries]), array("Q", accumulate(len(e[2]) for e in entries))]
    if _SWAP:
        for column in columns:
            column.byteswap()
    return b"".join([_COUNT.pack(len(entries)), *(c.tobytes() for c in columns), *(e[2] for e in entries)])
