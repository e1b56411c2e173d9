"""The settled orders' archive (issue 15): what a snapshot restores settled orders into, read in
place, with no object per order until one is used.

A restored order reads, confirms, cancels and repeats as if it had never left memory; once used it
lives in the book again and the archive's copy is shadowed; the next snapshot carries the untouched
entries through as they are, the changed ones as they are now, and leaves the retired out with
their ids kept.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import msgpack
import msgspec
import pytest

from actors.archive import Archive, ArchiveInvalid, Entries, write
from actors.orders import OrderBook, pack, unpack
from actors.retired import fingerprint
from domain.errors import NotFound
from domain.schema import CheckRequest
from domain.types import Decision, OrderState
from gateway.codec import digest
from node.coordinator import Coordinator
from snapshots import state as state_codec
from tests.test_order_retention import DAY
from tests.test_snapshot_restore import advance, check, new_coordinator, open_store, order_body, restore_dir, state_document


def archived(book: OrderBook) -> dict[str, OrderState]:
    """The archive's own entries (shadowed ones included), by id, with their stored state."""
    out = {}
    for i in range(len(book.archive)):
        order_id, packed = book.archive.entry(i)
        out[order_id] = unpack(order_id, packed).state
    return out


def settled_coordinator() -> Coordinator:
    """o1 confirmed, o2 cancelled, o3 held; retention one day."""
    coordinator = new_coordinator()
    coordinator.change(("settings", {"order_retention": "1d"}))
    for n in (1, 2, 3):
        assert check(coordinator, order_body(f"o{n}", f"u{n}")).decision is Decision.ALLOW
    coordinator.confirm("o1")
    coordinator.cancel("o2")
    return coordinator


def build(entries: list[tuple[int, int, str, bytes]]) -> bytes:
    """An archive of (fingerprint, updated_at, id, packed) in any order."""
    fresh = Entries()
    for fp, updated, order_id, packed in entries:
        fresh.add(order_id, updated, packed)
        fresh.fingerprints[-1] = fp  # as given: two ids may share one
    return b"".join(write(Archive(), (), fresh))


def restored_from_body(coordinator: Coordinator) -> Coordinator:
    now = coordinator.clock.now()
    body = b"".join(state_codec.encode(coordinator.config, coordinator.ledger, coordinator.orders, now, 1))
    again = new_coordinator(coordinator.clock)
    again.adopt(*state_codec.decode(body)[:3])
    return again


def test_an_archive_finds_every_id_it_holds_and_no_other() -> None:
    ids = [f"order-{n}" for n in range(3000)] + ["订单-1", "x" * 300]
    blob = build([(fingerprint(i), n, i, f"packed {i}".encode()) for n, i in enumerate(ids)])
    archive = Archive(blob)
    assert len(archive) == len(ids) and len(blob) == 8 + 28 * len(ids) + sum(2 + len(i.encode()) + 7 + len(i.encode()) for i in ids)
    for order_id in ids[::97] + ids[-2:]:
        i = archive.find(order_id, fingerprint(order_id))
        assert i is not None and archive.entry(i) == (order_id, f"packed {order_id}".encode())
        assert archive.updated[i] == ids.index(order_id)
    assert archive.find("order-3000", fingerprint("order-3000")) is None
    assert not Archive() and len(Archive(b"")) == 0


def test_two_ids_sharing_a_fingerprint_are_told_apart_by_the_stored_id() -> None:
    blob = build([(42, 1, "a", b"A"), (42, 2, "b", b"B"), (43, 3, "c", b"C")])
    archive = Archive(blob)
    assert [archive.entry(archive.find(i, fp) or 0) for i, fp in (("a", 42), ("b", 42), ("c", 43))] == [("a", b"A"), ("b", b"B"), ("c", b"C")]
    assert archive.find("z", 42) is None


@pytest.mark.parametrize(
    "blob",
    [b"abc", b"\x05" + b"\x00" * 7, build([(1, 1, "a", b"A")])[:30]],
    ids=["no header", "counts more than it indexes", "its index cut short"],
)
def test_a_wrong_layout_is_refused(blob: bytes) -> None:
    with pytest.raises(ArchiveInvalid):
        Archive(blob)


def test_a_restored_book_holds_settled_orders_in_the_archive_and_decodes_only_what_is_used() -> None:
    coordinator = settled_coordinator()
    restored = restored_from_body(coordinator)
    book = restored.orders
    assert archived(book) == {"o1": OrderState.CONFIRMED, "o2": OrderState.CANCELLED}
    assert set(book._orders) == {"o3"} and restored.held == 1
    assert len(book) == 3 and set(book) == {"o1", "o2", "o3"} and "o1" in book and "o9" not in book
    # a repeat of o1 is answered from the archive, as the first time, and counts nothing
    repeat, again = restored.check(*_request("o1", "u1"))
    assert again and repeat == coordinator.check(*_request("o1", "u1"))[0]
    assert set(book._orders) == {"o1", "o3"} and len(book) == 3  # o1 lives in the book now, shadowing its copy
    # a cancel after the restore changes the book's o1; the next snapshot writes it as it is now
    assert restored.cancel("o1").state is OrderState.CANCELLED
    assert archived(restored_from_body(restored).orders) == {"o1": OrderState.CANCELLED, "o2": OrderState.CANCELLED}


def _request(order_id: str, user: str) -> tuple[CheckRequest, bytes]:
    req = msgspec.convert(order_body(order_id, user), CheckRequest)
    return req, digest(req)


def test_archived_orders_retire_by_their_stored_time_and_leave_the_next_snapshot() -> None:
    coordinator = settled_coordinator()
    restored = restored_from_body(coordinator)
    advance(restored, DAY)
    with pytest.raises(NotFound) as refused:
        restored.order("o2")  # reads as retired at once, from the archive
    assert refused.value.code == "order_retired"
    later = restored_from_body(restored)  # the snapshot leaves o1 and o2 out and keeps their ids
    assert archived(later.orders) == {} and {"o1", "o2"} <= set(_retired(later))
    assert later.orders["o3"].state is OrderState.HELD


def _retired(coordinator: Coordinator) -> list[str]:
    return [i for i in ("o1", "o2", "o3") if i in coordinator.orders.retired]


def test_an_archived_order_used_then_retired_from_the_book_is_not_found_in_the_archive_again() -> None:
    coordinator = settled_coordinator()
    restored = restored_from_body(coordinator)
    assert restored.order("o1").state is OrderState.CONFIRMED  # decoded into the book
    advance(restored, DAY)
    assert restored.retire_step(100)[1] >= 1  # the sweeper moves it to the retired ids
    assert "o1" not in restored.orders._orders and "o1" in restored.orders.retired
    assert "o1" not in restored.orders and restored.orders.get("o1") is None  # its archived copy stays shadowed
    with pytest.raises(NotFound) as refused:
        restored.order("o1")
    assert refused.value.code == "order_retired"


def test_formats_2_and_3_are_read_into_the_book_itself() -> None:
    coordinator = settled_coordinator()
    fields = state_document(coordinator)
    o1 = coordinator.orders["o1"]
    three = [3, *fields[1:8], {"o1": pack(o1)}, fields[9], fields[10]]
    _, _, orders, _ = state_codec.decode(msgpack.packb(three, use_bin_type=True))
    assert not orders.archive and orders["o1"] == o1 and orders["o3"].state is OrderState.HELD


async def test_a_snapshot_file_is_read_in_place_and_stays_readable_once_removed(tmp_path: Path) -> None:
    coordinator, store = await open_store(tmp_path)
    for n in (1, 2):
        assert check(coordinator, order_body(f"o{n}", f"u{n}")).decision is Decision.ALLOW
        coordinator.confirm(f"o{n}")
    path = store.snapshot_in_process(coordinator)
    await store.close(coordinator)
    restored, report = await restore_dir(tmp_path)
    assert report.snapshot == path
    view = restored.orders.archive._data
    assert isinstance(view.obj, mmap.mmap)  # the file's own pages, not a copy
    path.unlink()  # as pruning removes it: the mapping keeps its blocks
    assert restored.order("o2").state is OrderState.CONFIRMED


def test_a_rewrite_keeps_the_data_as_it_is_until_more_than_half_would_be_dead() -> None:
    ids = [f"o{n}" for n in range(10)]
    archive = Archive(build([(fingerprint(i), 1, i, b"p" * 100) for i in ids]))
    data = len(archive._data)
    new = Entries()
    new.add("n1", 2, b"q" * 100)
    at = {archive.entry(n)[0]: n for n in range(len(archive))}
    # one entry dropped, one added: the old data carried over as it is, the new entry after it
    kept = Archive(b"".join(write(archive, {at[ids[0]]}, new)))
    assert len(kept._data) == data + len(b"\x02\x00n1") + 100
    assert {kept.entry(i)[0] for i in range(len(kept))} == {*ids[1:], "n1"}
    assert kept.find(ids[0], fingerprint(ids[0])) is None and kept.entry(kept.find("n1", fingerprint("n1")) or 0)[1] == b"q" * 100
    # six dropped: more than half dead, so the live entries are copied anew and nothing else
    packed = Archive(b"".join(write(archive, {at[i] for i in ids[:6]}, new)))
    assert len(packed._data) == sum((2 + len(i)) + 100 for i in [*ids[6:], "n1"])
    assert all(packed.entry(packed.find(i, fingerprint(i)) or 0)[0] == i for i in [*ids[6:], "n1"])
