"""What the HTTP layer asks of the state, answered by either mode.

`Service` is the one interface `routes`, `admin`, `metrics` and `console` call. `NodeService`
runs the single node's synchronous coordinator step and then awaits the journal's commit, so
nothing is acknowledged before it is durable. `ClusterService` awaits the cluster coordinator,
whose answers are in Redis when they return. Each also owns its mode's start and stop: restoring
from the data directory and writing snapshots, or seeding the configuration store and sweeping.

A call returns the journal position of what it appended (`lsn`, None in cluster mode, where Redis
keeps the record) for the decision log's line about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import ParamSpec, Protocol, TypeVar

import msgspec

from actors.ledger import Ledger
from cluster.connection import RedisDown
from cluster.coordinator import ClusterCoordinator
from domain.clock import ManualClock
from domain.config import Config
from domain.schema import CheckRequest, CheckResponse, ClaimRequest, OrderView
from domain.types import Record
from gateway.batch import Batch
from gateway.decisions import DecisionLog
from node.coordinator import Coordinator
from snapshots.store import Store

log = logging.getLogger("flashguard")

SWEEP_INTERVAL = 1.0
# Orders the sweeper looks at in one synchronous step of retiring or packing them: about 1 ms of
# retiring, 2,000 × 22 µs = 44 ms of packing would be too long a pause, so packing takes 100; and
# idle subjects it encodes in one step of resting them (about 3 µs each).
RETIRE_CHUNK = 2_000
PACK_CHUNK = 100
REST_CHUNK = 500

P = ParamSpec("P")
T = TypeVar("T")


class Service(Protocol):
    manual_clock: bool  # started with --manual-clock: `move_clock` may be called

    @property
    def config(self) -> Config: ...

    async def now(self) -> int: ...

    async def check(self, req: CheckRequest, digest: bytes) -> tuple[CheckResponse, bool, int | None, int]:
        """The answer, whether it repeats the first, the journal position and the time it was decided at."""
        ...

    async def claim(self, req: ClaimRequest) -> tuple[CheckResponse, int | None, int]: ...

    async def confirm(self, order_id: str) -> tuple[OrderView, int | None]: ...

    async def cancel(self, order_id: str) -> tuple[OrderView, int | None]: ...

    async def view(self, order_id: str) -> OrderView: ...

    async def change(self, record: Record) -> None: ...

    async def move_clock(self, advance: int, to: int | None) -> tuple[int, int]:
        """The new time and the holds that ran out by it."""
        ...

    async def user_ledger(self, user_id: str) -> Ledger:
        """A ledger in which the user's actor (if it has one) is as the state holds it now."""
        ...

    async def activity_ledger(self, activity_ids: list[str]) -> Ledger: ...

    async def live_holds(self) -> int: ...

    async def ping(self) -> None:
        """Raises when the state cannot be reached (`/healthz`)."""
        ...

    async def admin_token(self, token: str) -> str:
        """`token` as the configuration's admin token unless it has one already; the one in force.
        (Gateways starting together on an empty store each make one: exactly one stands.)"""
        ...

    async def start(self) -> list[asyncio.Task[None]]:
        """Restore or connect, then start the background tasks (returned, for `stop` to cancel)."""
        ...

    async def stop(self) -> None: ...


async def _every(seconds: float, what: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` every `seconds` until cancelled; a failed round is logged and the next retries."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except RedisDown as e:
            log.warning("%s: %s", what, e)
        except Exception:
            log.exception("%s failed", what)


class NodeService:
    def __init__(
        self, coordinator: Coordinator, decisions: DecisionLog, store: Store | None, seed: Config, reload_config: bool, snapshot_every: float
    ) -> None:
        self.coordinator = coordinator
        self.decisions = decisions
        self.store = store
        self.seed, self.reload_config, self.snapshot_every = seed, reload_config, snapshot_every
        self.manual_clock = isinstance(coordinator.clock, ManualClock)
        self.batch = Batch(lambda: coordinator.journal.commit())  # looked up at each commit: restore replaces the journal

    @property
    def config(self) -> Config:
        return self.coordinator.config

    async def now(self) -> int:
        return self.coordinator.clock.now()

    async def _durable(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, int | None]:
        """`call`'s result once what it journaled is on disk (a repeat too: its first answer may
        still be on its way), and the journal position for its log line; run with the other
        calls of this loop turn (`Batch`)."""
        return await self.batch.run(partial(self.decisions.journaled, call, *args, **kwargs))

    async def check(self, req: CheckRequest, digest: bytes) -> tuple[CheckResponse, bool, int | None, int]:
        (response, repeated), lsn = await self._durable(self.coordinator.check, req, digest)
        return response, repeated, lsn, self.coordinator.clock.now()

    async def claim(self, req: ClaimRequest) -> tuple[CheckResponse, int | None, int]:
        response, lsn = await self._durable(self.coordinator.claim, req)
        return response, lsn, self.coordinator.clock.now()

    async def confirm(self, order_id: str) -> tuple[OrderView, int | None]:
        return await self._durable(self.coordinator.confirm, order_id)

    async def cancel(self, order_id: str) -> tuple[OrderView, int | None]:
        return await self._durable(self.coordinator.cancel, order_id)

    async def view(self, order_id: str) -> OrderView:
        return self.coordinator.view(self.coordinator.order(order_id))

    async def change(self, record: Record) -> None:
        self.coordinator.change(record)
        await self.coordinator.journal.commit()

    async def move_clock(self, advance: int, to: int | None) -> tuple[int, int]:
        clock = self.coordinator.clock
        assert isinstance(clock, ManualClock)
        clock.set(to) if to is not None else clock.advance(advance)
        self.coordinator.journal.append(("clock", clock.now()))  # a restart continues from here
        expired = self.coordinator.expire_due(clock.now())
        await self.coordinator.journal.commit()
        return clock.now(), expired

    async def user_ledger(self, user_id: str) -> Ledger:
        return self.coordinator.ledger

    async def activity_ledger(self, activity_ids: list[str]) -> Ledger:
        return self.coordinator.ledger

    async def live_holds(self) -> int:
        return self.coordinator.held

    async def ping(self) -> None:
        return None

    async def admin_token(self, token: str) -> str:
        settings = msgspec.to_builtins(self.config.settings)
        if not settings.get("admin_token"):
            await self.change(("settings", {**settings, "admin_token": token}))
        return str(self.config.settings.admin_token)

    async def _sweep(self) -> None:
        """Drain the expiry heap between requests (and flush the decision log), then retire and
        pack settled orders and put idle subjects to rest (`_tidy`)."""
        await self.decisions.flush_soon()
        journal = self.coordinator.journal
        if journal.writable() or await journal.retry():
            if self.coordinator.expire_due(self.coordinator.clock.now()):
                await journal.commit()
        await self._tidy()

    async def _tidy(self) -> dict[str, int]:
        """Retire the settled orders past `settings.order_retention`, pack those settled a minute
        ago and put the subjects idle for a period to rest, in synchronous steps of at most
        RETIRE_CHUNK / PACK_CHUNK orders and REST_CHUNK subjects with the loop free between them,
        and at most one pass over the book (and over the idle subjects) a round. None journals
        anything: each is a pure function of the state and its time, or only changes how it is
        kept in memory (see `OrderBook` and `Ledger`). Returns what it did."""
        coordinator = self.coordinator
        done = {"looked": 0, "retired": 0, "packed": 0, "rested": 0, "steps": 0}
        for what, step, chunk, size in (
            ("retired", coordinator.retire_step, RETIRE_CHUNK, len(coordinator.orders)),
            ("packed", coordinator.pack_step, PACK_CHUNK, len(coordinator.orders)),
            ("rested", coordinator.rest_step, REST_CHUNK, len(coordinator.ledger.idle)),
        ):
            budget = size + 1
            more = True
            while more and budget > 0:
                looked, changed, more = step(chunk)
                budget -= looked
                done["looked"] += looked
                done[what] += changed
                done["steps"] += 1
                if more:
                    await asyncio.sleep(0)
        return done

    async def start(self) -> list[asyncio.Task[None]]:
        coordinator, store = self.coordinator, self.store
        tasks = [asyncio.create_task(_every(SWEEP_INTERVAL, "expiry sweep", self._sweep), name="flashguard-sweeper")]
        if store is not None:
            report = store.restore(coordinator, self.seed, self.reload_config)
            log.info(
                "restored: snapshot %s, %d journal records replayed%s%s",
                report.snapshot.name if report.snapshot else "none",
                report.replayed,
                f", torn tail dropped ({report.torn})" if report.torn else "",
                ", data directory seeded with the configuration" if report.seeded else "",
            )
            await coordinator.journal.commit()
            self.decisions.restore(coordinator)  # the figures, and the log lines a crash lost
            if self.snapshot_every > 0:
                tasks.append(asyncio.create_task(store.periodic(coordinator, self.snapshot_every), name="flashguard-snapshots"))
        return tasks

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close(self.coordinator)


class ClusterService:
    def __init__(self, coordinator: ClusterCoordinator, decisions: DecisionLog, seed: Config, reload_config: bool) -> None:
        self.coordinator = coordinator
        self.decisions = decisions
        self.seed, self.reload_config = seed, reload_config
        self.manual_clock = coordinator.manual_clock

    @property
    def config(self) -> Config:
        return self.coordinator.config

    async def now(self) -> int:
        return await self.coordinator.now()

    async def check(self, req: CheckRequest, digest: bytes) -> tuple[CheckResponse, bool, int | None, int]:
        now = await self.coordinator.now()  # before: once the decision is committed, nothing may fail
        response, repeated = await self.coordinator.check(req, digest)
        return response, repeated, None, now

    async def claim(self, req: ClaimRequest) -> tuple[CheckResponse, int | None, int]:
        now = await self.coordinator.now()
        return await self.coordinator.claim(req), None, now

    async def confirm(self, order_id: str) -> tuple[OrderView, int | None]:
        return await self.coordinator.confirm(order_id), None

    async def cancel(self, order_id: str) -> tuple[OrderView, int | None]:
        return await self.coordinator.cancel(order_id), None

    async def view(self, order_id: str) -> OrderView:
        return await self.coordinator.view(order_id)

    async def change(self, record: Record) -> None:
        await self.coordinator.change(record)

    async def move_clock(self, advance: int, to: int | None) -> tuple[int, int]:
        return await self.coordinator.move_clock(advance, to)

    async def user_ledger(self, user_id: str) -> Ledger:
        return await self.coordinator.user_ledger(user_id)

    async def activity_ledger(self, activity_ids: list[str]) -> Ledger:
        return await self.coordinator.activity_ledger(activity_ids)

    async def live_holds(self) -> int:
        return await self.coordinator.live_holds()

    async def ping(self) -> None:
        await self.coordinator.ping()

    async def admin_token(self, token: str) -> str:
        return await self.coordinator.configs.admin_token(token)

    async def _sweep(self) -> None:
        """Finish what dead gateways left, count out holds, and flush the decision log."""
        await self.decisions.flush_soon()
        await self.coordinator.sweep()

    async def start(self) -> list[asyncio.Task[None]]:
        log.info("%s", await self.coordinator.configs.start(self.seed, self.reload_config))
        if self.decisions.directory is not None:
            self.decisions.restore()
        return [
            asyncio.create_task(_every(SWEEP_INTERVAL, "sweep", self._sweep), name="flashguard-sweeper"),
            asyncio.create_task(self.coordinator.configs.poll(), name="flashguard-config"),
        ]

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.coordinator.redis.close()
