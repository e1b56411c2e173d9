"""The single node's state changes of one event-loop turn, run back to back and made durable by
one journal commit.

Under load many requests arrive in one turn of the loop: aiohttp reads every ready connection and
starts a handler for each. Each handler decodes its body and queues its coordinator call here;
one callback, after the turn's handlers, runs the queued calls in the order they came, then one
task awaits the journal's commit for all of them and wakes their callers in that same order. Run
one at a time between aiohttp's work on other requests, every check found the rules' code and
data cold; back to back they run warm (about 10-15% more checks a second over HTTP on the
benchmark's 2-core VM), and a turn's calls share one commit instead of queueing one each.

Nothing changes for a caller: `run` returns its call's result once what the call journaled is
durable, or raises what the call raised (at once: a refused call acknowledges nothing) or the
commit's `DiskError`. The calls never await, so a batch is still one uninterrupted step of the
single writer. Callers wake in the order their calls ran, across turns too: a turn's commit can
return before an earlier turn's has woken its callers (the writer made both durable in one
round), so turns are answered from a queue, in order, each once it and every turn before it are
committed. The decision log relies on it: its lines follow their journal positions, and a start
writes again only the records past the last position the log holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Turn:
    """One turn's callers and their calls' results, waiting for the turn's commit."""

    done: list[tuple[asyncio.Future[Any], Any]]
    committed: bool = False
    failure: Exception | None = None  # the commit's DiskError: every caller of the turn hears of it
    task: asyncio.Task[None] | None = field(default=None, repr=False)  # a strong reference while it runs


class Batch:
    def __init__(self, commit: Callable[[], Awaitable[None]]) -> None:
        self._commit = commit
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._turns: deque[_Turn] = deque()  # turns not yet answered, in the order their calls ran

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._drain)
        self._queued.append((call, future))
        return await future

    def _drain(self) -> None:
        queued, self._queued = self._queued, []
        done: list[tuple[asyncio.Future[Any], Any]] = []
        for call, future in queued:
            if future.cancelled():  # its caller went away before it ran: nothing to answer, nothing to do
                continue
            try:
                done.append((future, call()))
            except Exception as e:
                future.set_exception(e)
        if done:
            turn = _Turn(done)
            self._turns.append(turn)
            turn.task = asyncio.ensure_future(self._settle(turn))

    async def _settle(self, turn: _Turn) -> None:
        try:
            await self._commit()
        except Exception as e:
            turn.failure = e
        except BaseException:  # the loop closing: no caller is left waiting
            for future, _ in turn.done:
                future.cancel()
            raise
        turn.committed = True
        turns = self._turns
        while turns and turns[0].committed:  # answer every committed turn up to the first that is not
            answered = turns.popleft()
            for future, result in answered.done:
                if future.done():  # its caller went away meanwhile
                    continue
                if answered.failure is not None:
                    future.set_exception(answered.failure)
                else:
                    future.set_result(result)
            answered.task = None
