"""Where each piece of cluster-mode state lives: keys, and the hash tags that place them in slots.

The unit of atomicity in Redis Cluster is one slot: a Function may touch only keys of one slot. So
every actor's keys share one hash tag (its actor key: a subject key such as 'user\\x1fu1', or
'act\\x1fA1'), and one call applies everything an order does to that actor. An
order's record sits in one of `BUCKETS` bucket slots (by a hash of its id, never of user input)
beside the bucket's set of orders in flight, which the sweeper walks, and its set of holds by expiry.
"""

from __future__ import annotations

import functools
import zlib

from domain.types import SEP

PREFIX = "fg:"
BUCKETS = 64

# An actor's five keys, in the order the Functions library takes them (see flashguard.lua).
SLOT_PARTS = ("c", "w", "wz", "r", "d")

SlotKeys = tuple[str, str, str, str, str]


@functools.lru_cache(maxsize=1 << 16)  # an actor's keys come back check after check
def slot_keys(tag: str) -> SlotKeys:
    """The five keys of one actor. A tag holding '}' still works: every key of the actor cuts its
    tag at the same place, so all five stay in one slot."""
    base = f"{PREFIX}{{{tag}}}:"
    c, w, wz, r, d = (base + part for part in SLOT_PARTS)
    return c, w, wz, r, d


BUCKET_SEP = "\x1e"  # between an actor's tag and its bucket: ids are printable, so it cannot clash


def activity_tag(activity_id: str, bucket: int = 0) -> str:
    """An activity's budget, or bucket `bucket` of it (a hot activity's budget split over slots)."""
    return "act" + SEP + activity_id + (f"{BUCKET_SEP}{bucket}" if bucket else "")


def home_bucket(order_id: str, buckets: int) -> int:
    """The bucket an order takes from first: spread by its id, so a hot actor's orders spread over slots."""
    return zlib.crc32(b"home:" + order_id.encode()) % buckets if buckets > 1 else 0


def bucket(order_id: str) -> int:
    return zlib.crc32(order_id.encode()) % BUCKETS


def order_keys(order_id: str) -> tuple[str, str, str]:
    """The order's record, its bucket's set of orders in flight and its bucket's set of holds."""
    b = bucket(order_id)
    return f"{PREFIX}{{o:{b}}}:{order_id}", inflight_key(b), holds_key(b)


def inflight_key(b: int) -> str:
    return f"{PREFIX}{{o:{b}}}:inflight"


def holds_key(b: int) -> str:
    return f"{PREFIX}{{o:{b}}}:holds"


# The configuration document and its version share a slot, so one Function compares and sets them.
CONFIG_KEYS = (PREFIX + "{config}:doc", PREFIX + "{config}:version")
CLOCK_KEY = PREFIX + "{config}:clock"
