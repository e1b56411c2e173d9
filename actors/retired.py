"""The ids of retired orders, in bounded and compact memory: 8 bytes each.

An order that leaves the book (see `OrderBook`, `settings.order_retention`) leaves its id's
fingerprint here, so that a check reusing the id is refused (`order_retired`) instead of counting
the order a second time. The fingerprint is the first 8 bytes of the id's BLAKE2b digest: stable
across processes and versions (Python's `hash()` is salted per process), so a snapshot can store it.

The fingerprints live in 4096 sorted `array('Q')` partitions chosen by their top 12 bits:
membership is one `bisect` in one small array, insertion one `insort` (a `memmove` of a few
kilobytes at 30 million ids), with no merges and no pauses. Two different ids share a fingerprint
with odds 2**-64, so a new id is refused as retired with odds n / 2**64 per check when n ids are
retired: 30 million retired ids, 1.6e-12 per check. (The opposite error cannot happen: a retired
id is always found.)

Stored form (`to_bytes`; nothing for an empty set): the 4096 partition sizes as little-endian uint32, then every fingerprint
as little-endian uint64, partition after partition: globally sorted, 8 bytes an id.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left

BITS = 12
PARTITIONS = 1 << BITS
SHIFT = 64 - BITS
_SWAP = sys.byteorder != "little"  # the stored form is little-endian


class RetiredInvalid(ValueError):
    """Stored bytes that are not a retired-id set."""


def fingerprint(order_id: str) -> int:
    """The id's stable 64-bit fingerprint."""
    data = order_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RetiredIds:
    __slots__ = ("_parts", "_count")

    def __init__(self) -> None:
        self._parts = [array("Q") for _ in range(PARTITIONS)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def add(self, order_id: str) -> bool:
        """Remember `order_id` as retired; False if its fingerprint was known already."""
        return self.add_fingerprint(fingerprint(order_id))

    def add_fingerprint(self, fp: int) -> bool:
        part = self._parts[fp >> SHIFT]
        i = bisect_left(part, fp)
        if i < len(part) and part[i] == fp:
            return False
        part.insert(i, fp)
        self._count += 1
        return True

    def __contains__(self, order_id: object) -> bool:
        if not self._count or not isinstance(order_id, str):
            return False
        fp = fingerprint(order_id)
        part = self._parts[fp >> SHIFT]
        i = bisect_left(part, fp)
        return i < len(part) and part[i] == fp

    def nbytes(self) -> int:
        """The fingerprints' memory (without the 4096 arrays' fixed headers, 64 bytes each)."""
        return sum(p.buffer_info()[1] * p.itemsize for p in self._parts)

    def to_bytes(self) -> bytes:
        """Empty for an empty set: most snapshots then pay nothing for it."""
        if not self._count:
            return b""
        sizes = array("I", [len(p) for p in self._parts])
        parts = [sizes, *self._parts]
        if _SWAP:
            parts = [_swapped(p) for p in parts]
        return b"".join(p.tobytes() for p in parts)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> RetiredIds:
        """The set `to_bytes` wrote; RetiredInvalid if the bytes cannot be one. (The snapshot's
        checksum covers them: this catches a wrong layout, not every flipped bit.)"""
        out = cls()
        if not data:
            return out
        head = PARTITIONS * 4
        if len(data) < head or (len(data) - head) % 8:
            raise RetiredInvalid(f"retired ids: {len(data)} bytes is no partition table and fingerprints")
        sizes = array("I")
        sizes.frombytes(data[:head])
        if _SWAP:
            sizes.byteswap()
        if sum(sizes) * 8 != len(data) - head:
            raise RetiredInvalid(f"retired ids: the partition table counts {sum(sizes)} fingerprints, the data holds {(len(data) - head) // 8}")
        offset = head
        for index, size in enumerate(sizes):
            part = array("Q")
            part.frombytes(data[offset : offset + size * 8])
            offset += size * 8
            if _SWAP:
                part.byteswap()
            if size and (part[0] >> SHIFT != index or part[-1] >> SHIFT != index or part[0] > part[-1]):
                raise RetiredInvalid(f"retired ids: partition {index} holds fingerprints of another partition")
            out._parts[index] = part
        out._count = sum(sizes)
        return out


def _swapped(a: array[int]) -> array[int]:
    b = array(a.typecode, a)
    b.byteswap()
    return b
