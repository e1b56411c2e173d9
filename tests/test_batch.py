"""The state changes of one event-loop turn: run back to back in the order they came, made durable
by one commit, each caller answered with its own result or error (gateway/batch.py)."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from gateway.batch import Batch
from snapshots.journal import DiskError


class Commits:
    """A commit that records what had run when it was asked for, and can fail."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.commits: list[list[str]] = []
        self.fail: Exception | None = None

    async def commit(self) -> None:
        self.commits.append(list(self.ran))
        await asyncio.sleep(0)  # the disk
        if self.fail is not None:
            raise self.fail

    def call(self, name: str) -> str:
        self.ran.append(name)
        return name.upper()


async def test_one_turns_calls_run_in_order_share_one_commit_and_resume_in_order() -> None:
    log = Commits()
    batch = Batch(log.commit)
    resumed: list[str] = []

    async def caller(name: str) -> None:
        resumed.append(await batch.run(lambda: log.call(name)))

    await asyncio.gather(*(caller(n) for n in "abcd"))
    assert log.ran == ["a", "b", "c", "d"]
    assert log.commits == [["a", "b", "c", "d"]]  # one commit, after every call of the turn
    assert resumed == ["A", "B", "C", "D"]


async def test_a_later_turn_is_a_batch_of_its_own() -> None:
    log = Commits()
    batch = Batch(log.commit)
    assert await batch.run(lambda: log.call("a")) == "A"
    assert list(await asyncio.gather(batch.run(lambda: log.call("b")), batch.run(lambda: log.call("c")))) == ["B", "C"]
    assert log.commits == [["a"], ["a", "b", "c"]]


async def test_a_later_turns_callers_never_wake_before_an_earlier_turns() -> None:
    """The journal's writer can make two turns durable in one round, and the later turn's commit
    then return first: its callers still wake after the earlier turn's, so the decision log's
    lines keep following their journal positions."""
    log = Commits()
    slow = [5, 0]  # the first turn's commit takes five ticks, the second's none

    async def commit() -> None:
        for _ in range(slow.pop(0)):
            await asyncio.sleep(0)

    batch = Batch(commit)
    woke: list[str] = []

    async def caller(name: str) -> None:
        woke.append(await batch.run(lambda: log.call(name)))

    first = [asyncio.ensure_future(caller(n)) for n in "ab"]
    await asyncio.sleep(0)  # the first turn ran its calls and awaits its commit
    second = [asyncio.ensure_future(caller(n)) for n in "cd"]
    await asyncio.gather(*first, *second)
    assert woke == ["A", "B", "C", "D"]


async def test_a_refused_call_answers_its_own_error_at_once_and_the_others_go_through() -> None:
    log = Commits()
    batch = Batch(log.commit)

    def refused() -> str:
        raise LookupError("unknown order")

    results = await asyncio.gather(
        batch.run(lambda: log.call("a")), batch.run(refused), batch.run(lambda: log.call("c")), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], LookupError)
    assert log.commits == [["a", "c"]]


async def test_a_failed_commit_reaches_every_caller_of_the_batch() -> None:
    log = Commits()
    log.fail = DiskError("disk full")
    batch = Batch(log.commit)
    results = await asyncio.gather(*(batch.run(partial(log.call, n)) for n in "ab"), return_exceptions=True)
    assert [type(r) for r in results] == [DiskError, DiskError]
    log.fail = None
    assert await batch.run(lambda: log.call("c")) == "C"  # the next turn commits again


async def test_a_caller_that_went_away_before_its_call_ran_changes_nothing() -> None:
    """Nobody would hear its answer, and its decision-log line would never be written: it does
    not run. A caller that goes away after its call ran finds its change made (and journaled)."""
    log = Commits()
    batch = Batch(log.commit)
    gone = asyncio.ensure_future(batch.run(lambda: log.call("a")))
    stays = asyncio.ensure_future(batch.run(lambda: log.call("b")))
    await asyncio.sleep(0)  # both queued, not yet run
    gone.cancel()
    assert await stays == "B"
    assert log.ran == ["b"]
    with pytest.raises(asyncio.CancelledError):
        await gone
    late = asyncio.ensure_future(batch.run(lambda: log.call("c")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # its call ran; its commit is on its way
    late.cancel()
    assert await batch.run(lambda: log.call("d")) == "D"
    assert log.ran == ["b", "c", "d"]
