"""The decision log: every check, claim, confirm and cancel as one JSON line, for support and replay.

When a real buyer complains, support asks "why was this order refused?": `GET
/v1/admin/decisions?user_id=...` answers from here. Lines go to rotating files under
`DATA/decisions/` (a new file past `ROTATE_BYTES`, the newest `KEEP_FILES` kept) and the most
recent ones also stay in memory. Writing is buffered and flushed once a second by the lifecycle's
task: the log is an observer, not the state (the journal is), so it never delays an answer.
A check's line holds its whole request, which is what `flashguard replay` re-runs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from gateway.schema import CheckRequest, CheckResponse, ClaimRequest, OrderView

ROTATE_BYTES = 64 * 1024 * 1024
KEEP_FILES = 20
IN_MEMORY = 10_000

_encoder = msgspec.json.Encoder()


class DecisionLog:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.recent: deque[bytes] = deque(maxlen=IN_MEMORY)
        self._buffer: list[bytes] = []
        self._file: Path | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def check(self, req: CheckRequest, response: CheckResponse, version: str, now: int) -> None:
        receiver = req.receiver
        address = receiver.address if receiver is not None else None
        self._add(
            {
                "kind": "check",
                "order_id": req.order_id,
                "user_id": req.user_id,
                "subjects": {
                    "device": req.device_id,
                    "ip": req.ip,
                    "phone": receiver.phone if receiver is not None else None,
                    "address": "/".join(p for p in (address.province, address.city, address.district, address.town) if p)
                    if address is not None
                    else None,
                },
                "decision": response.decision,
                "reasons": response.reasons,
                "shadow": response.shadow,
                "stripped": response.stripped,
                "config_version": version,
                "now": now,  # the gateway's clock, which replay runs on
                "request": req,
            }
        )

    def claim(self, req: ClaimRequest, response: CheckResponse, version: str, now: int) -> None:
        self._add(
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
            }
        )

    def transition(self, kind: str, view: OrderView, now: int) -> None:
        self._add({"kind": kind, "order_id": view.order_id, "user_id": view.user_id, "state": view.state.value, "now": now})

    def _add(self, entry: dict[str, Any]) -> None:
        """Encode once (msgspec writes the request and reasons structs directly); memory and the
        file buffer share the bytes, and a search decodes them."""
        entry["t"] = round(time.time(), 3)
        line = _encoder.encode(entry)
        self.recent.append(line)
        if self.directory is not None:
            self._buffer.append(line + b"\n")

    def flush(self) -> None:
        """Append what is buffered to the current file, rotating when it is full."""
        if not self._buffer or self.directory is None:
            return
        data, self._buffer = b"".join(self._buffer), []
        if self._file is None or self._file.stat().st_size + len(data) > ROTATE_BYTES:
            self._file = self.directory / f"decisions-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}.jsonl"
            for old in self.files()[KEEP_FILES - 1 :]:
                old.unlink(missing_ok=True)
        with self._file.open("ab") as f:
            f.write(data)

    def files(self) -> list[Path]:
        """Log files, newest first."""
        if self.directory is None:
            return []
        return sorted(self.directory.glob("decisions-*.jsonl"), reverse=True)

    def search(
        self, user_id: str | None, order_id: str | None, code: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first: memory, then the files (older than what memory holds)."""
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
            lines = path.read_bytes().splitlines()
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
