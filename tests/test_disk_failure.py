"""A full or failing disk (SPEC section 7, issue 4): nothing unpersisted is acknowledged.

`Disk` makes `os.write`, `os.fsync` and `os.replace` fail with ENOSPC for the files of one data
directory while it is `full` (the journal's writer thread and a forked snapshot child see the
same patched functions). While the journal cannot write, every state-changing call answers 503 in
the error shape and changes nothing, reads keep working, and once writes succeed again the state is
consistent: the change whose answer was a 503 is persisted exactly once. A snapshot that cannot be
written leaves the previous snapshot byte-identical and no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from domain.clock import ManualClock
from snapshots import journal_files
from snapshots import snapshot as snapshot_files
from snapshots.journal import DiskError, FsyncMode
from snapshots.store import Store
from tests.conftest import Gateway
from tests.test_snapshot_restore import (
    T0,
    canonical,
    check,
    durable_config,
    journal_of,
    new_coordinator,
    open_store,
    order_body,
    restore_dir,
    start,
)

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Disk:
    """Fails the chosen calls (write, fsync, replace, ftruncate) on files of `directory` (whose
    name contains `only`) while `full`.
    `short_writes` makes the first failing write put half its bytes on disk before the next one
    fails, as a disk that fills up in the middle of a write does."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        directory: Path,
        calls: tuple[str, ...] = ("write", "fsync"),
        only: str = "",
        short_writes: bool = False,
    ) -> None:
        self.directory = str(directory.resolve())
        self.full = False
        self.only = only
        self.short_writes = short_writes
        self.failures = 0
        real_write, real_fsync, real_replace, real_ftruncate = os.write, os.fsync, os.replace, os.ftruncate

        def write(fd: int, data: bytes | bytearray | memoryview) -> int:
            if "write" in calls and self._hit(fd):
                view = memoryview(data)
                if self.short_writes and len(view) > 1:
                    self.short_writes = False
                    return real_write(fd, view[: len(view) // 2])
                self.failures += 1
                raise ENOSPC
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if "fsync" in calls and self._hit(fd):
                self.failures += 1
                raise ENOSPC
            real_fsync(fd)

        def replace(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            if "replace" in calls and self.full and self._matches(os.path.abspath(os.fspath(src))):
                self.failures += 1
                raise ENOSPC
            real_replace(src, dst, *args, **kw)

        def ftruncate(fd: int, length: int) -> None:
            if "ftruncate" in calls and self._hit(fd):
                self.failures += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_ftruncate(fd, length)

        monkeypatch.setattr(os, "ftruncate", ftruncate)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def _matches(self, path: str) -> bool:
        return path.startswith(self.directory) and self.only in os.path.basename(path)

    def _hit(self, fd: int) -> bool:
        if not self.full:
            return False
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return self._matches(path)


def assert_unavailable(data: Any) -> None:
    assert set(data) == {"error"}, data
    assert data["error"]["code"] == "disk_unavailable", data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]


def checked_ids(directory: Path) -> list[str]:
    """The order id of every check record in the journal (which still reaches back to lsn 1)."""
    out = []
    for record in journal_files.read(directory, 0).records:
        if record[0] == "check":
            body = record[1]
            out.append(body[0] if isinstance(body, list) else body)
    return out


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


async def refused_calls(gw: Gateway) -> None:
    """Every kind of state-changing call: each answers 503 in the error shape."""
    calls: list[tuple[str, str, Any, bool]] = [
        ("POST", "/v1/orders/check", order_body("refused", "u5", device="d5"), False),
        ("POST", "/v1/orders/held/confirm", None, False),
        ("POST", "/v1/orders/confirmed/cancel", None, False),
        ("POST", "/v1/orders/held/cancel", None, False),
        ("POST", "/v1/coupons/claim-check", {"user_id": "u6", "coupon_id": "C1"}, False),
        ("PUT", "skus/S7", {"category": "tv"}, True),
        ("DELETE", "rules/R1", None, True),
        ("PATCH", "settings", {"hold_ttl": "1m"}, True),
        ("PUT", "lists/blacklist/user/u1", None, True),
        ("PUT", "config", durable_config(spus=[]), True),
        ("POST", "clock", {"advance": 3600}, True),
        ("POST", "snapshot", None, True),
    ]
    for method, path, body, admin in calls:
        if admin:
            data = await gw.admin(method, path, body, status=503)
        else:
            data = await gw.call(method, path, body, status=503)
        assert_unavailable(data)


READS = {
    "health": "/healthz",
    "metrics": "/metrics",
    "config": "/v1/admin/config",
    "lists": "/v1/admin/lists",
    "held": "/v1/orders/held",
    "confirmed": "/v1/orders/confirmed",
    "user": "/v1/admin/users/u1",
    "activity": "/v1/admin/activities/A1",
}


async def reads(gw: Gateway) -> dict[str, tuple[int, Any]]:
    """Every read, as (status, body); they must all answer 200 while the disk is full."""
    out: dict[str, tuple[int, Any]] = {}
    for name, path in READS.items():
        resp = await gw.client.get(path, headers=gw.auth)
        body = await resp.text() if name == "metrics" else await resp.json()
        out[name] = (resp.status, None if name in ("metrics", "health") else body)
    return out


async def serve_until_full(gw: Gateway) -> None:
    await gw.check(order_body("held", "u1", discount=100))
    await gw.check(order_body("confirmed", "u2", device="d2", discount=200))
    await gw.confirm("confirmed")
    await gw.admin("PUT", "skus/S8", {"category": "tv", "cost_price": 10})


@pytest.mark.parametrize("fsync", ["batch", "always"])
@pytest.mark.parametrize("failing", ["fsync", "write", "short-write"])
async def test_journal_failure_answers_503_until_writes_succeed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: FsyncMode, failing: str
) -> None:
    data = tmp_path / "data"
    disk = Disk(
        monkeypatch,
        data,
        calls=("fsync",) if failing == "fsync" else ("write",),
        short_writes=failing == "short-write",
    )
    gw = await start(data, fsync=fsync)
    await serve_until_full(gw)
    before_reads = await reads(gw)
    journal_bytes = files(data)

    disk.full = True
    failed = order_body("failed", "u3", device="d3", discount=300)
    assert_unavailable(await gw.check(failed, status=503))  # not acknowledged
    assert disk.failures >= 1
    assert files(data) == journal_bytes  # a torn write was cut back off
    state = canonical(gw.coordinator)
    await refused_calls(gw)
    assert canonical(gw.coordinator) == state  # nothing changed: no counter, no clock, no config
    assert files(data) == journal_bytes
    during = await reads(gw)  # checked at the end, so that the rest is checked whatever they answer
    assert canonical(gw.coordinator) == state

    disk.full = False
    res = await gw.check(order_body("after", "u4", device="d4"))
    assert res["decision"] == "allow"
    # the change refused with 503 went through once writes succeeded: a retry gets its first answer
    again = await gw.check(failed)
    assert again["decision"] == "allow" and again["hold"] == {"expires_at": T0 + 900}
    assert (await gw.activity("A1"))["held"] == 100 + 300
    assert checked_ids(data).count("failed") == 1
    assert checked_ids(data).count("refused") == 0
    live = canonical(gw.coordinator)
    # kill -9 now: the journal holds exactly the live state
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)
    restored, report = await restore_dir(crashed)
    assert report.torn is None and not report.damaged
    assert canonical(restored) == live
    # and a clean stop (final snapshot) too
    await gw.client.close()
    restored, report = await restore_dir(data)
    assert report.snapshot is not None and report.replayed == 0
    assert canonical(restored) == live
    # reads answered while the disk was full: GET calls are not state-changing calls
    assert {k: status for k, (status, _) in during.items()} == {k: 200 for k in READS}
    unaffected = ("config", "lists", "held", "confirmed", "user")  # the refused order is not theirs
    assert {k: during[k] for k in unaffected} == {k: before_reads[k] for k in unaffected}


async def test_journal_failure_through_the_coordinator_keeps_acknowledged_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Directly on the journal: commit raises DiskError, writable() is false until a retry works,
    and the records appended meanwhile stay buffered in order."""
    disk = Disk(monkeypatch, tmp_path)
    coordinator, store = await open_store(tmp_path, fsync="batch")
    journal = journal_of(store)
    check(coordinator, order_body("ok", "u1"))
    await journal.commit()
    disk.full = True
    check(coordinator, order_body("pending", "u2", device="d2"))
    with pytest.raises(DiskError):
        await journal.commit()
    assert not journal.writable()
    assert not await journal.retry()
    disk.full = False
    assert await journal.retry()
    assert journal.writable()
    assert checked_ids(tmp_path) == ["ok", "pending"]
    live = canonical(coordinator)
    await journal.close()
    restored, report = await restore_dir(tmp_path)
    assert report.torn is None and canonical(restored) == live


# -- snapshots that cannot be written ----------------------------------------------------------


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
async def test_failed_in_process_snapshot_leaves_the_previous_one_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    disk = Disk(monkeypatch, tmp_path, calls=(failing,), only="snapshot-")
    coordinator, store = await open_store(tmp_path)
    check(coordinator, order_body("o1", "u1", discount=100))
    await coordinator.journal.commit()
    previous = store.snapshot_in_process(coordinator)
    previous_bytes = previous.read_bytes()
    check(coordinator, order_body("o2", "u2", device="d2"))
    await coordinator.journal.commit()
    disk.full = True
    with pytest.raises(OSError) as info:
        store.snapshot_in_process(coordinator)
    assert info.value.errno == errno.ENOSPC
    assert disk.failures == 1
    assert [p for _, p in snapshot_files.snapshots(tmp_path)] == [previous]
    assert previous.read_bytes() == previous_bytes
    assert not list(tmp_path.glob("*.tmp"))
    live = canonical(coordinator)
    restored, report = await restore_dir_copy(tmp_path)
    assert report.snapshot is not None and report.snapshot.name == previous.name
    assert not report.damaged and report.torn is None
    assert canonical(restored) == live
    # once the disk has room again, the next snapshot is written
    disk.full = False
    newer = store.snapshot_in_process(coordinator)
    assert newer != previous and newer.exists()
    await journal_of(store).close()


async def restore_dir_copy(directory: Path) -> Any:
    copy = directory.parent / (directory.name + "-copy")
    shutil.copytree(directory, copy)
    return await restore_dir(copy)


async def test_failed_snapshot_process_answers_503_and_leaves_the_previous_one_intact(tmp_path: Path) -> None:
    """The snapshot process cannot write its file (its temporary name is taken by a directory, so
    the open fails as on a broken disk): POST /v1/admin/snapshot answers 503, the previous snapshot
    is byte-identical, the process leaves no file of its own, and serving goes on."""
    data = tmp_path / "data"
    gw = await start(data)
    await serve_until_full(gw)
    taken = await gw.admin("POST", "snapshot")
    previous = Path(taken["path"])
    previous_bytes = previous.read_bytes()
    await gw.check(order_body("between", "u3", device="d3"))
    blocker = snapshot_files.snapshot_path(data, gw.coordinator.journal.lsn).with_suffix(".tmp")  # type: ignore[attr-defined]
    blocker.mkdir()
    failed = await gw.admin("POST", "snapshot", status=503)
    assert set(failed) == {"error"} and failed["error"]["code"] == "snapshot_failed"
    assert [p for _, p in snapshot_files.snapshots(data)] == [previous]
    assert previous.read_bytes() == previous_bytes
    assert list(data.glob("*.tmp")) == [blocker]
    # the journal is not affected: changes are still accepted and durable
    await gw.check(order_body("still", "u4", device="d4"))
    live = canonical(gw.coordinator)
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)
    restored, report = await restore_dir(crashed)
    assert report.snapshot == snapshot_files.snapshot_path(crashed, int(previous.stem.split("-")[1]))
    assert not report.damaged and report.torn is None
    assert canonical(restored) == live
    blocker.rmdir()
    await gw.client.close()


async def test_failed_rotation_leaves_a_directory_that_restores_cleanly_after_repeated_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot whose journal rotation fails (the new segment cannot be written: disk full)
    answers 503; after the disk recovers, the directory must restore exactly and without a
    spurious damage report, through as many kill -9 restarts as happen."""
    data = tmp_path / "data"
    disk = Disk(monkeypatch, data, calls=("write", "fsync"), only="journal-")
    gw = await start(data)
    await serve_until_full(gw)
    disk.full = True
    failed = await gw.admin("POST", "snapshot", status=503)
    assert set(failed) == {"error"}
    disk.full = False
    await gw.check(order_body("after-1", "u3", device="d3"))
    live = canonical(gw.coordinator)
    crash1 = tmp_path / "crash1"
    shutil.copytree(data, crash1)
    await gw.client.close()
    # first kill -9 restart
    coordinator = new_coordinator(ManualClock(T0))
    store = Store(crash1, fsync="always")
    first = store.restore(coordinator, coordinator.config)
    assert canonical(coordinator) == live
    check(coordinator, order_body("after-2", "u4", device="d4"))
    await coordinator.journal.commit()
    live = canonical(coordinator)
    crash2 = tmp_path / "crash2"
    shutil.copytree(crash1, crash2)  # second kill -9, still no snapshot
    await journal_of(store).close()
    restored, second = await restore_dir(crash2)  # must not refuse to start
    assert canonical(restored) == live
    assert (first.torn, first.damaged, second.torn, second.damaged) == (None, [], None, [])


async def test_journal_failure_that_cannot_cut_back_its_write_still_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync fails and so does cutting the written bytes back off (an I/O error): the journal
    goes on in a fresh segment. The directory must still restore to exactly the acknowledged state
    plus the refused change persisted once, never refuse to start."""
    data = tmp_path / "data"
    disk = Disk(monkeypatch, data, calls=("fsync", "ftruncate"), only="journal-")
    gw = await start(data, fsync="always")
    await serve_until_full(gw)
    disk.full = True
    assert_unavailable(await gw.check(order_body("failed", "u3", device="d3"), status=503))
    disk.full = False
    await gw.check(order_body("after", "u4", device="d4"))
    live = canonical(gw.coordinator)
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)
    await gw.client.close()
    restored, report = await restore_dir(crashed)
    assert canonical(restored) == live
    assert report.torn is None and not report.damaged
