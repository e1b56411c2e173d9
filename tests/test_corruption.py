"""Corruption fuzz (issue 4), as Redis tests its dump loader: damaged data directories never crash
the loader and never restore a partial mix.

A small valid data directory is built once per test: two forked snapshots (A, then B) and a journal
after each (A's segment, then the last segment with a few records after B). Every case copies it,
damages it, and restores the copy into a fresh coordinator. The outcome must be either
RestoreError (refusing to start), or exactly one consistent state: B plus a prefix of the last
segment's records (computed by restoring the undamaged directory cut at each record boundary).
Damage to the newest snapshot must be reported (`RestoreReport.damaged`) and skipped for A and the
journal since A; a lost journal tail must be reported (`RestoreReport.torn`). Nothing but
RestoreError may escape.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.archive import Archive, Entries, write
from actors.orders import Order
from snapshots import journal_files
from snapshots import snapshot as snapshot_files
from snapshots.state import ARCHIVED, State
from snapshots.store import RestoreError
from tests.test_snapshot_restore import (
    T0,
    canonical,
    check,
    claim,
    first_half,
    journal_of,
    open_store,
    order_body,
    restore_dir,
    second_half,
)

SEED = 20260514


def advance(coordinator: Any, seconds: int) -> None:
    """Move the manual clock without a journal record: the states this fuzz compares are those
    after each record, and a clock record alone would not be told apart from its neighbour."""
    coordinator.clock.advance(seconds)
Mutation = Callable[[Path], None]

# What a case damages, and so what the loader must make of it.
NEWER = "newer snapshot"  # reported, skipped for the older one + the journal since: the full state
OLDER = "older snapshot"  # not needed while the newer one is good: the full state
MIDDLE = "middle segment"  # the journal between the snapshots, not needed either: the full state
LAST = "last segment"  # the records after the newer snapshot: a reported torn tail, or RestoreError
NEWER_AND_MIDDLE = "newer snapshot + middle segment"  # the fallback's journal is damaged: RestoreError or the full state
BOTH_SNAPSHOTS = "both snapshots"  # nothing to fall back to, the journal pruned: RestoreError


@dataclass
class Base:
    directory: Path
    older: str  # file names
    newer: str
    middle: str
    last: str
    ends: list[int]  # offsets in the last segment where records end (ends[0]: after the magic)
    states: list[Any]  # states[k]: the newer snapshot + the first k records of the last segment

    @property
    def full(self) -> int:
        return len(self.ends) - 1


@dataclass
class Case:
    name: str
    target: str
    mutate: Mutation
    kept: int | None = None  # a cut of the last segment exactly at a record boundary: k records remain
    records_kept_if_torn: int | None = None  # a cut elsewhere: the records that must survive


@dataclass
class Outcome:
    cases: int = 0
    refused: int = 0
    restored: int = 0
    failures: list[str] = field(default_factory=list)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """Where the cases run: memory (tmpfs) when there is one, because the fuzz runs thousands of
    restores and each fsyncs a new journal segment; `tmp_path` otherwise."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="flashguard-fuzz-", dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- the base directory and its consistent states ---------------------------------------------


def frame_ends(data: bytes) -> list[int]:
    ends = [len(journal_files.MAGIC)]
    pos = ends[0]
    while pos < len(data):
        length, _ = journal_files.FRAME.unpack_from(data, pos)
        pos += journal_files.FRAME.size + length
        ends.append(pos)
    assert pos == len(data)
    return ends


async def build_base(root: Path) -> Base:
    directory = root / "base"
    coordinator, store = await open_store(directory)
    await first_half(coordinator)
    older = await store.snapshot(coordinator)
    await second_half(coordinator)
    newer = await store.snapshot(coordinator)
    # a few more records after the newer snapshot: every kind
    check(coordinator, order_body("t1", "u7", device="d7", discount=40))
    coordinator.confirm("o6")
    coordinator.change(("list", "whitelist", "user", "vip-2", True))
    claim(coordinator, "u7")
    advance(coordinator, 25 * 60)  # o8 and t1 holds (20m) run out: expiries, then the check
    check(coordinator, order_body("t2", "u8", sku="S2", unit_price=500, device="d8"))
    coordinator.cancel("o4")
    await coordinator.journal.commit()
    live = canonical(coordinator)
    await journal_of(store).close()
    segments = journal_files.segments(directory)
    assert [p.name for p in directory.iterdir() if p.suffix == ".tmp"] == []
    assert len(segments) == 2, segments  # the segment before the older snapshot was pruned
    (_, middle), (_, last) = segments
    ends = frame_ends(last.read_bytes())
    assert len(ends) - 1 >= 6
    base = Base(directory, older.name, newer.name, middle.name, last.name, ends, [])
    for k in range(len(ends)):
        copy = root / f"prefix-{k}"
        shutil.copytree(directory, copy)
        with open(copy / last.name, "r+b") as f:
            f.truncate(ends[k])
        restored, report = await restore_dir(copy)
        assert report.snapshot is not None and report.snapshot.name == newer.name
        assert report.replayed == k and report.torn is None and not report.damaged
        base.states.append(canonical(restored))
        shutil.rmtree(copy)
    assert base.states[-1] == live
    assert len({repr(s) for s in base.states}) == len(base.states)  # every record changes the state
    return base


# -- running the cases -------------------------------------------------------------------------


def judge(base: Base, case: Case, state: Any, report: Any) -> str | None:
    """None when the outcome is acceptable for the case, else what is wrong."""
    matches = [k for k, s in enumerate(base.states) if s == state]
    if not matches:
        return "restored a state that is no consistent state (a partial or mixed application)"
    k = max(matches)
    torn = report.torn is not None
    damaged = list(report.damaged)
    if case.target in (NEWER, NEWER_AND_MIDDLE):
        if not any(base.newer in d for d in damaged):
            return f"the damaged newest snapshot was not reported (damaged={damaged})"
        if report.snapshot is None or report.snapshot.name != base.older:
            return f"did not fall back to the older snapshot ({report.snapshot})"
    if case.target in (NEWER, OLDER, MIDDLE, NEWER_AND_MIDDLE) and k != base.full:
        return f"lost records although an intact copy of them exists (restored {k} of {base.full})"
    if case.target == BOTH_SNAPSHOTS:
        return "started although no snapshot is good and the journal no longer reaches back"
    if case.target == LAST:
        if case.kept is not None:
            if k != case.kept or torn:
                return f"a clean cut after {case.kept} records restored {k} (torn={report.torn})"
        elif not torn:
            return f"damage to the last segment went unreported (restored {k} of {base.full})"
        if case.records_kept_if_torn is not None and k != case.records_kept_if_torn:
            return f"a torn tail kept {k} records, expected {case.records_kept_if_torn}"
    return None


def refusal_acceptable(case: Case) -> bool:
    """RestoreError is the right answer when no consistent state can be rebuilt; a cut (a crash in
    the middle of a write) and damage to files a good snapshot makes unneeded never qualify."""
    if case.target in (LAST, NEWER_AND_MIDDLE, BOTH_SNAPSHOTS):
        return case.kept is None and case.records_kept_if_torn is None
    return False


async def run_cases(base: Base, work: Path, cases: list[Case]) -> Outcome:
    out = Outcome()
    for n, case in enumerate(cases):
        out.cases += 1
        copy = work / f"case-{n}"
        shutil.copytree(base.directory, copy)
        try:
            case.mutate(copy)
            try:
                restored, report = await restore_dir(copy)
            except RestoreError as e:
                out.refused += 1
                if not refusal_acceptable(case):
                    out.failures.append(f"{case.name} [{case.target}]: refused to start: {e}")
                elif "refusing to start" not in str(e):
                    out.failures.append(f"{case.name}: the refusal does not say so clearly: {e}")
                continue
            except Exception as e:  # anything else escaping the loader is a failure of this test
                out.failures.append(f"{case.name} [{case.target}]: {type(e).__name__}: {e}")
                continue
            out.restored += 1
            problem = judge(base, case, canonical(restored), report)
            if problem is not None:
                out.failures.append(f"{case.name} [{case.target}]: {problem}")
        finally:
            shutil.rmtree(copy)
    return out


def assert_clean(out: Outcome, at_least: int) -> None:
    assert out.cases >= at_least
    shown = "\n".join(out.failures[:40])
    kinds: dict[str, int] = {}
    for f in out.failures:
        key = f.split(": ", 1)[1] if ": " in f else f
        key = key.split(" (")[0]
        kinds[key] = kinds.get(key, 0) + 1
    assert not out.failures, f"{len(out.failures)} of {out.cases} cases failed; by kind {kinds}:\n{shown}"


# -- mutations ---------------------------------------------------------------------------------


def truncate(name: str, size: int) -> Mutation:
    def mutate(d: Path) -> None:
        with open(d / name, "r+b") as f:
            f.truncate(size)

    return mutate


def rewrite(name: str, change: Callable[[bytearray], None]) -> Mutation:
    def mutate(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        change(data)
        (d / name).write_bytes(bytes(data))

    return mutate


def flips(name: str, positions: list[tuple[int, int]]) -> Mutation:
    def change(data: bytearray) -> None:
        for offset, mask in positions:
            data[offset] ^= mask

    return rewrite(name, change)


def both(*mutations: Mutation) -> Mutation:
    def mutate(d: Path) -> None:
        for m in mutations:
            m(d)

    return mutate


def sizes(base: Base) -> dict[str, int]:
    return {name: (base.directory / name).stat().st_size for name in (base.older, base.newer, base.middle, base.last)}


def targets(base: Base) -> dict[str, str]:
    return {base.newer: NEWER, base.older: OLDER, base.middle: MIDDLE, base.last: LAST}


def kept_after_cut(base: Base, size: int) -> tuple[int | None, int | None]:
    """(kept, records_kept_if_torn) for the last segment cut at `size`."""
    if size in base.ends:
        return base.ends.index(size), None
    return None, len([e for e in base.ends[1:] if e <= size])


# -- the tests --------------------------------------------------------------------------------


async def test_truncation_at_every_offset(work: Path) -> None:
    """A crash can cut a file anywhere: the newest snapshot and the last segment at every offset,
    the older snapshot and the middle segment at every 7th."""
    base = await build_base(work)
    cases = []
    for name, size in sizes(base).items():
        target = targets(base)[name]
        step = 1 if target in (NEWER, LAST) else 7
        for cut in range(0, size, step):
            kept, torn_kept = kept_after_cut(base, cut) if target == LAST else (None, None)
            cases.append(Case(f"truncate {name} at {cut}/{size}", target, truncate(name, cut), kept, torn_kept))
    out = await run_cases(base, work, cases)
    assert_clean(out, 1000)


async def test_random_byte_flips(work: Path) -> None:
    """One and two random byte flips in each file (seeded), every header byte of the newest
    snapshot, and every frame-header byte of the last segment."""
    base = await build_base(work)
    rng = random.Random(SEED)
    cases = []
    for name, size in sizes(base).items():
        target = targets(base)[name]
        for n in range(120):
            count = 1 if n % 2 == 0 else 2
            positions = [(rng.randrange(size), rng.randrange(1, 256)) for _ in range(count)]
            if count == 2 and positions[0][0] == positions[1][0]:
                positions = positions[:1]
            cases.append(Case(f"flip {name} at {positions}", target, flips(name, positions)))
    for offset in range(snapshot_files.HEADER.size):
        cases.append(Case(f"flip newer header byte {offset}", NEWER, flips(base.newer, [(offset, 0x01)])))
    for start in base.ends[:-1]:
        for offset in range(start, start + journal_files.FRAME.size):
            cases.append(Case(f"flip last frame header byte {offset}", LAST, flips(base.last, [(offset, 0x80)])))
    out = await run_cases(base, work, cases)
    assert_clean(out, 500)


def set_bytes(offset: int, value: bytes) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data[offset : offset + len(value)] = value

    return change


def append(extra: bytes) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data += extra

    return change


async def test_headers_lengths_and_garbage(work: Path) -> None:
    """Empty files, wrong magic, wrong version, a huge declared length, trailing garbage."""
    base = await build_base(work)
    rng = random.Random(SEED + 1)
    header = snapshot_files.HEADER
    cases: list[Case] = []
    for name in (base.newer, base.older):
        target = targets(base)[name]
        cases += [
            Case(f"empty {name}", target, truncate(name, 0)),
            Case(f"wrong magic {name}", target, rewrite(name, set_bytes(0, b"FGJRNL\x00\x01"))),
            Case(f"wrong version {name}", target, rewrite(name, set_bytes(8, struct.pack("<H", 2)))),
            Case(f"version 0 {name}", target, rewrite(name, set_bytes(8, struct.pack("<H", 0)))),
            Case(f"reserved {name}", target, rewrite(name, set_bytes(10, struct.pack("<H", 7)))),
            Case(f"header lsn {name}", target, rewrite(name, set_bytes(12, struct.pack("<Q", 1)))),
        ]
        for length in (0, 1, 2**31, 2**32, 2**40, snapshot_files.MAX_BODY + 1, 2**63, 2**64 - 1):
            cases.append(Case(f"declared length {length} {name}", target, rewrite(name, set_bytes(20, struct.pack("<Q", length)))))
        for extra in (b"\x00", b"\xc0", bytes(rng.randrange(256) for _ in range(17)), b"\x00" * 4096):
            cases.append(Case(f"trailing {len(extra)} bytes {name}", target, rewrite(name, append(extra))))
        cases.append(Case(f"header only {name}", target, truncate(name, header.size)))
    for name in (base.middle, base.last):
        target = targets(base)[name]
        kept = (None, 0) if target == LAST else (None, None)
        cases += [
            Case(f"empty {name}", target, truncate(name, 0), *kept),
            Case(f"wrong magic {name}", target, rewrite(name, set_bytes(0, b"FGSNAP\x00\x01"))),
            Case(f"wrong version {name}", target, rewrite(name, set_bytes(6, b"\x00\x02"))),
        ]
        for index in (0, 1, base.full - 1):
            pos = base.ends[index]
            for length in (2**31, 2**32 - 1, journal_files.MAX_RECORD + 1):
                cases.append(
                    Case(f"record {index} declares {length} bytes in {name}", target, rewrite(name, set_bytes(pos, struct.pack("<I", length))))
                )
        for extra in (b"\x00", b"\x00" * 8, b"\x00" * 64, bytes(rng.randrange(256) for _ in range(29)), b"\xff" * 12):
            cases.append(Case(f"trailing {len(extra)} bytes {name}", target, rewrite(name, append(extra))))
    # several files at once
    cases.append(Case("both snapshots empty", BOTH_SNAPSHOTS, both(truncate(base.newer, 0), truncate(base.older, 0))))
    cases.append(
        Case("both snapshots flipped", BOTH_SNAPSHOTS, both(flips(base.newer, [(200, 1)]), flips(base.older, [(200, 1)])))
    )
    middle_size = sizes(base)[base.middle]
    for cut in range(0, middle_size, 5):
        cases.append(
            Case(f"newer empty, middle cut at {cut}", NEWER_AND_MIDDLE, both(truncate(base.newer, 0), truncate(base.middle, cut)))
        )
    out = await run_cases(base, work, cases)
    assert_clean(out, 100)


# -- crafted bodies: a valid header and checksum around a bad body ----------------------------


def snapshot_file(lsn: int, body: bytes) -> bytes:
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return snapshot_files.HEADER.pack(snapshot_files.MAGIC, snapshot_files.VERSION, 0, lsn, len(body), digest) + body


def with_body(name: str, body: bytes) -> Mutation:
    def mutate(d: Path) -> None:
        lsn = int(Path(name).stem.split("-", 1)[1])
        (d / name).write_bytes(snapshot_file(lsn, body))

    return mutate


def field_index(struct_type: type[msgspec.Struct], name: str) -> int:
    return [f.name for f in msgspec.structs.fields(struct_type)].index(name)


PLACEHOLDER = "@@placeholder@@"


def splice(doc: Any, raw: bytes) -> bytes:
    """Encode `doc` with the encoding of PLACEHOLDER replaced by raw msgpack bytes."""
    encoded = msgspec.msgpack.encode(doc)
    mark = msgspec.msgpack.encode(PLACEHOLDER)
    assert encoded.count(mark) == 1
    return encoded.replace(mark, raw)


def crafted_bodies(body: bytes) -> Iterator[tuple[str, bytes]]:
    """Bodies that decode as msgpack (or nearly) but are no valid state: a format-4 body is the
    state's document, then the settled orders' archive (see `snapshots.state`)."""
    assert body[0] == ARCHIVED
    length = int.from_bytes(body[1:9], "little")
    doc = msgspec.msgpack.decode(body[9 : 9 + length])
    settled = body[9 + length :]
    assert isinstance(doc, list)

    def edited(**changes: Any) -> Any:
        out = list(doc)
        for name, value in changes.items():
            out[field_index(State, name)] = value
        return out

    def wrapped(document: Any, archive: bytes = settled) -> bytes:
        raw = document if isinstance(document, bytes) else msgspec.msgpack.encode(document)
        return bytes([ARCHIVED]) + len(raw).to_bytes(8, "little") + raw + archive

    yield "nil", b"\xc0"
    yield "empty array", msgspec.msgpack.encode([])
    yield "empty map", msgspec.msgpack.encode({})
    yield "a string", msgspec.msgpack.encode("state")
    yield "an integer", msgspec.msgpack.encode(12345)
    yield "the document alone, without its archive", msgspec.msgpack.encode(doc)
    yield "a format-3 document before an archive", wrapped(edited(format=3))
    yield "a document longer than the body", bytes([ARCHIVED]) + (1 << 40).to_bytes(8, "little") + msgspec.msgpack.encode(doc)
    yield "a body of its first byte", bytes([ARCHIVED])
    yield "one field short", wrapped(doc[:-1])
    yield "as a map", wrapped(dict(zip([f.name for f in msgspec.structs.fields(State)], doc)))
    yield "format 1 (before settled orders were kept as bytes)", wrapped(edited(format=1))
    yield "format as a string", wrapped(edited(format="1"))
    yield "now as a float", wrapped(edited(now=1.5))
    yield "config invalid", wrapped(edited(config={"skus": "nope"}))
    yield "config unknown section", wrapped(edited(config={"weird": {}}))
    yield "subjects a list", wrapped(edited(subjects=[1, 2, 3]))
    yield "a subject not [sweep_at, blob]", wrapped(edited(subjects={"user\x1fu1": [{}, {}, 0, 0]}))
    yield "a subject's sweep_at a string", wrapped(edited(subjects={"user\x1fu1": ["0", b""]}))
    yield "a subject's blob not bytes", wrapped(edited(subjects={"user\x1fu1": [0, [{}, {}, 0, 0]]}))
    yield "activities wrong", wrapped(edited(activities={"A1": ["held", 0]}))
    yield "skus wrong", wrapped(edited(skus={"S1": ["1", 0]}))
    held_orders = doc[field_index(State, "held")]
    archive = Archive(settled)
    assert held_orders and archive, "the base state has held and settled orders"
    held = held_orders[0]
    for label, fld, value in (
        ("order state unknown", "state", "paused"),
        ("a settled order among the holds", "state", "confirmed"),
        ("held order without footprint", "footprint", None),
        ("held order without expiry", "expires_at", None),
        ("order response not bytes", "response", 17),
        ("order id not a string", "order_id", 5),
        ("footprint wrong", "footprint", [1, 2, 3]),
    ):
        bad = list(held)
        bad[field_index_order(fld)] = value
        yield label, wrapped(edited(held=[bad, *held_orders[1:]]))
    yield "held orders not a list", wrapped(edited(held={"o1": 1}))
    also = Entries()
    also.add(held[0], T0, archive.entry(0)[1])
    yield "a held order also settled", wrapped(doc, b"".join(write(archive, (), also)))
    yield "settled orders in the document too", wrapped(edited(settled={held[0]: archive.entry(0)[1]}))
    yield "an archive of three bytes", wrapped(doc, b"abc")
    yield "an archive counting more orders than it indexes", wrapped(doc, b"\xff" * 8 + settled[8:])
    # deep nesting, huge containers and strings
    yield "100000 nested arrays", b"\x91" * 100_000 + b"\xc0"
    yield "100000 nested arrays in the config", wrapped(splice(edited(config={"settings": PLACEHOLDER}), b"\x91" * 100_000 + b"\xc0"))
    yield "100000 nested maps in the config", wrapped(splice(edited(config={"settings": PLACEHOLDER}), b"\x81\xa1k" * 100_000 + b"\xc0"))
    yield "nested arrays as a subject", wrapped(splice(edited(subjects={"user\x1fu1": PLACEHOLDER}), b"\x91" * 100_000 + b"\xc0"))
    yield "a map declaring 2**32-1 entries", b"\xdf\xff\xff\xff\xff"
    yield "an array declaring 2**32-1 items", b"\xdd\xff\xff\xff\xff"
    yield "a str declaring 2**32-1 bytes", wrapped(splice(edited(config={"settings": PLACEHOLDER}), b"\xdb\xff\xff\xff\xff"))
    yield "a bin declaring 2**32-1 bytes", wrapped(splice(edited(retired=PLACEHOLDER), b"\xc6\xff\xff\xff\xff"))
    big_map = {f"user\x1fu{i}": [0, b"\x96\x80\x80\x00\x00\x00\x00"] for i in range(200_000)}
    yield "a huge map of subjects, one bad", wrapped(edited(subjects={**big_map, "user\x1fbad": ["x", b""]}))
    yield "a huge string in the config", wrapped(edited(config={"settings": {"locale": "x" * 8_000_000}}))
    yield "a huge string as the state", msgspec.msgpack.encode("y" * 8_000_000)
    yield "a valid document with trailing bytes", wrapped(msgspec.msgpack.encode(doc) + b"\xc0")


def field_index_order(name: str) -> int:
    return field_index(Order, name)


def record_frame(record: Any) -> bytes:
    payload = msgspec.msgpack.encode(record)
    return journal_files.FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def raw_frame(payload: bytes) -> bytes:
    return journal_files.FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def crafted_records(next_lsn: int) -> Iterator[tuple[str, bytes]]:
    """Frames with a good checksum whose record is not one this journal could have written."""
    yield "an empty record", record_frame([])
    yield "lsn only", record_frame([next_lsn])
    yield "lsn not an int", record_frame(["x", "clock", T0])
    yield "a map", record_frame({"lsn": next_lsn})
    yield "unknown kind", record_frame([next_lsn, "teleport", 1])
    yield "confirm of an unknown order", record_frame([next_lsn, "confirm", "nobody", T0])
    yield "confirm without time", record_frame([next_lsn, "confirm", "t2"])
    yield "check of garbage", record_frame([next_lsn, "check", [1, 2, 3]])
    yield "check of a wrong-typed order", record_frame([next_lsn, "check", ["z", b"d", 5, "held", T0, T0, None, b"", T0]])
    yield "config of garbage", record_frame([next_lsn, "config", {"skus": 5}])
    yield "put into an unknown section", record_frame([next_lsn, "put", "planets", "p1", {}])
    yield "list with a bad kind", record_frame([next_lsn, "list", "blacklist", "planet", "x", True])
    yield "a gap in lsns", record_frame([next_lsn + 3, "clock", T0 + 10**6])
    yield "a repeated lsn", record_frame([next_lsn - 1, "clock", T0 + 10**6])
    yield "undecodable payload", raw_frame(b"\xc1\xc1\xc1")
    yield "truncated msgpack payload", raw_frame(b"\x93\x01")
    yield "100000 nested arrays", raw_frame(b"\x93" + msgspec.msgpack.encode(next_lsn) + b"\xa5clock" + b"\x91" * 100_000 + b"\xc0")
    yield "a map declaring 2**32-1 entries", raw_frame(b"\x92" + msgspec.msgpack.encode(next_lsn) + b"\xdf\xff\xff\xff\xff")
    yield "a huge string", record_frame([next_lsn, "x" * 2_000_000])


async def test_crafted_bodies_with_valid_checksums(work: Path) -> None:
    """A snapshot whose header and checksum are right but whose body is no valid state (deep
    nesting, huge containers, wrong shapes) is reported and skipped; a journal record with a good
    checksum that is no valid record never applies in part."""
    base = await build_base(work)
    body = (base.directory / base.newer).read_bytes()[snapshot_files.HEADER.size :]
    cases = [Case(f"newer body: {label}", NEWER, with_body(base.newer, crafted)) for label, crafted in crafted_bodies(body)]
    newer_lsn = int(Path(base.newer).stem.split("-")[1])
    last_lsn = journal_files.read(base.directory, newer_lsn).last_lsn
    for label, frame in crafted_records(last_lsn + 1):
        cases.append(Case(f"appended record: {label}", LAST, rewrite(base.last, append(frame))))
    for label, frame in crafted_records(last_lsn):  # in place of the last record
        cut = both(truncate(base.last, base.ends[-2]), rewrite(base.last, append(frame)))
        cases.append(Case(f"last record replaced: {label}", LAST, cut))
    out = await run_cases(base, work, cases)
    assert_clean(out, 60)

