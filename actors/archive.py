"""Settled orders as one immutable block, read in place: what a snapshot restores them into.

A restore that makes a key and a bytes object per settled order took 20-40 s at ten million
orders on our VM, most of it fresh memory (every new page is a fault: 3 GB cost 8 s) and object
allocation. The archive is one bytes-like block (the snapshot file's own pages, mapped): its
index is built when the snapshot is written, so a restore reads four arrays and makes no object
per order. A lookup is one `bisect` over the sorted fingerprints; the order itself is decoded
when it is used (`OrderBook` then keeps it, and the archive's copy is shadowed).

Layout (`write`; little-endian): `count u64 | fingerprints count x u64, ascending | updated_at
count x u64 | starts count x u64 | lengths count x u32 | data`. Entry i is `data[starts[i]:][:
lengths[i]]`: `id length u16 | id (UTF-8) | the packed order` (`actors.orders.pack`). The
fingerprint is `actors.retired.fingerprint` of the id, so an order that retires passes it to
`RetiredIds` as it is; two ids sharing one are told apart by the id stored in the entry.
`updated_at` lets a writer drop the retired orders without reading an entry.

The data is written in no particular order, and may hold entries no index entry points at any
more (retired, or changed since and stored anew): the next archive keeps the data as it is and
appends the new entries, so a snapshot of ten million orders does not copy them one by one. It
rewrites the data entry by entry only when more than half of it would be dead, so an entry is
copied a bounded number of times on average, as in a doubling array.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator
from itertools import accumulate, chain, compress, islice
from operator import add

from actors.retired import fingerprint

_COUNT = struct.Struct("<Q")
_ID = struct.Struct("<H")
_SWAP = sys.byteorder != "little"  # the stored form is little-endian
_CHUNK = 4096  # entries joined into one buffer for the writer
_ROW = struct.Struct(">QQQI")  # fingerprint, updated_at, start, length
_COLUMNS = ((0, 8), (8, 8), (16, 8), (24, 4))  # each one's (offset, width) in a row


class ArchiveInvalid(ValueError):
    """Stored bytes that are not an archive."""


class Archive:
    __slots__ = ("fingerprints", "updated", "_starts", "_lengths", "_data")

    def __init__(self, blob: bytes | memoryview = b"") -> None:
        """The archive `write` wrote (`blob` is kept, not copied); ArchiveInvalid if the layout is
        wrong. (The snapshot's checksum covers the bytes: this catches a wrong layout, not every
        flipped bit; an entry that does not decode fails the one call that reads it.)"""
        self.fingerprints, self.updated, self._starts, self._lengths = array("Q"), array("Q"), array("Q"), array("I")
        self._data = memoryview(blob)
        if not blob:
            return
        if len(blob) < _COUNT.size:
            raise ArchiveInvalid(f"archive: {len(blob)} bytes is no header")
        (count,) = _COUNT.unpack_from(blob)
        head = _COUNT.size + 28 * count
        if head > len(blob):
            raise ArchiveInvalid(f"archive: the header counts {count} orders, {len(blob)} bytes cannot index them")
        offset = _COUNT.size
        for column in (self.fingerprints, self.updated, self._starts, self._lengths):
            column.frombytes(self._data[offset : offset + column.itemsize * count])
            offset += column.itemsize * count
            if _SWAP:
                column.byteswap()
        self._data = self._data[head:]

    def __len__(self) -> int:
        return len(self.fingerprints)

    def __bool__(self) -> bool:
        return len(self.fingerprints) > 0

    def raw(self, i: int) -> memoryview:
        """Entry i as stored (id and packed order)."""
        start = self._starts[i]
        return self._data[start : start + self._lengths[i]]

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


class Entries:
    """New entries for `write`, column by column (a tuple per entry costs more than the entry)."""

    __slots__ = ("fingerprints", "updated", "heads", "packed")

    def __init__(self) -> None:
        self.fingerprints: list[int] = []
        self.updated: list[int] = []
        self.heads: list[bytes] = []  # id length and id
        self.packed: list[bytes] = []

    def add(self, order_id: str, updated: int, packed: bytes) -> None:
        raw = order_id.encode("utf-8", "surrogatepass")
        self.fingerprints.append(fingerprint(order_id))
        self.updated.append(updated)
        self.heads.append(_ID.pack(len(raw)) + raw)
        self.packed.append(packed)


def write(archive: Archive, drop: Collection[int], fresh: Entries) -> Iterator[bytes | memoryview]:
    """The stored form of `archive` without its entries `drop`, with `fresh` added: buffers to
    write one after the other, made as they are written (the data is never all in fresh memory
    at once)."""
    mask = bytearray(b"\x01") * len(archive)
    for i in drop:
        mask[i] = 0
    kept_lengths = list(compress(archive._lengths, mask))
    fresh_lengths = list(map(add, map(len, fresh.heads), map(len, fresh.packed)))
    if 2 * (sum(kept_lengths) + sum(fresh_lengths)) < len(archive._data) + sum(fresh_lengths):
        data: Iterable[bytes | memoryview] = _joined(map(archive.raw, compress(range(len(archive)), mask)))  # more than half dead: copied anew
        starts, end = _offsets(kept_lengths, 0), sum(kept_lengths)
    else:
        data = [archive._data]
        starts, end = list(compress(archive._starts, mask)), len(archive._data)
    starts += _offsets(fresh_lengths, end)
    fps = chain(compress(archive.fingerprints, mask), fresh.fingerprints)
    updated = chain(compress(archive.updated, mask), fresh.updated)
    # Each index entry as one big-endian row, fingerprint first, so that sorting the rows as bytes
    # sorts them by fingerprint (the kept ones are one sorted run, which Timsort merges the rest
    # into); then each field into its column. Sorting four columns by a permutation instead reads
    # each value at random: 21 s at five million orders, against 13.
    rows = list(map(_ROW.pack, fps, updated, starts, kept_lengths + fresh_lengths))
    rows.sort()
    count, joined = len(rows), b"".join(rows)
    del rows
    index = bytearray(_COUNT.pack(count))
    for offset, width in _COLUMNS:  # a row's field, big-endian, into its column, little-endian: strided copies
        column = bytearray(width * count)
        for b in range(width):
            column[b::width] = joined[offset + width - 1 - b :: _ROW.size]
        index += column
    yield bytes(index)
    yield from data
    yield from _joined(chain.from_iterable(zip(fresh.heads, fresh.packed)))


def _offsets(lengths: list[int], start: int) -> list[int]:
    """Where each entry of `lengths` begins, the entries written one after the other from `start`."""
    return list(accumulate(lengths, initial=start))[:-1]


def _joined(pieces: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """`pieces` joined a few thousand at a time: a buffer per write, not one per entry."""
    pieces = iter(pieces)
    while batch := b"".join(islice(pieces, _CHUNK)):
        yield batch
