"""The decision log: every check, claim, confirm and cancel as one JSON line, for support and replay.

When a real buyer complains, support asks "why was this order refused?": `GET
/v1/admin/decisions?user_id=...` answers from here. Lines go to rotating files under
`DATA/decisions/` (a new file past `ROTATE_BYTES`, the newest `KEEP_FILES` kept) and the most
recent ones also stay in memory. The log is an observer, not the state (the journal is), so it
never delays an answer: a request only appends what it decided to `_pending`, and one callback
per event-loop tick (`drain`) counts the checks into the figures (`Stats`) and encodes the lines,
which the sweeper hands to a writer thread once a second (a second of a sale's lines is megabytes:
written on the loop, it stalled every answer 10-18 ms). A check's line holds its whole request,
which is what `flashguard replay` re-runs: a JSON body on one line is spliced in as it came, not
re-encoded.

What a crash takes from the buffer the journal still holds. Each line carries the position
(`lsn`) of the journal record it is about, and at start `restore` writes the lines for the records
past the last position the log holds (they are marked `recovered`). `restore` also rebuilds the
console's and /metrics' decision figures (`stats.Figures`): each new file comes with a
checkpoint of them (`figures.json`: the figures, the position, and the file and offset they
cover), so a start counts only the lines written after it, at most about one file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import msgspec

from actors.orders import Order
from domain.schema import CheckRequest, CheckResponse, ClaimRequest, OrderView
from gateway.stats import Figures, Stats, region_path
from domain.types import Decision, OrderState, Reason
from snapshots import journal_files
from snapshots.journal import Journal

if TYPE_CHECKING:
    from node.coordinator import Coordinator

log = logging.getLogger("flashguard.decisions")

ROTATE_BYTES = 64 * 1024 * 1024
KEEP_FILES = 20
IOV = 512  # buffers per writev (a line and its newline are two), under the kernel's IOV_MAX (1024)
IN_MEMORY = 10_000
CHECKPOINT = "figures.json"
# The journal records that are not admin changes, which change the configuration's version.
_NOT_CHANGES = frozenset({"check", "claim", "confirm", "cancel", "expire", "clock"})
_STATE_AFTER = {"confirm": OrderState.CONFIRMED.value, "cancel": OrderState.CANCELLED.value}

_encoder = msgspec.json.Encoder()
_responses = msgspec.msgpack.Decoder(CheckResponse)
P = ParamSpec("P")
T = TypeVar("T")


class _Checkpoint(msgspec.Struct):
    """The log up to `offset` bytes of `file` counts `figures` and has the line of every journal
    record up to `lsn` that it logs."""

    file: str
    offset: int
    lsn: int
    figures: Figures


class _Counted(msgspec.Struct):
    """What a start reads of a line: its position and what the figures count."""

    kind: str = ""
    lsn: int | None = None
    decision: Decision | None = None
    user_id: str = ""
    reasons: list[Reason] = []
    shadow: list[Reason] = []
    request: msgspec.Raw = msgspec.Raw()  # decoded for a refusal only (its address)


_counted = msgspec.json.Decoder(_Counted)


def _count(stats: Stats, line: bytes) -> int | None:
    """Count a check line into the figures as `Stats.observe_check` did; returns the line's position."""
    try:
        entry = _counted.decode(line)
    except msgspec.DecodeError:
        return None  # a line cut by a crash, or not an entry
    if entry.kind == "check" and entry.decision is not None:
        stats.count(entry.decision, entry.reasons, entry.shadow)
        if entry.decision is Decision.DENY:
            stats.observe_refusal(entry.user_id, _region(entry.request))
    return entry.lsn


def _region(request: msgspec.Raw) -> str | None:
    if not request:
        return None  # a recovered line: the journal does not hold the request
    try:
        return region_path(msgspec.json.decode(request, type=CheckRequest))
    except msgspec.DecodeError:
        return None


class _Subjects(msgspec.Struct):
    device: str | None
    ip: str | None
    phone: str | None
    address: str | None


class _CheckLine(msgspec.Struct, tag_field="kind", tag="check"):
    """A check's line: `request` last, as it came (`Raw`) or encoded from the decoded request."""

    order_id: str
    user_id: str
    subjects: _Subjects
    decision: Decision
    reasons: list[Reason]
    shadow: list[Reason]
    stripped: list[str]
    config_version: str | None
    now: int  # the gateway's clock, which replay runs on
    lsn: int | None
    t: float
    request: CheckRequest | msgspec.Raw


# A check as `DecisionLog.check` got it: request, answer, version, now, lsn, seconds, body.
_Check = tuple[CheckRequest, CheckResponse, str, int, "int | None", float, "bytes | None"]


def _decided(response: CheckResponse, version: str | None) -> dict[str, Any]:
    return {
        "decision": response.decision,
        "reasons": response.reasons,
        "shadow": response.shadow,
        "stripped": response.stripped,
        "config_version": version,
    }


class DecisionLog:
    def __init__(self, directory: Path | None, stats: Stats) -> None:
        self.directory = directory
        self._stats = stats  # what `drain` counts the checks into, and each new file's checkpoint keeps
        self.recent: deque[bytes] = deque(maxlen=IN_MEMORY)
        self._pending: list[_Check | tuple[dict[str, Any], int | None]] = []
        self._buffer: list[bytes] = []
        self._file: Path | None = None
        self._size = 0  # bytes of `_file` written or handed to the writer
        # One thread, so writes land in the order they were handed over.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="flashguard-decisions")
        self.journal: Journal | None = None  # set by `restore`: the lines' positions are in it
        self._logged = 0  # the journal position up to which the log has every line
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def journaled(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, int | None]:
        """`call`'s result, and the position of the last journal record it appended, for the line
        about it. Lines then come in the order of their positions: each is added as its caller
        wakes, and callers wake in the order their calls ran (`gateway.batch`). A call that
        appended nothing (a repeated confirm) gets None: no position is claimed for it."""
        journal = self.journal
        if journal is None:
            return call(*args, **kwargs), None
        before = journal.lsn
        result = call(*args, **kwargs)
        return result, journal.lsn if journal.lsn > before else None

    def check(
        self, req: CheckRequest, response: CheckResponse, version: str, now: int, lsn: int | None, seconds: float, body: bytes | None
    ) -> None:
        """A check's line and figures, for the next `drain`. `body` is the request as it came when
        it is one line of JSON (else None: the line encodes `req`); `seconds` its latency so far."""
        self._pend((req, response, version, now, lsn, seconds, body))

    def claim(self, req: ClaimRequest, response: CheckResponse, version: str, now: int, lsn: int | None = None) -> None:
        self._pend((
            {
                "kind": "claim",
                "user_id": req.user_id,
                "coupon_id": req.coupon_id,
                "subjects": {"device": req.device_id, "phone": req.phone},
                "decision": response.decision,
                "reasons": response.reasons,
                "config_version": version,
                "now": now,
                "request": req,
            },
            lsn,
        ))

    def transition(self, kind: str, view: OrderView, now: int, lsn: int | None = None) -> None:
        self._pend(({"kind": kind, "order_id": view.order_id, "user_id": view.user_id, "state": view.state.value, "now": now}, lsn))

    def _pend(self, item: _Check | tuple[dict[str, Any], int | None]) -> None:
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.drain)
            except RuntimeError:  # no loop (tools, tests): now
                self._pending.append(item)
                self.drain()
                return
        self._pending.append(item)

    def drain(self) -> None:
        """Count and encode what is pending, in the order it came (the order of its journal
        positions, see `journaled`). Readers of the lines or the figures call it first."""
        pending, self._pending = self._pending, []
        t = round(time.time(), 3)
        for item in pending:
            if len(item) == 2:
                entry, lsn = item
                self._add(entry, lsn, t)
                continue
            req, response, version, now, lsn, seconds, body = item
            self._stats.observe_check(response, seconds, req)
            receiver = req.receiver
            address = receiver.address if receiver is not None else None
            head = _CheckLine(
                req.order_id,
                req.user_id,
                _Subjects(
                    req.device_id,
                    req.ip,
                    receiver.phone if receiver is not None else None,
                    "/".join(p for p in (address.province, address.city, address.district, address.town) if p)
                    if address is not None
                    else None,
                ),
                response.decision,
                response.reasons,
                response.shadow,
                response.stripped,
                version,
                now,
                lsn,
                t,
                msgspec.Raw(body) if body is not None else req,
            )
            self._keep(_encoder.encode(head), lsn)

    def _add(self, entry: dict[str, Any], lsn: int | None, t: float) -> None:
        entry["lsn"] = lsn
        entry["t"] = t
        self._keep(_encoder.encode(entry), lsn)

    def _keep(self, line: bytes, lsn: int | None) -> None:
        """Memory and the file buffer share the bytes; a search decodes them."""
        self.recent.append(line)
        if self.directory is not None:
            self._buffer.append(line)
            self._buffer.append(b"\n")
        if lsn is not None:
            self._logged = max(self._logged, lsn)

    def flush(self) -> None:
        """Write out what is buffered now, the writer's earlier work first: at start, before a
        snapshot's journal rotation (see `Journal.rotate`) and at shutdown."""
        handed = self._hand_off()
        if handed is not None:
            handed.result()

    async def flush_soon(self) -> None:
        """The sweeper's flush: the writer thread writes while the loop goes on answering."""
        handed = self._hand_off()
        if handed is not None:
            await asyncio.shield(asyncio.wrap_future(handed))  # a sweeper cancelled at shutdown still writes them

    def close(self) -> None:
        self.flush()
        self._writer.shutdown()

    def _hand_off(self) -> Future[None] | None:
        """Give the buffered lines to the writer, rotating when the file would pass ROTATE_BYTES. A
        new file (the first after a start, or past ROTATE_BYTES) gets a checkpoint once its first
        lines are in: the figures then count exactly the lines written. Which file, and the
        checkpoint's figures, are settled here on the loop, with the lines they go with."""
        self.drain()
        if not self._buffer or self.directory is None:
            return None
        lines, self._buffer = self._buffer, []
        size = sum(map(len, lines))
        checkpoint = None
        if self._file is None or self._size + size > ROTATE_BYTES:
            ns = time.time_ns()  # one reading: two could straddle a second and sort a newer file first
            self._file = self.directory / f"decisions-{time.strftime('%Y%m%d-%H%M%S', time.localtime(ns // 10**9))}-{ns % 10**9:09d}.jsonl"
            self._size = 0
            checkpoint = _Checkpoint(self._file.name, size, self._logged, self._stats.figures())
        self._size += size
        return self._writer.submit(self._write, self.directory, self._file, lines, checkpoint)

    def _write(self, directory: Path, path: Path, lines: list[bytes], checkpoint: _Checkpoint | None) -> None:
        """In the writer thread. The log is an observer: a write that fails (a full disk) is logged
        and loses its lines from the files, not from memory (the journal keeps their records), and
        nothing that waits for it (the sweeper's round, a snapshot, the shutdown) stops there."""
        try:
            self._append(directory, path, lines, checkpoint)
        except OSError as e:
            log.error("decision log: %d lines could not be written to %s and are lost from the files: %s", len(lines) // 2, path.name, e)

    def _append(self, directory: Path, path: Path, lines: list[bytes], checkpoint: _Checkpoint | None) -> None:
        """`writev` copies the lines straight from their buffers."""
        if checkpoint is not None:
            for old in self.files()[KEEP_FILES - 1 :]:
                old.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for i in range(0, len(lines), IOV):
                chunk = lines[i : i + IOV]
                written = os.writev(fd, chunk)
                if written < sum(map(len, chunk)):  # short (the disk filling up): the rest one write at a time
                    rest = memoryview(b"".join(chunk))[written:]
                    while rest:
                        rest = rest[os.write(fd, rest) :]
        finally:
            os.close(fd)
        if checkpoint is not None:
            tmp = directory / (CHECKPOINT + ".tmp")
            tmp.write_bytes(_encoder.encode(checkpoint))
            os.replace(tmp, directory / CHECKPOINT)

    def restore(self, coordinator: Coordinator | None = None) -> None:
        """At start, once the state is restored: rebuild `stats`' figures from the checkpoint and
        the lines after it, then (single node) write the lines of the journal records past the
        last position the log holds (a crash lost them from the buffer). In cluster mode there is
        no journal: Redis holds every decision, and lines a crash lost stay lost."""
        assert self.directory is not None
        journal = coordinator.journal if coordinator is not None else None
        assert journal is None or isinstance(journal, Journal)
        self.journal, stats = journal, self._stats
        if journal is not None:
            journal.before_rotate = self.flush
        start = time.perf_counter()
        checkpoint = self._checkpoint()
        written = lines = 0
        if checkpoint is None and self.files():
            log.warning(
                "the decision log has no checkpoint (an earlier version wrote it, or it was lost): the decision "
                "figures start from zero, and log lines a crash lost cannot be written again"
            )
        else:
            last = 0  # no checkpoint and no file: a new log, every line is yet to come
            if checkpoint is not None:
                stats.add(checkpoint.figures)
                last = checkpoint.lsn
                for line in self._since(checkpoint):
                    lines += 1
                    last = max(last, _count(stats, line) or 0)
            if journal is not None and coordinator is not None and last < journal.lsn:
                written = self._recover(journal, coordinator, last)
                for line in self._buffer:
                    _count(stats, line)
        self._logged = journal.lsn if journal is not None else 0
        self.flush()
        log.info(
            "decision log: figures from its checkpoint and the %d lines after it, %d lines written again from the journal (%.2fs)",
            lines, written, time.perf_counter() - start,
        )

    def _checkpoint(self) -> _Checkpoint | None:
        assert self.directory is not None
        try:
            return msgspec.json.decode((self.directory / CHECKPOINT).read_bytes(), type=_Checkpoint)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as e:
            log.warning("the decision log's checkpoint is unreadable: %s", e)
            return None

    def _since(self, checkpoint: _Checkpoint) -> Iterator[bytes]:
        """The lines written after the checkpoint."""
        for path in reversed(self.files()):
            if path.name < checkpoint.file:
                continue
            offset = checkpoint.offset if path.name == checkpoint.file else 0
            with path.open("rb") as f:
                f.seek(offset)
                yield from f.read().splitlines()

    def _recover(self, journal: Journal, coordinator: Coordinator, last: int) -> int:
        """Add the lines of the journal records after `last` that the log logs, marked
        `recovered`. A check record holds the order and its answer, not the request: a recovered
        check has no `request` and no `subjects`, so support finds it and the figures count it,
        but replay cannot re-run it (nor, then, its confirm and cancel). A claim record holds the
        user, the coupon and the time. The configuration version is the one in force now, for the
        records after the last admin change among them (before it: null)."""
        segments = journal_files.segments(journal.directory)
        after = max(last, segments[0][0] - 1) if segments else last
        if after > last:
            log.warning("the journal no longer holds records %d-%d: lines for them, if the log lacks any, cannot be written again", last + 1, after)
        try:
            records = journal_files.read(journal.directory, after).records
        except journal_files.JournalCorrupt as e:
            log.error("no decision-log lines recovered: %s", e)
            return 0
        changed = max((i for i, record in enumerate(records) if record[0] not in _NOT_CHANGES), default=-1)
        written = 0
        for i, (kind, *fields) in enumerate(records):
            version = coordinator.config.version if i > changed else None
            if kind == "check":
                order = msgspec.convert(fields[0], Order)
                entry = {"kind": kind, "order_id": order.order_id, "user_id": order.user_id,
                         **_decided(_responses.decode(order.response), version), "now": order.created_at}  # fmt: skip
            elif kind in _STATE_AFTER:
                order_id, now = fields
                entry = {"kind": kind, "order_id": order_id, "user_id": coordinator.orders[order_id].user_id,
                         "state": _STATE_AFTER[kind], "now": now}  # fmt: skip
            elif kind == "claim":
                user_id, coupon_id, now = fields
                entry = {"kind": kind, "user_id": user_id, "coupon_id": coupon_id, "decision": Decision.ALLOW,
                         "config_version": version, "now": now}  # fmt: skip
            else:
                continue
            entry["recovered"] = True
            self._add(entry, after + 1 + i, round(time.time(), 3))
            written += 1
        return written

    def files(self) -> list[Path]:
        """Log files, newest first."""
        if self.directory is None:
            return []
        return sorted(self.directory.glob("decisions-*.jsonl"), reverse=True)

    def search(
        self, user_id: str | None, order_id: str | None, code: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first: memory, then the files (older than what memory holds)."""
        self.drain()
        out: list[dict[str, Any]] = []
        oldest_in_memory = msgspec.json.decode(self.recent[0])["t"] if self.recent else float("inf")
        for entry in self._entries(oldest_in_memory):
            if since is not None and entry["t"] < since:
                break
            if user_id is not None and entry.get("user_id") != user_id:
                continue
            if order_id is not None and entry.get("order_id") != order_id:
                continue
            if code is not None and not any(r.get("code") == code for r in entry.get("reasons", [])):
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def _entries(self, oldest_in_memory: float) -> Iterator[dict[str, Any]]:
        for line in reversed(self.recent):
            yield msgspec.json.decode(line)
        for path in self.files():
            try:
                lines = path.read_bytes().splitlines()
            except FileNotFoundError:  # the writer thread pruned it since the listing
                continue
            for line in reversed(lines):
                try:
                    entry = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    continue  # a line cut by a crash
                if isinstance(entry, dict) and entry.get("t", 0) < oldest_in_memory:
                    yield entry


def read_log(paths: list[Path]) -> tuple[list[dict[str, Any]], int]:
    """Every well-formed entry of the given log files, in file order (for replay), and how many
    non-empty lines were not entries (a torn last line, or a file that is not a decision log).
    An unreadable file raises OSError."""
    entries: list[dict[str, Any]] = []
    skipped = 0
    for path in paths:
        for line in path.read_bytes().splitlines():
            try:
                entry = msgspec.json.decode(line)
            except msgspec.DecodeError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            elif line.strip():
                skipped += 1
    return entries, skipped
